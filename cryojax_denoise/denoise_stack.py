"""Denoising a particle set (an MRC stack or a RELION STAR file) batch by batch, and the projections
of a map at the rows' poses that `make_pairs` writes as clean targets.

The streaming loop (reading, checks, atomic writing) is `cryojax_denoise.streaming`; its names are
re-exported here (`denoise_stack.open_particles`, `stream`, ...).

    table = open_particles("particles.star")
    outputs = output_paths(table, "out/denoised.mrcs")
    denoise(table, denoiser, outputs, batch_size=64)   # writes out/denoised.mrcs + .star
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cryojax_denoise import io
from cryojax_denoise.errors import InputError
from cryojax_denoise.streaming import (  # noqa: F401  (re-exported: callers use denoise_stack.X)
    ParticleTable, is_star_path, open_particles, read_batch, read_rows, sample_stats, stream)


def fit_scale_offset(model, images):
  """Per-image least-squares a·model + b ≈ images for (B, H, W) arrays; returns (a·model + b, a, b).

  Puts projections in the particles' units (the clean targets of `make_pairs`). A constant
  model image gets a = 0 and b = the image mean.
  """
  import jax.numpy as jnp

  p = jnp.asarray(model, jnp.float32)
  x = jnp.asarray(images, jnp.float32)
  pc = p - p.mean(axis=(-2, -1), keepdims=True)
  xc = x - x.mean(axis=(-2, -1), keepdims=True)
  var = (pc * pc).sum(axis=(-2, -1))
  a = jnp.where(var > 0, (pc * xc).sum(axis=(-2, -1)) / jnp.where(var > 0, var, 1.0), 0.0)
  b = x.mean(axis=(-2, -1)) - a * p.mean(axis=(-2, -1))
  return a[:, None, None] * p + b[:, None, None], a, b


class RowProjector:
  """Projections of one map at the poses and CTFs of RELION rows, for streaming `make_pairs`.

  Like `data.projector.project`, but the map is resampled to each optics group's pixel size and
  its jitted projector built once (lazily), not per call, so batch after batch of a 10⁶-particle
  set reuses one compiled function; the CTF is applied when `ctf` (the table has rlnDefocusU).
  `__call__(particles)` -> (B, H, W) float32 in cryojax's units
  (unstandardised); every row of a batch goes through each group's projector present in it
  (static shapes), and each row keeps its own group's image.
  """

  def __init__(self, source, optics, image_size: int, ctf: bool = True):
    self.source, self.optics, self.image_size, self.ctf = source, optics, int(image_size), bool(ctf)
    self._projectors: dict = {}

  def _projector(self, group):
    from cryojax_denoise.data.projector import group_projector

    if group not in self._projectors:
      self._projectors[group] = group_projector(self.source, self.optics, group, self.image_size, self.ctf)
    return self._projectors[group]

  def __call__(self, particles) -> np.ndarray:
    from cryojax_denoise.data.relion import params_from_table, particle_groups

    groups = particle_groups(particles, self.optics)
    out = np.empty((len(particles), self.image_size, self.image_size), np.float32)
    for group in np.unique(groups):
      projector, pixel_size = self._projector(group)
      images = np.asarray(projector(params_from_table(particles, pixel_size)))
      mask = groups == group
      out[mask] = images[mask]
    return out


# ---------------------------------------------------------------------------- denoising


@dataclass
class Outputs:
  """Where denoising writes: the stack, and for STAR input a STAR file beside it."""

  stack: str
  star: str | None = None


def output_paths(table: ParticleTable, output: str | None, default_dir: str = ".") -> Outputs:
  """Resolves `output` (a .mrcs/.mrc stack, or a .star file for STAR input; default
  `default_dir/denoised.mrcs`) and refuses any output that is one of the input files."""
  output = output or os.path.join(default_dir, "denoised.mrcs")
  stem, ext = os.path.splitext(output)
  if table.is_star:
    if ext.lower() == ".star":
      outputs = Outputs(stem + ".mrcs", output)
    elif ext.lower() in (".mrcs", ".mrc"):
      outputs = Outputs(output, stem + ".star")
    else:
      raise InputError(f"{output}: output must end in .mrcs (the stack) or .star for STAR input")
  else:
    if ext.lower() not in (".mrcs", ".mrc"):
      raise InputError(f"{output}: output must be an MRC stack path ending in .mrcs or .mrc")
    outputs = Outputs(output)
  for path in (outputs.stack, outputs.star):
    if path:
      io.check_not_input(path, table.source, *table.stacks)
  if outputs.star and os.path.abspath(outputs.star) == os.path.abspath(outputs.stack):
    raise InputError(f"{output}: the output stack and STAR file would be the same file")
  return outputs


def denoise_batches(denoiser: Callable, noise_std: float | None = None, mean: float = 0.0,
                    scale: float = 1.0, ctf_of: Callable | None = None) -> Callable[[np.ndarray, np.ndarray], object]:
  """Wraps `denoiser(images, noise_std)` as a `stream` function working in the input's units.

  Images are mapped to (x - mean) / scale for the denoiser (noise_std divided by `scale`) and
  its output mapped back, so the written stack has the input's offset and scale. With `ctf_of`
  (rows -> (n, H, W) CTFs), the denoiser is called as `denoiser(images, noise_std, ctf)`.
  """
  std = None if noise_std is None else float(noise_std) / scale

  def fn(rows, images):
    extra = () if ctf_of is None else (ctf_of(rows),)
    if mean == 0.0 and scale == 1.0:
      return denoiser(images, std, *extra)
    out = denoiser((images - np.float32(mean)) / np.float32(scale), std, *extra)
    return out * np.float32(scale) + np.float32(mean)  # stays a (lazy) JAX array when it is one

  return fn


def denoise(table: ParticleTable, denoiser: Callable, outputs: Outputs, batch_size: int = 64,
            noise_std: float | None = None, normalize: str = "mean",
            reader: io.ImageReader | None = None, ctf_of: Callable | None = None) -> Outputs:
  """Denoises every image of `table` into `outputs.stack` (same order, shape, pixel size, units);
  for STAR input also writes `outputs.star`: the same rows and optics block, `rlnImageName`
  pointing at the new stack.

  `normalize`: "none" passes the input as is, "mean" subtracts the stack mean (estimated from
  up to 1024 images) and adds it back, "std" also divides by the stack's standard deviation
  (and scales `noise_std`), for denoisers tuned on standardised images. `ctf_of` (rows -> CTFs,
  see `ctf_rows`) passes each batch's CTFs to the denoiser as a third argument.
  """
  reader = reader or io.ImageReader()
  mean, scale = normalization(table, reader, normalize)
  fn = denoise_batches(denoiser, noise_std, mean, scale, ctf_of)
  particles = None
  if outputs.star:
    particles = star_for_stack(table, outputs)
  stream(table, fn, outputs.stack, batch_size=batch_size, desc="denoise", reader=reader)
  if outputs.star:
    write_output_star(table, outputs, particles)
  return outputs


def write_output_star(table: ParticleTable, outputs: Outputs, particles) -> None:
  """Writes `outputs.star`: `particles` (see `star_for_stack`) under the input's optics block (none for
  RELION 3.0 input). On any failure removes `outputs.stack`: no stack is left without its STAR file."""
  try:
    io.write_star(outputs.star, None if table.star.is_relion30 else table.star.optics, particles)
  except BaseException:
    os.remove(outputs.stack)
    raise


def normalization(table: ParticleTable, reader: io.ImageReader, normalize: str) -> tuple[float, float]:
  """(mean, scale) that `denoise` removes before denoising (see its `normalize`), from the stack's
  `sample_stats`."""
  if normalize not in ("none", "mean", "std"):
    raise InputError(f"normalize: {normalize!r} is not one of none, mean, std")
  if normalize == "none":
    return 0.0, 1.0
  return mean_and_scale(*sample_stats(table, reader), normalize, table.source)


def mean_and_scale(mean: float, std: float, normalize: str, where: str) -> tuple[float, float]:
  """The one normalisation rule, (mean, scale) with images mapped to (x - mean) / scale: "none" (0, 1),
  "mean" (mean, 1), "std" (mean, std). A constant stack (std 0) under "std" is an InputError rather than
  a silent scale of 1: its images carry no signal, and the σ given in the input's units would no
  longer match the denoiser's."""
  if normalize == "none":
    return 0.0, 1.0
  if normalize == "mean":
    return float(mean), 1.0
  if normalize != "std":
    raise InputError(f"normalize: {normalize!r} is not one of none, mean, std")
  if not std > 0:
    raise InputError(f"{where}: images are constant, cannot standardise (normalize=std)")
  return float(mean), float(std)


def ctf_rows(table: ParticleTable) -> Callable[[np.ndarray], np.ndarray] | None:
  """rows -> (n, H, W) RELION CTFs of those STAR rows on the FFT grid (`data.ctf.ctf_grid`), or
  None when the input has no CTF metadata (a bare MRC stack, or no rlnDefocusU column)."""
  from cryojax_denoise.data.ctf import ctf_grid, has_ctf

  if not table.is_star or not has_ctf(table.star.particles):
    return None
  particles, optics = table.star.particles, None if table.star.is_relion30 else table.star.optics
  return lambda rows: ctf_grid(particles.iloc[np.asarray(rows)], optics, table.shape[0], table.pixel_size)


def star_for_stack(table: ParticleTable, outputs: Outputs):
  """The particles block of `table.star` with `rlnImageName` = `i@stack` (relative to the STAR
  file's folder) for row i of the new stack; every other column unchanged."""
  star_dir = os.path.dirname(os.path.abspath(outputs.star))
  name = os.path.relpath(os.path.abspath(outputs.stack), star_dir)
  particles = table.star.particles.copy()
  particles["rlnImageName"] = [f"{i:06d}@{name}" for i in range(1, len(table) + 1)]
  return particles
