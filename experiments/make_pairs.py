"""Clean targets for real particles: the map projected at each particle's pose with its CTF.

    python launch.py --experiment=make_pairs --config.input=particles.star \\
        --config.volume=map.mrc --config.pixel_size=1.06

For every row of the STAR file (in order): the projection of `volume` at rlnAngleRot/Tilt/Psi
(degrees), shifted by rlnOriginX/YAngst, with the particle's CTF (defocus U/V/angle, voltage, Cs,
amplitude contrast from its optics group), then fitted to the particle image by least squares
(per-particle scale and offset, `fit=True`) so it is in the particle's units. The map is
resampled to the particles' pixel size (per optics group) when the two differ. Writes
WORKDIR/clean.mrcs (or `output=`), streamed in batches; with `noisy_copy=True` also noisy.mrcs
beside it, the particle images in the same order, so (noisy.mrcs, clean.mrcs) train the learned
denoisers on real data (`train_gan --config.noisy=... --config.clean=...`).

Over several processes (`--config.distributed=True`, the keys of `cryojax_denoise.distributed`), each
process projects a contiguous share of the rows into its part, and process 0 assembles the stacks in
STAR order after a barrier (as `denoise` does); a rerun after a crash redoes only missing parts.
"""

from __future__ import annotations

import os

from types import SimpleNamespace

import ml_collections
from absl import logging

from cryojax_denoise import distributed, parts
from cryojax_denoise.errors import InputError

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
PART_KEYS = ("volume", "pixel_size", "batch_size", "fit")  # what a part's projections depend on


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.input = ""         # RELION STAR file of the particles (poses, CTF, rlnImageName)
  c.volume = ""        # the 3D map (MRC) to project, e.g. the refined reconstruction
  c.pixel_size = 0.0   # voxel size of the map in Å; 0 = from its header
  c.output = ""        # default WORKDIR/clean.mrcs
  c.batch_size = 64    # particles per projection batch
  c.fit = True         # least-squares scale + offset of each projection to its particle
  c.noisy_copy = False  # also write WORKDIR/noisy.mrcs: the particles in STAR order (aligned training pairs)
  distributed.add_config(c)  # distributed, coordinator_address, num_processes, process_id: shares of rows
  return c


def validate(config) -> None:
  from cryojax_denoise import io

  distributed.initialize(config)  # joins the job before the checks below start JAX
  if not config.input:
    raise InputError("input: give --config.input=PARTICLES.star")
  if not config.volume:
    raise InputError("volume: give --config.volume=MAP.mrc (and --config.pixel_size=Å if its header lacks it)")
  io.check_input_file(config.input, "STAR file")
  io.check_input_file(config.volume, "MRC map file")
  if config.batch_size < 1:
    raise InputError(f"batch_size: must be at least 1, got {config.batch_size}")
  io.read_volume(config.volume, config.pixel_size or None)  # a 3D map, finite, with a voxel size
  if config.output:
    io.check_not_input(config.output, config.input, config.volume)


def run(config, workdir: str) -> None:
  from cryojax_denoise import denoise_stack, io

  distributed.initialize(config)
  reader = io.ImageReader()
  table = denoise_stack.open_particles(config.input, reader, required=POSE_COLUMNS)
  if not table.is_star:
    raise InputError(f"{config.input}: expected a RELION STAR file (poses and CTF per particle)")
  output = config.output or os.path.join(workdir, "clean.mrcs")
  io.check_not_input(output, config.input, config.volume, *table.stacks)
  if config.noisy_copy:
    io.check_not_input(os.path.join(os.path.dirname(os.path.abspath(output)), "noisy.mrcs"), *table.stacks)
  from cryojax_denoise.data.maps import load_source

  size = table.shape[0]
  source = load_source(volume=config.volume, pixel_size=config.pixel_size or None, image_size=size)
  particles = table.star.particles
  project = denoise_stack.RowProjector(source, table.star.optics, size, ctf="rlnDefocusU" in particles.columns)
  logging.info("make_pairs: %d particles of %dx%d (%.4g Å/px) from %s, map %s (%.4g Å/px) -> %s", len(table),
               size, size, table.pixel_size, config.input, config.volume, source.pixel_size, output)

  def clean_targets(rows, images):
    projections = project(particles.iloc[rows])
    if not config.fit:
      return projections
    return denoise_stack.fit_scale_offset(projections, images)[0]

  def write(fn, path: str, desc: str) -> None:  # one process: a stream; several: parts, assembled on 0
    if distributed.process()[1] == 1:
      denoise_stack.stream(table, fn, path, batch_size=config.batch_size, desc=desc, reader=reader)
    else:
      parts.by_parts(config, table, SimpleNamespace(stack=path, star=None), lambda: fn, reader, desc, PART_KEYS)

  write(clean_targets, output, "make_pairs")
  distributed.info("wrote %s", output)
  if config.noisy_copy:
    noisy = os.path.join(os.path.dirname(os.path.abspath(output)), "noisy.mrcs")
    write(lambda rows, images: images, noisy, "noisy copy")
    distributed.info("wrote %s (the particles in STAR order: train with noisy=%s clean=%s)", noisy, noisy, output)
