"""The main job: every denoiser at every SNR on held-out simulated images.

    python launch.py --experiment=snr_sweep [--config.preset=smoke|default|gpu]

Reproduces the study's comparison (MSE against SNR, example images, which method wins
where), adds PSNR, SSIM, FRC resolution and, with `reconstruct=True` (or `known`), the half-map FSC
resolution of a 3D reconstruction from denoised particles at their true poses; `reconstruct=refine` adds
beside it the map refined from poses found on the denoised particles (`reconstruction.refine`).
Classical methods get their key parameter searched per SNR on a tuning batch disjoint from the test set; learned
methods are trained once over an SNR range (or per SNR) unless a checkpoint is given.
"""

from __future__ import annotations

import os
import re
import sys
import time

import jax
import ml_collections
from absl import logging
from ml_collections.config_dict import FieldReference, placeholder

from cryojax_denoise import denoisers
from cryojax_denoise.denoisers.tuning import grid as tuning
from cryojax_denoise.data import simulate
from cryojax_denoise.data.maps import MapSource, load_source
from cryojax_denoise.errors import InputError
from cryojax_denoise.evaluation import evaluate, report
from cryojax_denoise.io import atomic_write_text
from cryojax_denoise.pipeline.params import OUTPUT_GAIN, gain_applies
from cryojax_denoise.progress import Progress
from experiments import _sweep_methods as sweep_methods
from experiments import _sweep_reconstruction as sweep_reconstruction
from experiments._sweep_reconstruction import reconstruct_mode

CLASSICAL = tuple(denoisers.classical_names())  # every registered method, from the registry
LEARNED = tuple(denoisers.learned_names())
SPECIALISTS = ("autoencoder", "gan")  # the learned kinds `train_specialist` trains on the phantom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_RIBOSOME = os.path.join(ROOT, "..", "shared", "data", "ribosome70S_65.mrc")
RIBOSOME_PIXEL_SIZE_A = 5.0  # the map header says 0 (see ../shared/data/README.md)

SNRS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02)  # the study's SNRs and 0.02 (real particles sit at 0.03–0.05 by reprojection)

# Values a preset supplies for every field left unset (None) on the command line.
PRESETS = {
    # A few minutes on a laptop: tiny images, short training; run end to end by the tests.
    "smoke": dict(snrs=SNRS[:5], coloured_snrs=(0.05,), image_size=32, n_test=8, n_tune=4, n_fit=64, gain_images=16,
                  autoencoder_steps=40, gan_steps=40, train_batch_size=8, n_reconstruct=300, tune=False),
    # The study's comparison in ≤ 15 min on a 2-core CPU.
    "default": dict(snrs=SNRS, coloured_snrs=(0.05, 0.02), image_size=64, n_test=32, n_tune=8, n_fit=1000,
                    gain_images=32, autoencoder_steps=800, gan_steps=400, train_batch_size=16, n_reconstruct=2000, tune=True),
    # A GPU box: larger images, more test images, longer training.
    "gpu": dict(snrs=SNRS, coloured_snrs=(0.1, 0.05, 0.02), image_size=128, n_test=256, n_tune=8, n_fit=10000,
                gain_images=128, autoencoder_steps=20000, gan_steps=20000, train_batch_size=32,
                n_reconstruct=20000, tune=True),
    # Real box size and low SNRs with CTF, a few hundred test particles (docs/snr_sweep.md: its time on 2 cores).
    "realistic": dict(snrs=(0.1, 0.05, 0.02), coloured_snrs=(0.05, 0.02), image_size=128, n_test=200, n_tune=8,
                      n_fit=2000, gain_images=64, autoencoder_steps=800, gan_steps=400, train_batch_size=16,
                      n_reconstruct=2000, tune=True),
}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.preset = "default"
  c.snrs = placeholder(tuple)  # None: the preset's (SNRS: 1 … 0.02; smoke 1 … 0.05; realistic 0.1, 0.05, 0.02)
  c.methods = CLASSICAL + LEARNED
  c.seed = 0
  # In-distribution test set: the built-in phantom unless volume= (MRC map) or structure= (PDB/mmCIF).
  c.volume = ""
  c.structure = ""
  c.pixel_size = 0.0
  c.ctf = True
  # Unseen test set: a molecule no training run saw. "auto": the 70S ribosome map of ../shared/data
  # (5 Å/px) when it is there; "" for none; or any MRC map (test_pixel_size overrides its header).
  c.test_volume = "auto"
  c.test_structure = ""
  c.test_pixel_size = 0.0
  # σ given to the classical methods: "estimated" per image as `denoise` does (Haar MAD), or "true"
  # (the realised noise level, known in simulation).
  c.sigma = "estimated"
  # Noise spectrum of every test set (noise/spec.py): flat | exp:… | plateau:… | issue:relion31 | FILE | from:STACK.
  # The SNR stays total signal variance / total noise variance.
  c.noise_psd = "flat"
  # How the methods treat the noise of those sets: "white" (the white-noise model, as before), or
  # "coloured" (spectrum estimated from the n_fit fitting particles, then whiten → method → colour back,
  # as `denoise --config.noise=coloured` does; noise/methods.py).
  c.noise = "white"
  # The coloured test set, beside the white ones: the unseen molecule with noise of this spectrum
  # (a noise_psd= spec; "" for none) at coloured_snrs (preset; default 0.05 and 0.02, where real particles
  # sit), denoised under the estimated spectrum.
  c.coloured_test = "issue:relion31"
  c.coloured_snrs = placeholder(tuple)
  # SURE's output gain α in [0, 1] (`denoise --config.output_gain`), estimated on `gain_images` (preset; denoise
  # uses 128) noisy fitting particles alone: "auto" on the sets denoised under a noise spectrum (as `denoise`
  # does), "on" every set, "off" none.
  c.output_gain = "auto"
  c.gain_images = placeholder(int)
  # Preset-controlled sizes (None = take the preset's value).
  c.image_size = placeholder(int)
  c.n_test = placeholder(int)
  c.n_tune = placeholder(int)
  c.n_fit = placeholder(int)
  c.autoencoder_steps = placeholder(int)
  c.gan_steps = placeholder(int)
  c.train_batch_size = placeholder(int)
  c.n_reconstruct = placeholder(int)
  # Learned methods: the bundled general models unless checkpoints are given; train_specialist=True
  # also trains phantom-only models (rows autoencoder_specialist, gan_specialist) to show the difference.
  c.snr_range = (0.03, 1.5)
  c.train_specialist = False
  c.train_per_snr = False
  c.gan_checkpoint = ""
  c.autoencoder_checkpoint = ""
  c.autoencoder_cwf_checkpoint = ""
  # SURE fine-tuning steps on each test stack for methods that offer it (autoencoder_cwf; `denoise`
  # uses 300): 0 keeps the default sweep within its time budget (~1 min per stack on 2 CPU cores).
  c.finetune_steps = 0
  # Parameter search on the tuning batch (the smoke preset uses each method's default instead).
  c.tune = placeholder(bool)
  # How a tuned knob is chosen: "clean" (lowest MSE against the tuning batch's clean images), "sure"
  # (lowest Monte-Carlo SURE on the noisy test images alone, as denoise params=auto does), or "both"
  # (rows `ddtf` clean-tuned and `ddtf_sure`; the report puts SURE's estimated MSE beside the true one, and,
  # with "sure" or "both", beside every method with no knob: cwf, autoencoder_cwf, the learned models).
  c.tuning = "clean"
  # 3D reconstruction from denoised particles (the study's Figure 4), per method and SNR: False (none),
  # True or "known" (true poses: `fsc_resolution_A`), "refine" (also poses found by projection matching on
  # the denoised particles from the test map low-passed to 30 Å: `fsc_resolution_refined_A`, ...).
  c.reconstruct = FieldReference(False, field_type=object)  # a bool as before, or one of those strings
  c.refine_steps_deg = (15.0, 10.0, 7.5)  # reconstruct=refine: one round per angular step (reconstruct's)
  c.example_snrs = (0.1, 0.05)
  return c


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fills preset-controlled fields left unset; checks names and values."""
  from cryojax_denoise.launcher import fill_preset

  config = fill_preset(config, PRESETS)
  valid = set(CLASSICAL + LEARNED)
  unknown = [m for m in config.methods if m not in valid]
  if unknown:
    raise InputError(f"unknown method(s) {', '.join(unknown)}; valid methods: {', '.join(sorted(valid))}")
  if not config.snrs or any(s <= 0 for s in config.snrs):
    raise InputError(f"snrs must be positive numbers, got {tuple(config.snrs)}")
  if config.tuning not in ("clean", "sure", "both"):
    raise InputError(f"tuning: must be 'clean', 'sure' or 'both', got {config.tuning!r}")
  if config.output_gain not in OUTPUT_GAIN:
    raise InputError(f"output_gain: must be one of {', '.join(OUTPUT_GAIN)}, got {config.output_gain!r}")
  if int(config.gain_images) < 1:
    raise InputError(f"gain_images: must be at least 1, got {config.gain_images}")
  if config.noise not in ("white", "coloured"):
    raise InputError(f"noise: must be 'white' or 'coloured', got {config.noise!r}")
  if any(s <= 0 for s in config.coloured_snrs):
    raise InputError(f"coloured_snrs must be positive numbers, got {tuple(config.coloured_snrs)}")
  reconstruct_mode(config)
  if not config.refine_steps_deg or any(not (0 < float(v) <= 90) for v in config.refine_steps_deg):
    raise InputError(f"refine_steps_deg: one or more steps in (0, 90] degrees, got {tuple(config.refine_steps_deg)}")
  if config.sigma not in ("estimated", "true"):
    raise InputError(f"sigma: must be 'estimated' or 'true', got {config.sigma!r}")
  for key in ("gan_checkpoint", "autoencoder_checkpoint", "autoencoder_cwf_checkpoint", "volume", "structure", "test_structure"):
    if config[key] and not os.path.exists(config[key]):
      raise InputError(f"{config[key]}: {key} not found")
  if config.test_volume not in ("auto", "") and not os.path.exists(config.test_volume):
    raise InputError(f"{config.test_volume}: test_volume not found")
  for kind in (m for m in config.methods if m in LEARNED):
    if not config[f"{kind}_checkpoint"] and not os.path.isdir(bundled_model(kind)):
      raise InputError(f"{kind}: no bundled general model at {bundled_model(kind)}; give {kind}_checkpoint=DIR")
  return config


def validate(config) -> None:
  resolve(config)
  from cryojax_denoise.noise import spec as noise_spec
  noise_spec.resolve(config.get("noise_psd", "flat"))  # a bad noise_psd: one error line before any work
  noise_spec.resolve(config.get("coloured_test", ""))


def bundled_model(kind: str) -> str:
  """The general model shipped in the package for `kind` ("autoencoder" or "gan")."""
  from cryojax_denoise.training import restore

  return restore.bundled_dir(kind)


def model_for(name: str, checkpoint: str, config, psd) -> str:
  """The model a learned row uses on a test set: under a noise spectrum `psd` autoencoder_cwf takes the bundled
  model trained on whitened coloured-noise datasets (as `denoise --config.noise=coloured` does) unless
  `autoencoder_cwf_checkpoint` names one."""
  if psd is None or name != "autoencoder_cwf" or config.autoencoder_cwf_checkpoint:
    return checkpoint
  from cryojax_denoise.training import learned

  return bundled_model(learned.COLOURED_KIND)


def test_sets(config) -> list[tuple[str, MapSource]]:
  """[(name, map)]: the in-distribution set ("phantom", or the file's stem) and the unseen molecule."""
  size = config.image_size
  main = load_source(volume=config.volume or None, structure=config.structure or None,
                              pixel_size=config.pixel_size or None, image_size=size, seed=config.seed)
  given = config.volume or config.structure
  sets = [(_stem(given) if given else "phantom", main)]
  volume, pixel_size = config.test_volume, config.test_pixel_size
  if volume == "auto":
    volume = SHARED_RIBOSOME if os.path.exists(SHARED_RIBOSOME) else ""
    pixel_size = pixel_size or RIBOSOME_PIXEL_SIZE_A
    if not volume:
      logging.warning("no unseen test molecule: %s is missing (give test_volume= or test_structure=)",
                      SHARED_RIBOSOME)
  if volume or config.test_structure:
    unseen = load_source(volume=volume or None, structure=config.test_structure or None,
                                  pixel_size=pixel_size or None, image_size=size, seed=config.seed)
    sets.append((_stem(volume or config.test_structure), unseen))
  return sets


def _stem(path: str) -> str:
  """'…/ribosome70S_65.mrc' -> 'ribosome70S' (a trailing _<box size> dropped)."""
  stem = os.path.splitext(os.path.basename(path))[0]
  return re.sub(r"_\d+$", "", stem) or stem


def plan_sets(config, snrs) -> list[dict]:
  """The test sets with how they are noised and denoised: {name, source, spec (the `noise_psd=` string),
  noise_psd (the spectrum drawn; None white), coloured (methods run under the estimated spectrum), snrs}."""
  from cryojax_denoise.noise import spec as noise_spec

  drawn = noise_spec.resolve(config.noise_psd)
  plan = [dict(name=name, source=source, spec=config.noise_psd, noise_psd=drawn, coloured=config.noise == "coloured", snrs=snrs)
          for name, source in test_sets(config)]
  if config.coloured_test and config.coloured_snrs and len(plan) > 1:
    label = _stem(config.coloured_test.split(":", 1)[-1])
    plan.append(dict(name=f"{plan[-1]['name']} ({label} noise)", source=plan[-1]["source"], coloured=True, spec=config.coloured_test,
                     noise_psd=noise_spec.resolve(config.coloured_test), snrs=[float(s) for s in config.coloured_snrs]))
  return plan


def _train(kind: str, config, workdir: str, snr_range, tag: str) -> str:
  """Trains (or resumes) a phantom-only learned denoiser with the sweep's budget; returns its dir."""
  from cryojax_denoise.training import train

  tc = train.default_config(kind)
  with tc.unlocked():
    tc.steps = config[f"{kind}_steps"]
    tc.batch_size = config.train_batch_size
    tc.image_size = config.image_size
    tc.seed = config.seed
    tc.snr = 0.0
    tc.snr_range = tuple(snr_range)
    tc.val_size = config.n_test
    # Five validations/checkpoints over a long run; short (smoke) runs only at the end.
    tc.eval_every = tc.checkpoint_every = max(tc.steps // 5, 1) if tc.steps >= 500 else max(tc.steps, 1)
    for key in ("volume", "structure", "pixel_size", "ctf"):
      if key in tc:
        tc[key] = config[key]
  out = os.path.join(workdir, f"train_{kind}{tag}")
  logging.info("training %s for %d steps in %s", kind, tc.steps, out)
  train.train(tc, out)
  return out


def learned_models(config, workdir: str, snrs) -> dict[tuple[str, float], str]:
  """{(row name, snr): checkpoint dir}: the general (bundled or given) models, plus phantom-trained
  specialists when `train_specialist`."""
  models = {}
  for kind in (m for m in config.methods if m in LEARNED):
    general = config[f"{kind}_checkpoint"] or bundled_model(kind)
    for snr in snrs:
      models[kind, snr] = general
    if config.train_specialist and kind in SPECIALISTS:
      if config.train_per_snr:
        for snr in snrs:
          models[f"{kind}_specialist", snr] = _train(kind, config, workdir, (snr, snr), f"_snr{snr:g}")
      else:
        out = _train(kind, config, workdir, config.snr_range, "")
        for snr in snrs:
          models[f"{kind}_specialist", snr] = out
  return models


def run(config, workdir: str) -> None:
  t_start = time.perf_counter()
  config = resolve(config)
  atomic_write_text(os.path.join(workdir, "config.json"), config.to_json(indent=2) + "\n")
  snrs = [float(s) for s in config.snrs]
  sets = plan_sets(config, snrs)
  checkpoints = learned_models(config, workdir, sorted({s for t in sets for s in t["snrs"]}, reverse=True))
  methods = [m for m in config.methods if m not in LEARNED] + [m for m in config.methods if m in LEARNED]
  methods += sorted({name for name, _ in checkpoints if name not in methods})
  methods += sweep_methods.sure_rows(config, methods)
  # Disjoint splits: training draws from seed; tuning and test sets from other seeds (other poses).
  # The test set uses the same poses at every SNR, so columns of examples.png are the same particles.
  tune_seed, test_seed, recon_seed = 10_000 + config.seed, 20_000 + config.seed, 30_000 + config.seed
  fit_seed = 40_000 + config.seed

  rows, chosen, notes = [], {}, []
  example_snrs = [s for s in snrs if any(abs(s - e) < 1e-9 for e in config.example_snrs)] or sorted(snrs)[:2]
  ex_clean, ex_noisy, ex_den = {}, {}, {m: {} for m in methods}
  bar = Progress(total=sum(len(t["snrs"]) for t in sets) * (len(methods) + 1), desc="snr_sweep", unit="evals",
                 every_s=1.0)
  batch = config.n_tune
  from cryojax_denoise.noise.methods import wrap as whitened
  for plan in sets:
    set_name = plan["name"]

    def dataset(n, snr, seed, plan=plan):
      return simulate.simulate_dataset(plan["source"], n_images=n, image_size=config.image_size, snr=snr, seed=seed,
                                       ctf=config.ctf, noise_psd=plan["noise_psd"])

    for snr in plan["snrs"]:
      tune_ds, test_ds = dataset(config.n_tune, snr, tune_seed), dataset(config.n_test, snr, test_seed)
      pixel_size = float(test_ds.pixel_size)
      fit_ds = dataset(config.n_fit, snr, fit_seed) if plan["coloured"] else None
      psd = sweep_methods.spectrum(fit_ds) if plan["coloured"] else None  # what `denoise --config.noise=coloured` uses
      tune_sigma = sweep_methods.sigma_for(config, tune_ds, psd)
      test_sigma = sweep_methods.sigma_for(config, test_ds, psd)
      row = evaluate.score(test_ds.noisy, test_ds.clean, pixel_size)
      rows.append(dict(method="noisy", snr=snr, test_set=set_name, **row, seconds_per_image=0.0,
                       n_images=len(test_ds.noisy)))
      bar.update(1)
      label = f"{set_name} SNR {snr:g}"
      if snr in example_snrs:
        ex_clean[label], ex_noisy[label] = test_ds.clean, test_ds.noisy
      fits = {}  # the dataset-level methods' fitting set (fit_ds, simulated once per SNR) and their fits
      for name in methods:
        learned = (name, snr) in checkpoints
        base = sweep_methods.registry_name(name)
        dataset_level = denoisers.REGISTRY[base].fit is not None
        params, sure_info = ({"checkpoint": model_for(name, checkpoints[name, snr], config, psd)} if learned else {}), {}
        if "finetune_steps" in denoisers.REGISTRY[base].params:
          params["finetune_steps"] = int(config.finetune_steps)
        tuned = not learned and not dataset_level and config.tune and denoisers.REGISTRY[base].knob
        # Under a spectrum the knob is chosen for the whitened method that is applied.
        wrap = None if psd is None else (lambda den, v, base=base: whitened(den, psd, base, {denoisers.REGISTRY[base].knob: v}))
        if tuned and (config.tuning == "sure" or name.endswith("_sure")):
          params, sure_info = sweep_methods.sure_tune(base, test_ds.noisy, test_sigma, config, psd, wrap)
          chosen[f"{set_name}: {name}", snr] = params
        elif tuned:
          params, _ = tuning.tune(base, tune_ds.noisy, tune_ds.clean, tune_sigma, wrap=wrap)
          chosen[f"{set_name}: {name}", snr] = params
        if dataset_level:  # fitted on n_fit noisy particles of the molecule (and their CTFs), never clean ones
          fit_ds = dataset(config.n_fit, snr, fit_seed) if fit_ds is None else fit_ds
          fn = sweep_methods.fitted_method(name, config, fit_ds, params, fits, psd)
          ctf = sweep_methods.ctf_of(test_ds, config)
          evaluate.apply_batched(fn, tune_ds.noisy, tune_sigma, batch, ctf=sweep_methods.ctf_of(tune_ds, config))
        else:
          fn, ctf = denoisers.get(base, **params), None
          if psd is not None:
            fn = whitened(fn, psd, base, {k: v for k, v in params.items() if k != "checkpoint"})
          # Compile outside the timing (clean tuning already compiled it; a host method has nothing to compile).
          if (not tuned or sure_info) and denoisers.REGISTRY[base].compiled:
            evaluate.apply_batched(fn, tune_ds.noisy, tune_sigma, batch)
        if gain_applies(config.output_gain, psd):
          fit_ds = dataset(config.n_fit, snr, fit_seed) if fit_ds is None else fit_ds
          fn, gain_info = sweep_methods.gained(base, fn, fit_ds, config, psd, dataset_level, params)
          sure_info = {**sure_info, **gain_info}
        if config.tuning != "clean" and not tuned:  # the SURE table gains the methods with no knob
          sure_info = {**sure_info, **sweep_methods.sure_quality(base, fn, test_ds, test_sigma, config, psd, ctf,
                                                                 dataset_level, params,
                                                                 sure_info.get("output_gain", 1.0))}
        den, row = evaluate.evaluate(fn, test_ds.noisy, test_ds.clean, test_sigma, pixel_size, batch, ctf=ctf)
        rows.append(dict(method=name, snr=snr, test_set=set_name, **row, **sure_info,
                         params={k: v for k, v in params.items() if k != "checkpoint"}))
        if snr in example_snrs:
          ex_den[name][label] = den
        bar.update(1, extra=f"{set_name}: {name} @ SNR {snr:g}: MSE {row['mse']:.4f}")

    if reconstruct_mode(config) and not plan["coloured"]:  # reconstruction denoises under the white-noise model
      sweep_reconstruction.add_reconstruction(rows, config, methods, plan["snrs"], checkpoints, chosen, dataset,
                                              recon_seed, notes, set_name, plan["source"])

  report.write_results(rows, workdir)
  report.plot_metrics(rows, os.path.join(workdir, "mse_vs_snr.png"))
  report.plot_examples(ex_clean, ex_noisy, {m: ex_den[m] for m in methods}, os.path.join(workdir, "examples.png"))
  device = f"{len(jax.devices())}× {jax.devices()[0].device_kind} ({jax.default_backend()})"
  command = "python launch.py --experiment=snr_sweep " + " ".join(a for a in sys.argv[1:] if a.startswith("--config"))
  notes.append("σ passed to classical methods: " + ("the realised noise level of the simulation (known exactly)."
               if config.sigma == "true" else "estimated per image from the noisy image (Haar MAD), as `denoise` does."))
  notes.append(f"Test sets: {', '.join(t['name'] for t in sets)}; {config.n_test} images of {config.image_size}² per SNR, "
               f"tuning batch: {config.n_tune} images with other poses.")
  for t in (t for t in sets if t["coloured"]):
    notes.append(f"{t['name']}: noise of spectrum {t['spec']} "
                 f"at the same total SNR; every method runs under the spectrum estimated from the {config.n_fit} fitting "
                 "particles' background (whitened, denoised, coloured back; bm3d with the PSD as its input), as "
                 "`denoise --config.noise=coloured` does; knobs tuned for the whitened method.")
  for kind in (m for m in config.methods if m in LEARNED):
    notes.append(f"{kind}: general model {checkpoints[kind, snrs[0]]} (trained on the molecule corpus only; "
                 "no test molecule was in it).")
    coloured_model = model_for(kind, checkpoints[kind, snrs[0]], config, psd=True)
    if any(t["coloured"] for t in sets) and coloured_model != checkpoints[kind, snrs[0]]:
      notes.append(f"{kind} on the coloured-noise set: general model {coloured_model} (trained on the molecule "
                   "corpus with drawn noise spectra, whitened; no test molecule was in it).")
  if config.train_specialist:
    notes.append(f"*_specialist: trained on the {sets[0]['name']} only for {config.autoencoder_steps} (autoencoder) and "
                 f"{config.gan_steps} (GAN) steps of {config.train_batch_size} fresh images"
                 + (" per SNR." if config.train_per_snr else f" over SNR {config.snr_range[0]:g}–{config.snr_range[1]:g}."))
  report.write_report(rows, workdir, config_json=config.to_json(indent=2), device=device, command=command.strip(),
                      elapsed_s=time.perf_counter() - t_start, classical=list(CLASSICAL),
                      learned=[m for m in methods if any(m == k for k, _ in checkpoints)], chosen=chosen, notes=notes)
  logging.info("wrote results.json, results.csv, mse_vs_snr.png, examples.png, report.md in %s", workdir)
