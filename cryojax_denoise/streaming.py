"""Streaming a particle set (an MRC stack or a RELION STAR file) through a batched function.

Denoising 10⁵–10⁶ particles must not need the stack in memory: images are read a batch at a
time (`io.ImageReader` maps only what a batch needs), processed, and written with
`io.StackWriter`, so resident memory stays at a few batches whatever the stack size, and the
output appears only when complete. `denoise_stack` (denoising) and `make_pairs` (clean targets)
run on this loop.

    table = open_particles("particles.star")          # where each image lives, checked up front
    stream(table, fn, "out.mrcs", batch_size=64)      # fn(rows (n,), images (n, H, W)) -> (n, H, W)
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


def read_rows(table: ParticleTable, reader: io.ImageReader, rows: np.ndarray) -> np.ndarray:
  """Images of the given rows (n, H, W) float32, read in runs of consecutive rows."""
  rows = np.asarray(rows, np.int64)
  out = np.empty((len(rows), *table.shape), np.float32)
  breaks = np.flatnonzero(np.diff(rows) != 1) + 1
  for run in np.split(np.arange(len(rows)), breaks):
    if len(run):
      out[run] = read_batch(table, reader, int(rows[run[0]]), int(rows[run[-1]]) + 1)
  return out
