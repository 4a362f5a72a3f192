"""3D reconstruction from particles with known poses and CTF: two half maps, the full map, FSC.

    python launch.py --experiment=reconstruct --config.input=particles.star [--config.reference=truth.mrc]
    python launch.py --experiment=reconstruct --config.simulate_dir=runs/simulate [--config.stack=clean.mrcs]
    python launch.py --experiment=reconstruct --config.input=particles.star --config.method=ddtf

Reads poses (rlnAngleRot/Tilt/Psi), origins and CTF from the STAR file, optionally denoises the
particles first (`method=`, any registered denoiser; `checkpoint=` for learned ones), splits them
at random (seeded) into halves and reconstructs by direct Fourier inversion
(`cryojax_denoise.reconstruction.fourier`). Writes half1.mrc, half2.mrc, map.mrc (all particles, no
sharpening, pixel size in the headers), fsc.json and fsc.png: the half-map FSC with its 0.143
resolution and, given a `reference=` map (or the simulate workdir's ground truth), the FSC of map.mrc
against it with its 0.5 resolution.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
from absl import logging

from cryojax_denoise import distributed
from cryojax_denoise.errors import InputError
from experiments import _refine_poses


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.input = ""               # RELION STAR file with poses, CTF and rlnImageName
  c.simulate_dir = ""        # or: a `simulate` workdir (its particles.star)
  c.stack = ""               # optional MRC stack replacing rlnImageName (same rows and order), e.g. clean.mrcs;
                             # relative paths are taken from the STAR file's folder
  c.reference = ""           # optional ground-truth map for FSC-vs-reference (0.5), resampled to the particles' grid;
                             # default for simulate_dir: the map it projected
  c.reference_pixel_size = 0.0  # overrides the reference header's voxel size (Å); 0 = header
  c.pixel_size = 0.0         # overrides the STAR/stack pixel size (Å); 0 = from the file
  c.method = ""              # optional denoiser applied to the particles first (cryojax_denoise.denoisers.names())
  c.params = ""              # its parameters, "key=value,key=value"
  c.checkpoint = ""          # training workdir for gan / autoencoder
  c.noise_std = 0.0          # noise std for the denoiser in the images' units; 0 = estimate per image
  c.ctf = True               # correct the CTF when the STAR file has rlnDefocusU (False: treat as CTF-free)
  c.n_particles = 0          # use the first N particles only; 0 = all
  c.seed = 0                 # half-map split
  c.mask = False             # FSC with a soft spherical mask (overstates low-pass-filtered maps; see fsc.py)
  c.pad = 2                  # Fourier oversampling of the box
  c.reg = 1e-3               # Wiener regulariser, a fraction of the mean Σ CTF²
  c.batch_size = 0           # particles per step; 0 = automatic
  distributed.add_config(c)  # distributed, coordinator_address, num_processes, process_id: shares summed
  _refine_poses.add_config(c)  # poses=known|refine and the refine keys (experiments/_refine_poses.py)
  return c


def _star_path(config) -> str:
  if bool(config.input) == bool(config.simulate_dir):
    raise InputError("input: give exactly one of --config.input=PARTICLES.star or --config.simulate_dir=DIR")
  if config.simulate_dir:
    if not os.path.isdir(config.simulate_dir):
      raise InputError(f"{config.simulate_dir}: simulate workdir not found")
    path = os.path.join(config.simulate_dir, "particles.star")
    if not os.path.exists(path):
      raise InputError(f"{path}: not found (simulate_dir must be a workdir written by the simulate experiment)")
    return path
  from cryojax_denoise import io

  io.check_input_file(config.input, "STAR file")
  return config.input


class _Images:
  """The particle images of a STAR file (or of a replacement stack), read a batch at a time."""

  def __init__(self, star, stack: str | None, n: int):
    from cryojax_denoise import io

    self.star, self.n = star, n
    self.stack = io.read_stack(stack, mmap=True) if stack else None
    first = self[0:1]
    self.shape = (n, *first.shape[1:])
    if first.shape[1] != first.shape[2]:
      where = stack or star.path
      raise InputError(f"{where}: images are {first.shape[1]}x{first.shape[2]}, expected square images")

  def __len__(self):
    return self.n

  def __getitem__(self, rows: slice) -> np.ndarray:
    from cryojax_denoise import io

    rows = np.arange(self.n)[rows]
    if self.stack is not None:
      return np.asarray(self.stack.data[rows], np.float32)
    return io.star_images(self.star, rows)


def _open(config):
  """(star, images, particles, pixel size) after every input check."""
  from cryojax_denoise import io

  path = _star_path(config)
  stack = config.stack
  if stack and not os.path.isabs(stack):
    stack = os.path.join(os.path.dirname(os.path.abspath(path)), stack)
  poses = () if config.poses == "refine" else ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
  star = io.read_star(path, required=("rlnImageName",) + poses, check_files=not stack)
  n = len(star) if config.n_particles <= 0 else min(int(config.n_particles), len(star))
  if n < 2:
    raise InputError(f"{path}: half maps need at least 2 particles, found {n}")
  if stack:
    io.check_input_file(stack, "MRC stack")
    count = len(io.read_stack(stack, mmap=True, check_finite=False))
    if count < n:
      raise InputError(f"{stack}: holds {count} images but {path} has {n} particles")
  images = _Images(star, stack or None, n)
  if config.pixel_size > 0:
    pixel_size = float(config.pixel_size)
  else:
    try:
      pixel_size = star.pixel_size()
    except InputError:
      pixel_size = io.read_pixel_size(stack or star.stack_paths[0])
    if pixel_size <= 0:
      raise InputError(f"{path}: no pixel size in the STAR file or stack header; pass --config.pixel_size=Å")
  particles = star.particles.iloc[:n].reset_index(drop=True)
  return star, images, particles, pixel_size


def _reference(config, box: int, pixel_size: float):
  """The ground-truth map (D, D, D) or None: `reference=`, else a simulate workdir's source map
  (skipped with a warning when it cannot be rebuilt on the particles' grid)."""
  from cryojax_denoise import io

  if config.reference:
    given = config.reference_pixel_size
    if not given and os.path.isfile(config.reference) and io.read_pixel_size(config.reference) <= 0:
      raise InputError(f"{config.reference}: header voxel size is 0; pass --config.reference_pixel_size=Å")
    vol, size = io.read_volume(config.reference, config.reference_pixel_size or None)
    if vol.shape[0] != box or abs(size - pixel_size) > 1e-3 * pixel_size:
      from cryojax_denoise.data.maps import resample_volume

      logging.info("reference %s: %d³ at %.4g Å resampled to the particles' %d³ at %.4g Å", config.reference,
                   vol.shape[0], size, box, pixel_size)
      vol = resample_volume(vol, size, pixel_size, box)[:box, :box, :box]
    return vol
  if not config.simulate_dir:
    return None
  try:
    vol, size = _simulated_truth(config.simulate_dir)
  except (InputError, OSError, KeyError, ValueError) as e:
    logging.warning("no ground truth for %s: %s", config.simulate_dir, e)
    return None
  if vol.shape[0] != box or abs(size - pixel_size) > 1e-3 * pixel_size:
    logging.warning("no ground truth: the simulated map is %d³ at %.4g Å but the particles are %d² at %.4g Å",
                    vol.shape[0], size, box, pixel_size)
    return None
  return vol


def _simulated_truth(workdir: str):
  """(map, pixel size) that a `simulate` workdir projected, rebuilt from its config.json."""
  from cryojax_denoise.data.maps import load_source

  with open(os.path.join(workdir, "config.json")) as f:
    cfg = json.load(f)
  keys = ("volume", "structure", "pixel_size", "image_size", "seed")
  kwargs = {k: cfg[k] for k in keys if cfg.get(k) not in (None, "", 0, 0.0)}
  source = load_source(**kwargs)
  return np.asarray(source.volume, np.float32), float(source.pixel_size)


def _denoiser(config):
  """The configured denoiser (`pipeline.make_denoiser`): params given by value, no SURE here."""
  from cryojax_denoise.pipeline import Settings, make_denoiser

  return make_denoiser(Settings(method=config.method, params=config.params, checkpoint=config.checkpoint,
                                noise_std=config.noise_std or None, sure_images=0))


def _transform(config, images):
  """The denoiser as a batch transform in the images' units, or None."""
  if not config.method:
    return None
  from cryojax_denoise import denoise_stack

  denoiser = _denoiser(config)
  sample = images[0:min(len(images), 1024)]
  mean, scale = denoise_stack.mean_and_scale(float(sample.mean()), float(sample.std()), "std", config.input)
  std = config.noise_std / scale if config.noise_std > 0 else None

  def fn(batch):
    out = denoiser((batch - np.float32(mean)) / np.float32(scale), std)
    return np.asarray(out, np.float32) * np.float32(scale) + np.float32(mean)

  return fn


def validate(config) -> None:
  if config.pad < 1 or config.pad > 4:
    raise InputError(f"pad: must be 1 .. 4, got {config.pad}")
  if config.reg < 0:
    raise InputError(f"reg: must be >= 0, got {config.reg}")
  if config.batch_size < 0 or config.n_particles < 0 or config.noise_std < 0:
    raise InputError("batch_size, n_particles and noise_std must be >= 0")
  distributed.initialize(config)  # joins the job before the checks below start JAX
  star, images, particles, pixel_size = _open(config)
  from cryojax_denoise.reconstruction import fourier

  _refine_poses.validate(config, images.shape[-1], pixel_size)
  if config.poses == "known":
    fourier.particle_params(particles, star.optics, pixel_size, None if config.ctf else False)
  _reference(config, images.shape[-1], pixel_size)
  if config.method:
    _denoiser(config)


def run(config, workdir: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from cryojax_denoise import io
  from cryojax_denoise.reconstruction import fourier, fsc

  distributed.initialize(config)
  star, images, particles, pixel_size = _open(config)
  box = images.shape[-1]
  reference = _reference(config, box, pixel_size)
  if config.poses == "refine":
    return _refine_poses.run(config, workdir, star, images, particles, pixel_size, reference)
  transform = _transform(config, images)
  logging.info("reconstruct %d particles of %d² at %.4g Å/px from %s%s", len(images), box, pixel_size, star.path,
               f", denoised with {config.method}" if config.method else "")
  maps = fourier.half_maps(images, particles, star.optics, pixel_size, int(config.seed),
                           ctf=None if config.ctf else False, pad=int(config.pad), reg=float(config.reg),
                           batch_size=int(config.batch_size) or None, transform=transform, progress="reconstruct")
  if not distributed.is_main():  # every process holds the same maps; process 0 writes them
    return
  for name, vol in (("half1.mrc", maps.half1), ("half2.mrc", maps.half2), ("map.mrc", maps.full)):
    io.write_volume(os.path.join(workdir, name), vol, pixel_size)

  freq = fsc.shell_frequencies(box, pixel_size)
  curve = fsc.fsc_curve(maps.half1, maps.half2, mask=config.mask)
  result = {"n_particles": len(images), "n_half": [int((maps.split == 0).sum()), int((maps.split == 1).sum())],
            "box": box, "pixel_size": pixel_size, "method": config.method or None,
            "mask": "soft sphere" if config.mask else "none",
            "freq_per_A": [float(v) for v in freq], "fsc": [float(v) for v in curve],
            "resolution_A": fsc.fsc_resolution(curve, pixel_size, 0.143)}
  if reference is not None:
    ref_curve = fsc.fsc_curve(maps.full, reference, mask=config.mask)
    result["fsc_reference"] = [float(v) for v in ref_curve]
    result["reference_resolution_A"] = fsc.fsc_resolution(ref_curve, pixel_size, 0.5)
  io.atomic_write_text(os.path.join(workdir, "fsc.json"), json.dumps(result, indent=2) + "\n")

  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(freq, curve, label=f"half maps (0.143: {result['resolution_A']:.2f} Å)")
  ax.axhline(0.143, color="gray", ls=":", lw=1)
  if reference is not None:
    ax.plot(freq, ref_curve, label=f"map vs reference (0.5: {result['reference_resolution_A']:.2f} Å)")
    ax.axhline(0.5, color="gray", ls="--", lw=1)
  ax.set_xlabel("spatial frequency (1/Å)")
  ax.set_ylabel("FSC")
  ax.set_ylim(-0.1, 1.05)
  ax.set_title(f"{len(images)} particles" + (f", denoised with {config.method}" if config.method else ""))
  ax.legend()
  fig.tight_layout()
  with io.atomic_path(os.path.join(workdir, "fsc.png")) as tmp:
    fig.savefig(tmp, dpi=120, format="png")
  plt.close(fig)
  logging.info("half-map FSC 0.143: %.2f Å%s; wrote half1.mrc, half2.mrc, map.mrc, fsc.json, fsc.png in %s",
               result["resolution_A"],
               f", vs reference FSC 0.5: {result['reference_resolution_A']:.2f} Å" if reference is not None else "",
               workdir)
