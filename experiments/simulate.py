"""simulate: projections of a 3D map at random poses with CTF and white noise at `snr`.

    python launch.py --experiment=simulate --workdir=W --config.n_images=16 --config.image_size=64

Writes W/clean.mrcs, W/noisy.mrcs (pixel size in the headers) and W/particles.star (RELION 3.1:
optics block, poses, origins, CTF; rlnImageName -> noisy.mrcs). The map is the built-in phantom
unless `volume` (an MRC map) or `structure` (a PDB/mmCIF model) is given. Streamed to disk in batches
(`simulate.write_simulation`): 10,000 particles of 400² take the memory of one batch, not 12.8 GB.
"""

from __future__ import annotations

import math

import ml_collections
from absl import logging

from cryojax_denoise import io
from cryojax_denoise.data import simulate
from cryojax_denoise.data.maps import load_source
from cryojax_denoise.errors import InputError


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.n_images = 256
  config.image_size = 128
  config.snr = 0.1
  config.seed = 0
  config.ctf = True
  config.defocus_range_A = simulate.DEFOCUS_RANGE_A  # mean defocus drawn uniformly in this range, Å
  config.astigmatism_A = simulate.ASTIGMATISM_A  # DefocusU - DefocusV drawn uniformly in [0, this], Å
  config.max_shift_A = 0.0  # in-plane shifts drawn uniformly in [-max, max] per axis, Å
  config.volume = ""  # MRC map; '' = built-in phantom
  config.structure = ""  # PDB/mmCIF model rendered with cryojax
  config.pixel_size = 0.0  # Å; 0 = from the MRC header, or sized to fill ~60% of the box
  config.batch_size = 64  # images projected per jitted call
  config.noise_psd = "flat"  # flat | exp:ratio=4,k0=0.08 | plateau:… | issue:relion31 | FILE.txt/.npy | from:STACK
  return config


def validate(config) -> None:
  """Checks values and input files before anything is written."""
  if int(config.n_images) < 1:
    raise InputError(f"n_images: must be at least 1, got {config.n_images}")
  if int(config.image_size) < 8:
    raise InputError(f"image_size: must be at least 8, got {config.image_size}")
  snr = float(config.snr)
  if not (math.isfinite(snr) and snr > 0):
    raise InputError(f"snr: must be a positive number, got {config.snr}")
  if not (math.isfinite(float(config.pixel_size)) and float(config.pixel_size) >= 0):
    raise InputError(f"pixel_size: must be >= 0 Å (0 = default), got {config.pixel_size}")
  if not (math.isfinite(float(config.max_shift_A)) and float(config.max_shift_A) >= 0):
    raise InputError(f"max_shift_A: must be >= 0 Å, got {config.max_shift_A}")
  if int(config.batch_size) < 1:
    raise InputError(f"batch_size: must be at least 1, got {config.batch_size}")
  try:
    lo, hi = (float(v) for v in config.defocus_range_A)
  except (TypeError, ValueError):
    raise InputError(f"defocus_range_A: expected (min, max) in Å, got {config.defocus_range_A}") from None
  if config.ctf and not (0 < lo <= hi and math.isfinite(hi)):
    raise InputError(f"defocus_range_A: need 0 < min <= max Å, got {tuple(config.defocus_range_A)}")
  if config.volume and config.structure:
    raise InputError("give at most one of volume= (an MRC map) and structure= (a PDB/mmCIF model)")
  for key in ("volume", "structure"):
    if config[key]:
      io.check_input_file(config[key], f"{key} file")
  from cryojax_denoise.noise import spec as noise_spec
  noise_spec.resolve(config.get("noise_psd", "flat"))  # checks the spec (and reads a file) before writing


def run(config, workdir: str) -> None:
  source = load_source(volume=config.volume or None, structure=config.structure or None,
                                pixel_size=float(config.pixel_size) or None, image_size=int(config.image_size),
                                seed=int(config.seed))
  logging.info("map %s, %d^3 voxels at %.4g Å", source.name, source.volume.shape[0], source.pixel_size)
  out = simulate.write_simulation(
      workdir, source, int(config.n_images), int(config.image_size), float(config.snr), seed=int(config.seed),
      ctf=bool(config.ctf), defocus_range_A=tuple(config.defocus_range_A), max_shift_A=float(config.max_shift_A),
      astigmatism_A=float(config.astigmatism_A), batch_size=int(config.batch_size), log_progress=True,
      noise_psd=_noise_psd(config))
  logging.info("wrote %s: %d images %dx%d at %.4g Å/px, measured SNR %.4g (target %.4g)",
               ", ".join(sorted(out["paths"].values())), int(config.n_images), int(config.image_size),
               int(config.image_size), out["pixel_size"], out["measured_snr"], float(config.snr))


def _noise_psd(config):
  """The `noise_psd` spectrum (None: white), from `noise.spec.resolve`."""
  from cryojax_denoise.noise import spec as noise_spec
  return noise_spec.resolve(config.get("noise_psd", "flat"))
