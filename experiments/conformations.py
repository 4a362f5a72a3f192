"""conformations: do raw or denoised particles tell conformational states of a molecule apart?

    python launch.py --experiment=conformations [--config.preset=smoke|default]
    python launch.py --experiment=conformations --config.volumes="(open.mrc,closed.mrc)" --config.pixel_size=1.5

Built-in states: the phantom and the phantom with one domain (default its smallest) moved rigidly
by each of `displacements` (Å; with motion='rotate', degrees about a hinge). Per state pair and
SNR, particles are drawn 50/50 from the two states (random poses, CTF, one noise σ for both) and
classified on raw and on denoised images (every registered method, knobs at their defaults, σ
known) by: `template` (pose-known least squares against both states' projections),
`template_ncc` (the same templates, highest correlation coefficient),
`pca_gmm` / `pca_kmeans` (unsupervised, on a second set of particles within `pose_spread_deg` of
the main set's view where the states differ most) and `3d` (one map per template-matching class,
reconstructed from the raw particles, FSC against its true state). Writes results.json,
results.csv, accuracy_vs_snr.png and report.md.
"""

from __future__ import annotations

import os
import sys
import time

import ml_collections
import numpy as np
from absl import logging
from ml_collections.config_dict import placeholder

from cryojax_denoise.errors import InputError

PRESETS = {
    # Seconds: run end to end by the tests.
    "smoke": dict(image_size=32, n_images=48, n_cluster=48, displacements=(6.0, 24.0), snrs=(1.0, 0.05),
                  raw_only_snrs=(), batch_size=16),
    # Every registered method, four displacements, four SNRs (+ raw-only SNRs) on a 2-core CPU.
    "default": dict(image_size=64, n_images=200, n_cluster=100, displacements=(3.0, 6.0, 12.0, 24.0),
                    snrs=(1.0, 0.3, 0.1, 0.05), raw_only_snrs=(0.01, 0.001), batch_size=50),
}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.preset = "default"
  c.methods = ()                 # denoisers to compare with raw particles; () = every registered method
  c.image_caps = "bm3d=16,ksvd=40"  # "method=N,...": slow methods denoise only the first N images of a set
  c.motion = "translate"         # built-in states: 'translate' (displacements in Å) or 'rotate' (in degrees)
  c.domain = -1                  # phantom domain to move; -1 = its smallest
  c.volumes = ()                 # or user states: two or more MRC maps on one grid ...
  c.structures = ()              # ... or PDB/mmCIF models
  c.pixel_size = 0.0             # Å; 0 = from the maps / sized so the molecule fills ~60% of the box
  c.seed = 0
  c.ctf = True
  c.pose_spread_deg = 5.0        # unsupervised set: poses within this angle of one view
  c.cluster_defocus_A = (14500.0, 15500.0)  # unsupervised set: mean defocus range, Å
  c.n_components = 3             # PCA components for the unsupervised classifiers
  c.reconstruct = True           # the '3d' classifier rows
  c.reconstruct_pad = 1          # Fourier oversampling of the class maps
  c.autoencoder_checkpoint = ""  # learned methods: a training workdir (default: the bundled general model)
  c.gan_checkpoint = ""
  # Preset-controlled (None = the preset's value).
  c.image_size = placeholder(int)
  c.n_images = placeholder(int)      # particles per state pair for template matching and 3D
  c.n_cluster = placeholder(int)     # narrow-pose particles per state pair for the unsupervised classifiers
  c.displacements = placeholder(tuple)
  c.snrs = placeholder(tuple)
  c.raw_only_snrs = placeholder(tuple)  # extra SNRs scored on raw particles only (the floor of the curves)
  c.batch_size = placeholder(int)    # images per denoiser call (DDTF/KSVD learn one dictionary per call)
  return c


def parse_caps(text: str) -> dict[str, int]:
  caps = {}
  for item in filter(None, (s.strip() for s in str(text).split(","))):
    name, _, value = item.partition("=")
    try:
      caps[name.strip()] = int(value)
    except ValueError:
      raise InputError(f"image_caps: expected 'method=N,...', got {text!r}") from None
    if caps[name.strip()] < 2:
      raise InputError(f"image_caps: {name.strip()} needs at least 2 images, got {value}")
  return caps


def resolve(config) -> ml_collections.ConfigDict:
  """Fills preset fields left unset and checks every value; raises InputError."""
  from cryojax_denoise import denoisers

  from cryojax_denoise.launcher import fill_preset

  config = fill_preset(config, PRESETS)
  unknown = [m for m in config.methods if m not in denoisers.names()]
  if unknown:
    raise InputError(f"unknown method(s) {', '.join(unknown)}; valid methods: {', '.join(denoisers.names())}")
  for key in ("snrs", "raw_only_snrs"):
    if any(not float(s) > 0 for s in config[key]):
      raise InputError(f"{key}: SNRs must be positive, got {tuple(config[key])}")
  if not config.snrs:
    raise InputError("snrs: give at least one SNR")
  if not config.volumes and not config.structures:
    if not config.displacements or any(float(d) < 0 for d in config.displacements):
      raise InputError(f"displacements: need one or more amounts >= 0, got {tuple(config.displacements)}")
  if config.image_size < 16 or config.image_size % 2:
    raise InputError(f"image_size: must be even and >= 16, got {config.image_size}")
  if config.n_images < 4 or config.n_cluster < 4:
    raise InputError(f"n_images, n_cluster: need at least 4 particles, got {config.n_images}, {config.n_cluster}")
  if config.batch_size < 1 or not 1 <= config.n_components <= 64 or config.reconstruct_pad not in (1, 2, 3, 4):
    raise InputError("batch_size >= 1, n_components in 1..64 and reconstruct_pad in 1..4 are required")
  if not 0 <= config.pose_spread_deg <= 180:
    raise InputError(f"pose_spread_deg: must be in [0, 180], got {config.pose_spread_deg}")
  parse_caps(config.image_caps)
  for key in ("autoencoder_checkpoint", "gan_checkpoint"):
    if config[key] and not os.path.isdir(config[key]):
      raise InputError(f"{config[key]}: {key} not found")
  for path in tuple(config.volumes) + tuple(config.structures):
    from cryojax_denoise import io
    io.check_input_file(path, "state map/model")
  return config


def validate(config) -> None:
  resolve(config)


def _state_pairs(config):
  """[(row fields, [map0, map1, ...])] and the pixel size."""
  from cryojax_denoise.evaluation import conformations as cf

  if config.volumes or config.structures:
    maps, pixel_size = cf.load_states(config.image_size, tuple(config.volumes), tuple(config.structures),
                                      config.pixel_size or None)
    names = [os.path.basename(p) for p in tuple(config.volumes) + tuple(config.structures)]
    return [({"displacement_A": None, "states": names}, maps)], pixel_size, None
  amounts = [float(a) for a in config.displacements]
  st = cf.phantom_states(config.image_size, amounts, motion=config.motion, domain=config.domain,
                         seed=config.seed, pixel_size=config.pixel_size or None)
  pairs = []
  for amount, rms, moved in zip(amounts, st.rms_A, st.moved):
    fields = {"displacement_A": amount} if config.motion == "translate" else {"displacement_A": rms, "angle_deg": amount}
    pairs.append((fields, [st.reference, moved]))
  return pairs, st.pixel_size, st


def _methods(config, notes: list[str]):
  """[(name, denoiser or None)], raw first. Learned methods load `<name>_checkpoint=` or the bundled
  general model; any method that cannot be loaded is skipped with a note."""
  from cryojax_denoise import denoisers

  out = [("raw", "raw")]
  for name in (tuple(config.methods) or tuple(denoisers.names())):
    try:
      if denoisers.REGISTRY[name].fit is not None:
        out.append((name, None))  # fitted per particle set, with the particles' CTFs (`_denoise`)
      elif denoisers.REGISTRY[name].learned:
        checkpoint = config.get(f"{name}_checkpoint", "") or None
        out.append((name, denoisers.get(name, checkpoint=checkpoint)))
        notes.append(f"`{name}`: model from {checkpoint or 'the bundled general model'}.")
      else:
        out.append((name, denoisers.get(name)))
    except InputError as e:
      notes.append(f"`{name}` skipped: {e}")
  return out


def _sets(maps, pixel_size, config):
  """Raw projections, labels, unit noise and tables of the template/3D set and the narrow set."""
  import jax

  from cryojax_denoise.data import simulate
  from cryojax_denoise.data.maps import MapSource
  from cryojax_denoise.data.relion import optics_table, particles_table
  from cryojax_denoise.data.ctf import ctf_grid
  from cryojax_denoise.evaluation import conformations as cf

  size, seed = config.image_size, config.seed
  src = MapSource(np.asarray(maps[0], np.float32), pixel_size, "state0")
  k = len(maps)
  out, view = {}, None
  for name, n in (("main", config.n_images), ("cluster", config.n_cluster)):
    lo_hi = simulate.DEFOCUS_RANGE_A if name == "main" else tuple(config.cluster_defocus_A)
    sim = simulate.Simulator(src, size, config.ctf, lo_hi, calibrate=False)
    key = jax.random.PRNGKey(seed + (0 if name == "main" else 10_000))
    params = sim.sample_params(key, n).astype(np.float32)
    if name == "cluster":
      params = cf.narrow_poses(params, view, config.pose_spread_deg, seed + 20_000)
    rng = np.random.default_rng(seed + (1 if name == "main" else 10_001))
    raw = cf.project_states(maps, pixel_size, params, size, config.ctf)
    if name == "main":  # the unsupervised set looks along the main set's most telling view
      best = cf.most_different_pose(raw)
      view = tuple(float(angle[best]) for angle in (params.rot_in_degrees, params.tilt_in_degrees,
                                                    params.psi_in_degrees))
    table, optics = particles_table(params, config.ctf), optics_table(pixel_size, size)
    out[name] = dict(raw=raw, ctf=ctf_grid(table, optics, size, pixel_size) if config.ctf else None,
                     labels=cf.balanced_labels(n, k, seed + (2 if name == "main" else 10_002)),
                     unit=rng.standard_normal((n, size, size), dtype=np.float32),
                     particles=table,
                     optics=optics)
  return out, view


def _denoise(name: str, fn, images, sigma: float, ctf, batch_size: int):
  """(denoised images, seconds per image). Dataset-level methods (a registry `fit` hook, e.g. cwf)
  are fitted on these images with their CTFs and applied to them; others run in fixed batches."""
  from cryojax_denoise import denoisers
  from cryojax_denoise.evaluation import evaluate

  t = time.perf_counter()
  if fn is None:  # no per-set SURE fine-tuning (autoencoder_cwf): it would multiply the run's time
    params = {"finetune_steps": 0} if "finetune_steps" in denoisers.REGISTRY[name].params else {}
    out = np.asarray(denoisers.fit(name, images, sigma, ctf, **params)(images, sigma, ctf), np.float32)
  else:
    out = evaluate.apply_batched(fn, images, np.full(len(images), sigma, np.float32), min(batch_size, len(images)))
  return out, (time.perf_counter() - t) / len(images)


def _classify(main, clus, images, cimages, k: int, config):
  """Accuracy per classifier of (denoised) images of the main and narrow-pose sets (the first
  len(images) / len(cimages) particles), and the template-matching labels."""
  from cryojax_denoise.evaluation import conformations as cf

  n, nc = len(images), len(cimages)
  labels, templates = main.labels[:n], main.templates[:, :n]
  pred = np.asarray(cf.least_squares_labels(images, templates))
  accs = {"template": cf.accuracy(labels, pred, k),
          "template_ncc": cf.accuracy(labels, np.asarray(cf.correlation_labels(images, templates)), k)}
  for algo in ("gmm", "kmeans"):
    got = cf.cluster_labels(cimages, k, algorithm=algo, n_components=config.n_components, seed=config.seed)
    accs[f"pca_{algo}"] = cf.accuracy(clus.labels[:nc], got, k, permute=True)
  return accs, pred


def run(config, workdir: str) -> None:
  import jax

  from cryojax_denoise.data.maps import fit_volume
  from cryojax_denoise.evaluation import conformations as cf, conformations_report as report
  from cryojax_denoise.io import atomic_write_text
  from cryojax_denoise.progress import Progress

  t_start = time.perf_counter()
  config = resolve(config)
  atomic_write_text(os.path.join(workdir, "config.json"), config.to_json(indent=2) + "\n")
  caps, notes, rows = parse_caps(config.image_caps), [], []
  pairs, pixel_size, states = _state_pairs(config)
  methods = _methods(config, notes)
  snrs = [(float(s), False) for s in config.snrs] + [(float(s), True) for s in config.raw_only_snrs]
  bar = Progress(len(pairs) * sum(1 if raw_only else len(methods) for _, raw_only in snrs), "conformations",
                 unit="evals", every_s=2.0)
  for fields, maps in pairs:
    sets, view = _sets(maps, pixel_size, config)
    k = len(maps)
    truth = [fit_volume(np.asarray(m, np.float32), pixel_size, config.image_size)[0] for m in maps]
    for snr, raw_only in snrs:
      main = cf.make_particles(sets["main"]["raw"], sets["main"]["labels"], sets["main"]["unit"], snr)
      clus = cf.make_particles(sets["cluster"]["raw"], sets["cluster"]["labels"], sets["cluster"]["unit"], snr)
      raw_cache = {}  # raw particles scored on the same first images as a capped method

      def raw_scores(n, nc):
        if (n, nc) not in raw_cache:
          raw_cache[n, nc] = _classify(main, clus, main.noisy[:n], clus.noisy[:nc], k, config)
        return raw_cache[n, nc]

      for name, fn in (methods[:1] if raw_only else methods):
        cap = caps.get(name, config.n_images)
        n, nc = min(cap, config.n_images), min(cap, config.n_cluster)
        base = dict(method=name, snr=snr, **fields)
        if name == "raw":
          (accs, pred), spi = raw_scores(n, nc), 0.0
        else:
          ctf = {s: None if sets[s]["ctf"] is None else sets[s]["ctf"][:m] for s, m in (("main", n), ("cluster", nc))}
          images, spi = _denoise(name, fn, main.noisy[:n], main.noise_std, ctf["main"], config.batch_size)
          cimages, _ = _denoise(name, fn, clus.noisy[:nc], clus.noise_std, ctf["cluster"], config.batch_size)
          accs, pred = _classify(main, clus, images, cimages, k, config)
        for c, acc in accs.items():
          rows.append(dict(base, classifier=c, accuracy=acc, n_images=nc if c.startswith("pca") else n,
                           seconds_per_image=spi))
          if name != "raw":
            rows[-1]["raw_accuracy"] = raw_scores(n, nc)[0][c]
        if config.reconstruct:
          three_d = lambda labels: cf.class_map_scores(main.noisy[:n], sets["main"]["particles"].iloc[:n],
                                                       sets["main"]["optics"], pixel_size, labels, truth,
                                                       pad=config.reconstruct_pad)
          scores = three_d(pred)
          if name != "raw" and "difference_correlation" in scores:
            if ("3d", n) not in raw_cache:
              raw_cache["3d", n] = three_d(raw_scores(n, nc)[1])["difference_correlation"]
            scores["raw_difference_correlation"] = raw_cache["3d", n]
          rows.append(dict(base, classifier="3d", accuracy=accs["template"], n_images=n, seconds_per_image=spi,
                           **scores))
        bar.update(1, extra=f"{name} @ SNR {snr:g}, {fields}: template {accs['template']:.3f}")
      report.write_results(rows, workdir)  # the rows so far (long runs can be read while they go)
    notes.append(f"State pair {fields}: unsupervised set within {config.pose_spread_deg:g}° of the view "
                 f"(rot, tilt, psi) = ({view[0]:.1f}, {view[1]:.1f}, {view[2]:.1f})°.")
  report.write_results(rows, workdir)
  report.plot_accuracy(rows, os.path.join(workdir, "accuracy_vs_snr.png"))
  device = f"{len(jax.devices())}× {jax.devices()[0].device_kind} ({jax.default_backend()})"
  command = "python launch.py --experiment=conformations " + " ".join(a for a in sys.argv[1:]
                                                                     if a.startswith("--config"))
  if states is not None:
    notes.insert(0, f"Built-in states: phantom (seed {config.seed}) with domain {states.domain} "
                    f"({100 * states.domain_fraction:.1f}% of the atoms) moved ({config.motion}); "
                    f"{config.image_size}² images at {pixel_size:.3g} Å/px.")
  report.write_report(rows, workdir, notes=notes, config_json=config.to_json(indent=2), device=device,
                      command=command.strip(), elapsed_s=time.perf_counter() - t_start)
  logging.info("wrote results.json, results.csv, accuracy_vs_snr.png, report.md in %s", workdir)
