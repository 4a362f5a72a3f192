"""Training triplets for the dataset-conditioned autoencoder: (noisy particle, its covariance Wiener
filter estimate, clean particle), from many simulated *datasets*.

A network that sees one image cannot know the molecule; CWF (`denoisers.cwf`) learns the molecule's
image covariance from the whole stack and its CTFs, which is why it beats every single-image method at
low SNR on unseen molecules. The `prior="cwf"` generator takes the CWF estimate as an input and learns a
correction to it, so it is trained on what `denoise` will give it: per dataset, one molecule of the
`data.molecules` family imaged under one set of conditions, CWF fitted on that dataset's noisy particles
with their CTFs and σ estimated per image (Haar MAD) as `denoise` does, then applied to `keep` further
particles of the same dataset (not in the fit, like most particles of a large stack in `denoise`).

| per dataset | distribution |
|---|---|
| molecule | `molecules.molecule_map` (kind, diameter 25–90% of the box, 1–6 Å/px, B-factor) |
| particles fitted | log-uniform 500–2000 |
| SNR | log-uniform in `snr_range` (the INTERFACE's stack-level definition) |
| defocus | from a low end uniform 0.5–2.5 µm over a width uniform 0.5–1.5 µm; astigmatism 0–1000 Å |
| voltage, amplitude contrast | 300 kV (80%) or 200 kV; uniform 0.04–0.15 |
| in-plane shift | up to a maximum uniform 0–8% of the box |
| CTF | on for 80% of datasets (off: plain projections, CWF with the identity CTF) |
| polarity | ×(−1) for half of the datasets (CWF is linear: its estimate flips with the data) |
| noise | white, or for a fraction `coloured` of datasets (config `cwf_coloured`) coloured: the plateau family |
| | of `noise.whiten` with ratio log-uniform 1.5–10, knee log-uniform 0.04–0.3 cycles/px, steepness 2–12 |

A coloured dataset is stored as `denoise --config.noise=coloured` gives it to autoencoder_cwf
(`noise.methods.fit_coloured`): whitened by its (true) spectrum, CWF fitted and applied with the whitening
filter joined to each CTF, the clean target whitened alike (the network works in the whitened domain; its
output is coloured back; `cwf_loss_domain="original"` scores it so, `CwfCorpusPairs.scored`). The ranges cover the fits to issue 29's three measured stacks (ratio
2.15–7.0, knee 0.05–0.22, steepness 3.2–12) without centring on any one of them.

Dataset d of a seed is a pure function of (seed, d); with `cache` set each dataset is stored as one
`.npz` there, so an interrupted build resumes and a retraining reuses it.
"""

from __future__ import annotations

import math
import os

import numpy as np

N_FIT_RANGE = (500, 2000)
DEFOCUS_LOW_RANGE_A = (5000.0, 25000.0)
DEFOCUS_WIDTH_RANGE_A = (5000.0, 15000.0)
ASTIGMATISM_A = 1000.0
AMPLITUDE_CONTRAST_RANGE = (0.04, 0.15)
MAX_SHIFT_FRACTION = 0.08
CTF_FRACTION = 0.8
VAL_DATASET_OFFSET = 1 << 40  # validation datasets' ids (and molecules): disjoint from every training id
# The default basis reach (a fraction of the box past its edge; `cwf.fit`'s `reach` is that times L px) of the
# CWF estimates a prior="cwf" network is trained on and then given (config `cwf_prior_reach`, stored with the
# model; `learned.prior_reach_px`): the inscribed disk, as CWF was when the bundled autoencoder_cwf was trained.
# The registered "cwf" reaches L/16 past the edge (`steerable.EDGE_REACH`), which the coloured-noise model uses.
PRIOR_REACH = 0.0
# The coloured datasets' noise spectra: `noise.whiten.family_psd("plateau", ...)` parameter ranges.
COLOURED_RATIO_RANGE = (1.5, 10.0)   # P(0) / P(∞), log-uniform
COLOURED_KNEE_RANGE = (0.04, 0.3)    # kc, cycles/px, log-uniform
COLOURED_STEEPNESS_RANGE = (2.0, 12.0)  # n, uniform
PSD_SHELLS = 129  # shells 0 … 0.5 cycles/px of each dataset's stored radial spectrum ("psd")


def dataset_conditions(seed: int, dataset: int, snr_range) -> dict:
  """The imaging conditions of dataset `dataset` (see the module table); a pure function of its ids."""
  rng = np.random.default_rng([int(seed), int(dataset), 0xC3F])
  lo_snr, hi_snr = (math.log(float(v)) for v in snr_range)
  defocus_lo = rng.uniform(*DEFOCUS_LOW_RANGE_A)
  return dict(
      n_fit=int(round(math.exp(rng.uniform(*np.log(N_FIT_RANGE))))),
      snr=float(math.exp(rng.uniform(lo_snr, hi_snr))),
      defocus_range_A=(defocus_lo, defocus_lo + rng.uniform(*DEFOCUS_WIDTH_RANGE_A)),
      astigmatism_A=float(rng.uniform(0.0, ASTIGMATISM_A)),
      voltage_kv=300.0 if rng.uniform() < 0.8 else 200.0,
      amplitude_contrast=float(rng.uniform(*AMPLITUDE_CONTRAST_RANGE)),
      max_shift_fraction=float(rng.uniform(0.0, MAX_SHIFT_FRACTION)),
      ctf=bool(rng.uniform() < CTF_FRACTION),
      sign=1.0 if rng.uniform() < 0.5 else -1.0)


def noise_spectrum(seed: int, dataset: int, coloured: float) -> dict | None:
  """Plateau-family parameters {ratio, kc, n} of dataset `dataset`'s noise spectrum, coloured with
  probability `coloured` (None: white); a pure function of its ids, drawn apart from `dataset_conditions`
  (whose draws, and so every white dataset, do not depend on `coloured`)."""
  rng = np.random.default_rng([int(seed), int(dataset), 0xC01])
  if not rng.uniform() < float(coloured):
    return None
  return dict(ratio=float(math.exp(rng.uniform(*np.log(COLOURED_RATIO_RANGE)))),
              kc=float(math.exp(rng.uniform(*np.log(COLOURED_KNEE_RANGE)))),
              n=float(rng.uniform(*COLOURED_STEEPNESS_RANGE)))


def spectrum_psd(params: dict, n_shells: int = PSD_SHELLS) -> np.ndarray:
  """The radial PSD (n_shells,) of `noise_spectrum`'s parameters (relative; only its shape matters)."""
  from cryojax_denoise.noise import spectrum as sp, whiten as wh

  return wh.family_psd("plateau", sp.shell_frequencies(n_shells), **params)


def simulate_triplets(seed: int, dataset: int, image_size: int, keep: int, snr_range,
                      snr: float | None = None, ctf: bool | None = None, n_fit: int | None = None,
                      coloured: float = 0.0, prior_reach: float = PRIOR_REACH) -> dict[str, np.ndarray]:
  """One dataset's {"noisy", "prior", "clean"} (keep, H, W) float32 (CTF-modulated CWF estimate as `prior`,
  CWF fitted on `n_fit` other particles of the dataset), its "snr" and "psd" (radial, all ones when white);
  `snr` / `ctf` / `n_fit` override the drawn values (validation: a fixed SNR, CTF on). `coloured`: the
  probability of coloured noise (`noise_spectrum`); a coloured dataset's triplets are whitened (module
  docstring). `prior_reach`: the CWF basis reach, a fraction of the box past its edge."""
  from cryojax_denoise import denoisers
  from cryojax_denoise.data import ctf as ctf_lib, molecules, simulate
  from cryojax_denoise.data.maps import MapSource
  from cryojax_denoise.denoisers.noise import estimate_noise_std
  from cryojax_denoise.noise import whiten as wh

  cond = dataset_conditions(seed, dataset, snr_range)
  spectrum = noise_spectrum(seed, dataset, coloured)
  psd = None if spectrum is None else spectrum_psd(spectrum)
  cond["snr"] = cond["snr"] if snr is None else float(snr)
  cond["ctf"] = cond["ctf"] if ctf is None else bool(ctf)
  cond["n_fit"] = cond["n_fit"] if n_fit is None else int(n_fit)
  volume, pixel_size, kind = molecules.molecule_map([int(seed), int(dataset)], image_size)
  source = MapSource(volume, float(pixel_size), f"corpus molecule {dataset} ({kind})")
  n_fit, keep = int(cond["n_fit"]), int(keep)
  ds = simulate.simulate_dataset(
      source, n_fit + keep, image_size, snr=cond["snr"], seed=int(dataset) % (1 << 31), ctf=cond["ctf"],
      defocus_range_A=cond["defocus_range_A"], max_shift_A=cond["max_shift_fraction"] * image_size * pixel_size,
      astigmatism_A=cond["astigmatism_A"], voltage_kv=cond["voltage_kv"],
      amplitude_contrast=cond["amplitude_contrast"], noise_psd=psd)
  noisy, clean = cond["sign"] * ds.noisy, cond["sign"] * ds.clean
  ctfs = ctf_lib.ctf_grid(ds.particles, ds.optics, image_size, ds.pixel_size) if cond["ctf"] else None
  if psd is not None:  # what fit_coloured hands autoencoder_cwf: whitened particles, W joined to each CTF
    filt = wh.whitening_filter(psd, (image_size, image_size))
    noisy, clean = (np.asarray(wh.apply_filter(a, filt), np.float32) for a in (noisy, clean))
    ctfs = np.broadcast_to(filt, noisy.shape) if ctfs is None else np.asarray(ctfs, np.float32) * filt
  sigma = np.asarray(estimate_noise_std(noisy), np.float32)
  fit, kept = slice(0, n_fit), slice(n_fit, n_fit + keep)
  cwf = denoisers.fit("cwf", noisy[fit], sigma[fit], None if ctfs is None else ctfs[fit],
                      reach=float(prior_reach) * image_size)
  prior = np.asarray(cwf(noisy[kept], sigma[kept], None if ctfs is None else ctfs[kept]), np.float32)
  return {"noisy": noisy[kept].astype(np.float32), "prior": prior, "clean": clean[kept].astype(np.float32),
          "snr": np.float32(cond["snr"]), "psd": np.ones(PSD_SHELLS, np.float32) if psd is None else psd.astype(np.float32)}


def build(seed: int, datasets, image_size: int, keep: int, snr_range, cache: str = "", log=None,
          coloured: float = 0.0, prior_reach: float = PRIOR_REACH, **overrides) -> dict[str, np.ndarray]:
  """{"noisy", "prior", "clean"} (len(datasets)·keep, H, W) over `datasets` (ids), cached per dataset
  (a white dataset's file is the same whatever `coloured`; a coloured one's name says so), with "dataset"
  (each triplet's index into `datasets`) and "psd" (len(datasets), PSD_SHELLS) each dataset's radial noise spectrum."""
  parts = []
  for i, d in enumerate(datasets):
    tag = "".join(f"_{k}{v}" for k, v in sorted(overrides.items()))
    tag += "_coloured" if noise_spectrum(seed, d, coloured) is not None else ""
    tag += f"_reach{prior_reach:g}" if prior_reach != PRIOR_REACH else ""
    name = f"s{seed}_d{d}_L{image_size}_k{keep}_oos_snr{snr_range[0]:g}-{snr_range[1]:g}{tag}.npz"
    path = os.path.join(cache, name) if cache else ""
    if path and os.path.exists(path):
      with np.load(path) as z:
        part = {k: z[k] for k in z.files}
    else:
      part = simulate_triplets(seed, d, image_size, keep, snr_range, coloured=coloured, prior_reach=prior_reach,
                               **overrides)
      if path:
        os.makedirs(cache, exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **part)
        os.replace(tmp, path)
    parts.append(part)
    if log is not None:
      log(i + 1, len(datasets))
  out = {k: np.concatenate([p[k] for p in parts]) for k in ("noisy", "prior", "clean")}
  out["dataset"] = np.repeat(np.arange(len(parts)), [len(p["clean"]) for p in parts])  # each triplet's dataset
  out["psd"] = np.stack([p.get("psd", np.ones(PSD_SHELLS, np.float32)) for p in parts])  # (datasets, PSD_SHELLS)
  return out


def augment(rng: np.random.Generator, *stacks: np.ndarray) -> list[np.ndarray]:
  """The same random 90° rotation, flip and sign applied to every (B, H, W) stack. Each transformed
  triplet is a true triplet of the transformed dataset: CWF's fitted statistics are invariant to in-plane
  rotations and reflections (block-diagonal in the steerable basis), and CWF fitted on −D maps −y to
  −CWF_D(y) (tested)."""
  b = stacks[0].shape[0]
  rot, flip, sign = rng.integers(0, 4, b), rng.integers(0, 2, b), rng.choice([-1.0, 1.0], b).astype(np.float32)
  out = [np.empty_like(s) for s in stacks]
  for i in range(b):
    for s, o in zip(stacks, out):
      a = np.rot90(s[i], rot[i])
      o[i] = sign[i] * (a[:, ::-1] if flip[i] else a)
  return out


class CwfCorpusPairs:
  """The `training.data` interface over CWF triplets: `batch(step) -> (inputs (B, 2, H, W), clean (B, H, W))`
  with inputs[:, 0] the noisy particles and inputs[:, 1] their CWF estimates; `validation()` the same from
  `VAL_DATASETS` held-out datasets at `val_snr`, CTF on. Built once at construction (`cwf_datasets`
  datasets × `cwf_keep` particles); batch `step` is a pure function of (seed, step)."""

  VAL_DATASETS = 4

  def __init__(self, config, sharding=None):
    from absl import logging

    self.config, self.sharding = config, sharding
    self.image_size = int(config.image_size)
    n, keep = int(config.cwf_datasets), int(config.cwf_keep)

    def log(i, total):
      if i == total or i % 10 == 0:
        logging.info("cwf corpus: %d/%d datasets", i, total)

    self.data = build(int(config.seed), range(n), self.image_size, keep, tuple(config.snr_range),
                      config.cwf_cache, log, **self.noise_and_prior(config))
    self.n = len(self.data["clean"])

  def scored(self, clean: np.ndarray, data: dict, idx) -> np.ndarray:
    """Targets (B, H, W), or with `cwf_loss_domain="original"` (B, 2, H, W): targets and each one's colouring
    filter 1/W (all ones for a white dataset; `losses.split_target`), so that the loss is the MSE of the
    coloured-back output, which is what `denoise` returns and is scored on. Isotropic, so the augmentation's
    rotations and flips leave it unchanged. The filters (datasets, H, W) are made once per `data`, kept in it."""
    if self.config.get("cwf_loss_domain", "whitened") != "original":
      return clean
    if "colouring" not in data:
      from cryojax_denoise.noise import whiten as wh

      data["colouring"] = np.stack([1.0 / wh.whitening_filter(p, clean.shape[-2:]) for p in data["psd"]])
    return np.stack([clean, data["colouring"][data["dataset"][idx]]], axis=1)

  @staticmethod
  def noise_and_prior(config) -> dict:
    return dict(coloured=float(config.get("cwf_coloured", 0.0)),
                prior_reach=float(config.get("cwf_prior_reach", PRIOR_REACH)))

  def batch(self, step: int):
    import jax.numpy as jnp

    rng = np.random.default_rng([int(self.config.seed), int(step), 11])
    idx = np.sort(rng.integers(0, self.n, int(self.config.batch_size)))
    noisy, prior, clean = augment(rng, *(self.data[k][idx] for k in ("noisy", "prior", "clean")))
    inputs = np.stack([noisy, prior], axis=1)
    clean = self.scored(clean, self.data, idx)
    if self.sharding is None:
      return jnp.asarray(inputs), jnp.asarray(clean)
    from cryojax_denoise.sharding import shard_host_batch

    return shard_host_batch(inputs, self.sharding), shard_host_batch(clean, self.sharding)

  def validation(self):
    c = self.config
    n_sets = min(self.VAL_DATASETS, int(c.val_size))
    per = -(-int(c.val_size) // n_sets)
    ids = [VAL_DATASET_OFFSET + m for m in range(n_sets)]
    v = build(int(c.seed), ids, self.image_size, per, tuple(c.snr_range), c.cwf_cache, snr=float(c.val_snr),
              ctf=True, **self.noise_and_prior(c))
    n = int(c.val_size)
    return np.stack([v["noisy"][:n], v["prior"][:n]], axis=1), self.scored(v["clean"][:n], v, np.arange(n))
