"""Streaming a particle set (an MRC stack or a RELION STAR file) through a batched function.

Denoising 10⁵–10⁶ particles must not need the stack in memory: images are read a batch at a
time (`io.ImageReader` maps only what a batch needs), processed, and written with
`io.StackWriter`, so resident memory stays at a few batches whatever the stack size, and the
output appears only when complete. The same loop makes the clean targets of `make_pairs`.

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
from cryojax_denoise.progress import Progress


@dataclass
class ParticleTable:
  """Where each of N particle images lives, in output order.

  `stacks[stack_of[i]]` and `indices[i]` (0-based) locate image i; `star` is the parsed STAR
  file for STAR input (None for a plain stack). Images are (H, W) = `shape`, `pixel_size` in Å.
  """

  source: str
  stacks: list[str]
  stack_of: np.ndarray
  indices: np.ndarray
  shape: tuple[int, int]
  pixel_size: float
  star: io.ParticleStar | None = None

  def __len__(self) -> int:
    return len(self.indices)

  @property
  def is_star(self) -> bool:
    return self.star is not None


def is_star_path(path: str) -> bool:
  return str(path).lower().endswith(".star")


def open_particles(path: str, reader: io.ImageReader | None = None, square: bool = True,
                   required: tuple[str, ...] = ("rlnImageName",)) -> ParticleTable:
  """Opens an MRC stack or a RELION STAR file for streaming; checks every referenced stack.

  Raises `InputError` (naming the file) for a missing or unreadable file, a 3D volume, an empty
  stack, non-square images (when `square`), a STAR file missing `required` columns, STAR rows
  pointing at missing stacks or out-of-range indices, and stacks of different image sizes.
  NaN/Inf are found while streaming (`read_batch`), so the data are read only once.
  """
  reader = reader or io.ImageReader()
  if not path:
    raise InputError("input: no input file given (an MRC stack or a RELION STAR file)")
  if is_star_path(path):
    return _open_star(path, reader, square, required)
  stack = io.read_stack(path, mmap=True, check_finite=False)  # shape, volume and emptiness checks
  n, h, w = stack.data.shape
  pixel_size = stack.pixel_size
  del stack
  if square:
    io.check_square(path, (h, w))
  reader.layout(path)
  return ParticleTable(path, [os.path.abspath(path)], np.zeros(n, np.int64), np.arange(n, dtype=np.int64),
                       (h, w), pixel_size)


def _open_star(path: str, reader: io.ImageReader, square: bool, required: tuple[str, ...]) -> ParticleTable:
  star = io.read_star(path, required=tuple(dict.fromkeys(("rlnImageName", *required))), check_files=False)
  stacks: list[str] = []
  ids: dict[str, int] = {}
  stack_of = np.empty(len(star), np.int64)
  for row, stack in enumerate(star.stack_paths):
    if stack not in ids:
      if not os.path.exists(stack):
        raise InputError(f"{path}: row {row + 1}: image stack {stack} not found")
      ids[stack] = len(stacks)
      stacks.append(stack)
    stack_of[row] = ids[stack]
  shape, counts = None, np.empty(len(stacks), np.int64)
  for k, stack in enumerate(stacks):
    _, _, (n, h, w) = reader.layout(stack)  # opens and checks the file once (10⁵ stacks are common)
    if n == 0 or h == 0 or w == 0:
      raise InputError(f"{stack}: empty stack (shape {(n, h, w)})")
    if shape is None:
      shape = (h, w)
      if square:
        io.check_square(stack, shape)
    elif (h, w) != shape:
      raise InputError(f"{stack}: images are {h}x{w}, but {stacks[0]} has {shape[0]}x{shape[1]}; "
                       f"all stacks of {path} must have one image size")
    counts[k] = n
  bad = np.flatnonzero((star.indices < 0) | (star.indices >= counts[stack_of]))
  if len(bad):
    r = int(bad[0])
    stack = stacks[stack_of[r]]
    raise InputError(f"{path}: row {r + 1}: image index {star.indices[r] + 1} out of range for {stack} "
                     f"({counts[stack_of[r]]} images)")
  try:
    pixel_size = star.pixel_size()
  except InputError:
    pixel_size = io.read_pixel_size(stacks[0])
  return ParticleTable(path, stacks, stack_of, star.indices.astype(np.int64), shape, pixel_size, star)


def read_batch(table: ParticleTable, reader: io.ImageReader, start: int, stop: int) -> np.ndarray:
  """Images start .. stop-1 of `table` as (n, H, W) float32; NaN/Inf raise `InputError`."""
  out = np.empty((stop - start, *table.shape), np.float32)
  stack_of = table.stack_of[start:stop]
  indices = table.indices[start:stop]
  for k in np.unique(stack_of):
    rows = np.flatnonzero(stack_of == k)
    out[rows] = reader.read(table.stacks[k], indices[rows])
  finite = np.isfinite(out.reshape(len(out), -1)).all(axis=1)
  if not finite.all():
    j = int(np.flatnonzero(~finite)[0])
    stack = table.stacks[stack_of[j]]
    where = f"{table.source}: row {start + j + 1} ({indices[j] + 1}@{stack})" if table.is_star else \
        f"{table.source}: image {start + j + 1}"
    raise InputError(f"{where} contains NaN or Inf values")
  return out


def sample_stats(table: ParticleTable, reader: io.ImageReader, max_images: int = 1024) -> tuple[float, float]:
  """Mean and standard deviation of the stack from up to `max_images` evenly spaced images.

  Bounded work and memory for any stack size; deterministic (no random sampling).
  """
  n = len(table)
  rows = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(np.int64))
  total, total_sq, count = 0.0, 0.0, 0
  for r in rows:
    x = read_batch(table, reader, int(r), int(r) + 1).astype(np.float64)
    total += float(x.sum())
    total_sq += float(np.square(x).sum())
    count += x.size
  mean = total / count
  return mean, float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))


def stream(table: ParticleTable, fn: Callable[[np.ndarray, np.ndarray], object], output: str,
           batch_size: int = 64, desc: str = "images", pad: bool = True,
           reader: io.ImageReader | None = None) -> None:
  """Writes `fn(rows, images)` for every batch of `table` to the MRC stack `output`, in order.

  `fn` gets the row numbers (n,) and images (n, H, W) float32 and returns (n, H, W) (a JAX array
  is fine: the next batch is read while it computes). With `pad`, the last batch is filled up to
  `batch_size` by repeating its images, so a jitted `fn` sees one shape and compiles once.
  The output is atomic: on any error nothing is left at `output`.
  """
  reader = reader or io.ImageReader()
  n = len(table)
  batch_size = max(1, min(int(batch_size), n))
  bar = Progress(n, desc, unit="img")
  with io.StackWriter(output, n, table.shape, table.pixel_size) as writer:
    pending = None
    for start in range(0, n, batch_size):
      stop = min(start + batch_size, n)
      images = read_batch(table, reader, start, stop)
      rows = np.arange(start, stop)
      if pad and stop - start < batch_size:
        fill = np.resize(np.arange(stop - start), batch_size)
        images, rows = images[fill], rows[fill]
      result = fn(rows, images)  # dispatched; finished below while the next batch is read
      if pending is not None:
        _write(writer, *pending, bar)
      pending = (start, stop, result)
    if pending is not None:
      _write(writer, *pending, bar)


def _write(writer: io.StackWriter, start: int, stop: int, result, bar: Progress) -> None:
  out = np.asarray(result, dtype=np.float32)[:stop - start]
  if out.shape != (stop - start, *writer.shape):
    raise RuntimeError(f"expected output images {(stop - start, *writer.shape)}, got {out.shape}")
  if not np.isfinite(out).all():
    raise RuntimeError(f"non-finite output values for images {start + 1}..{stop}")
  writer.write(start, out)
  bar.update(stop - start)


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

  Like `data.simulate.project`, but the map is resampled to each optics group's pixel size and
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
    from cryojax_denoise.data.relion import group_projector

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
    try:
      io.write_star(outputs.star, None if table.star.is_relion30 else table.star.optics, particles)
    except BaseException:
      os.remove(outputs.stack)  # no stack without its STAR file
      raise
  return outputs


def normalization(table: ParticleTable, reader: io.ImageReader, normalize: str) -> tuple[float, float]:
  """(mean, scale) that `denoise` removes before denoising (see its `normalize`)."""
  if normalize not in ("none", "mean", "std"):
    raise InputError(f"normalize: {normalize!r} is not one of none, mean, std")
  mean, scale = 0.0, 1.0
  if normalize != "none":
    mean, std = sample_stats(table, reader)
    if normalize == "std":
      if std <= 0:
        raise InputError(f"{table.source}: images are constant, cannot standardise (normalize=std)")
      scale = std
  return mean, scale


def ctf_rows(table: ParticleTable) -> Callable[[np.ndarray], np.ndarray] | None:
  """rows -> (n, H, W) RELION CTFs of those STAR rows on the FFT grid (`data.ctf.ctf_grid`), or
  None when the input has no CTF metadata (a bare MRC stack, or no rlnDefocusU column)."""
  from cryojax_denoise.data.ctf import ctf_grid, has_ctf

  if not table.is_star or not has_ctf(table.star.particles):
    return None
  particles, optics = table.star.particles, None if table.star.is_relion30 else table.star.optics
  return lambda rows: ctf_grid(particles.iloc[np.asarray(rows)], optics, table.shape[0], table.pixel_size)


def read_rows(table: ParticleTable, reader: io.ImageReader, rows: np.ndarray) -> np.ndarray:
  """Images of the given rows (n, H, W) float32, read in runs of consecutive rows."""
  rows = np.asarray(rows, np.int64)
  out = np.empty((len(rows), *table.shape), np.float32)
  breaks = np.flatnonzero(np.diff(rows) != 1) + 1
  for run in np.split(np.arange(len(rows)), breaks):
    if len(run):
      out[run] = read_batch(table, reader, int(rows[run[0]]), int(rows[run[-1]]) + 1)
  return out


def star_for_stack(table: ParticleTable, outputs: Outputs):
  """The particles block of `table.star` with `rlnImageName` = `i@stack` (relative to the STAR
  file's folder) for row i of the new stack; every other column unchanged."""
  star_dir = os.path.dirname(os.path.abspath(outputs.star))
  name = os.path.relpath(os.path.abspath(outputs.stack), star_dir)
  particles = table.star.particles.copy()
  particles["rlnImageName"] = [f"{i:06d}@{name}" for i in range(1, len(table) + 1)]
  return particles
