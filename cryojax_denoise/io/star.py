"""RELION STAR particle files: one reader (3.0 and 3.1 layouts, image paths resolved and checked)
and a lossless, atomic writer.

pandas and starfile are imported where STAR files are handled: a run on MRC stacks (and every
bad-input exit) starts faster without them.
"""

from __future__ import annotations

import os
import typing
import warnings
from dataclasses import dataclass

import numpy as np

from cryojax_denoise.errors import InputError
from cryojax_denoise.io.atomic import atomic_path
from cryojax_denoise.io.mrc import Stack, check_input_file, read_stack

if typing.TYPE_CHECKING:
  import pandas as pd


@dataclass
class ParticleStar:
  """A RELION STAR particle set: optics and particles tables, and where each image lives.

  `stack_paths[i]` (absolute) and `indices[i]` (0-based) locate particle i's image.
  RELION 3.0 files (no optics block) get a synthesised single optics group.
  """

  path: str
  optics: pd.DataFrame
  particles: pd.DataFrame
  stack_paths: list[str]
  indices: np.ndarray
  is_relion30: bool = False

  def __len__(self):
    return len(self.particles)

  def pixel_size(self) -> float:
    """Pixel size (Å) of the first optics group (`pixel_size_of`)."""
    return pixel_size_of(self.optics.iloc[0], self.path)

  def optics_for_particles(self) -> pd.DataFrame:
    """Optics columns broadcast to one row per particle (joined on rlnOpticsGroup)."""
    if "rlnOpticsGroup" in self.particles.columns and "rlnOpticsGroup" in self.optics.columns:
      merged = self.particles[["rlnOpticsGroup"]].merge(self.optics, on="rlnOpticsGroup", how="left")
      return merged
    import pandas as pd

    return pd.concat([self.optics.iloc[[0]]] * len(self.particles), ignore_index=True)


def read_star(path: str, required: tuple[str, ...] = ("rlnImageName",), check_files: bool = True) -> ParticleStar:
  """Reads a RELION 3.0/3.1 particle STAR file and resolves `rlnImageName` (`000001@stack.mrcs`)
  relative to the STAR file's folder (or, failing that, a folder above it: RELION's project folder),
  checking that every stack exists and every index is in range (`check_files`)."""
  check_input_file(path, "STAR file")
  import pandas as pd
  import starfile

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      blocks = starfile.read(path, always_dict=True)
  except Exception as e:  # noqa: BLE001
    raise InputError(f"{path}: not a readable STAR file ({type(e).__name__}: {e})") from None
  if not blocks:
    raise InputError(f"{path}: STAR file holds no data blocks")
  optics = blocks.get("optics")
  particles = blocks.get("particles")
  is30 = False
  if particles is None:
    tables = [v for v in blocks.values() if isinstance(v, pd.DataFrame)]
    if len(tables) == 1 and optics is None:
      particles, is30 = tables[0], True
    else:
      raise InputError(f"{path}: no data_particles block (found: {', '.join(blocks)})")
  if not isinstance(particles, pd.DataFrame) or len(particles) == 0:
    raise InputError(f"{path}: particles block is empty")
  if optics is None:
    is30 = True
    cols = [c for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnPixelSize",
                        "rlnDetectorPixelSize", "rlnMagnification", "rlnImagePixelSize") if c in particles.columns]
    optics = particles[cols].iloc[[0]].reset_index(drop=True)
    optics.insert(0, "rlnOpticsGroup", 1)
    if "rlnImagePixelSize" not in optics.columns:  # RELION 3.0: from the detector pixel and magnification
      try:
        optics["rlnImagePixelSize"] = pixel_size_of(optics.iloc[0], path)
      except InputError:
        pass  # no pixel size in the file: callers fall back to the stack header
  elif isinstance(optics, dict):
    optics = pd.DataFrame([optics])
  missing = [c for c in required if c not in particles.columns]
  if missing:
    raise InputError(f"{path}: missing required column(s) {', '.join(missing)}")
  base = os.path.dirname(os.path.abspath(path))
  stack_paths, indices, resolved = [], [], {}
  for row, name in enumerate(particles["rlnImageName"].astype(str)):
    if "@" in name:
      idx, stack = name.split("@", 1)
      try:
        i = int(idx) - 1
      except ValueError:
        raise InputError(f"{path}: row {row + 1}: bad rlnImageName {name!r}") from None
    else:
      i, stack = 0, name
    stack_paths.append(_resolve_stack(stack, base, resolved))
    indices.append(i)
  star = ParticleStar(path, optics.reset_index(drop=True), particles.reset_index(drop=True), stack_paths,
                      np.asarray(indices, dtype=np.int64), is30)
  if check_files:
    _check_star_images(star)
  return star


def _resolve_stack(stack: str, base: str, cache: dict) -> str:
  """Absolute path of a stack named in rlnImageName: relative to the STAR file's folder `base`;
  when not there, relative to the folders above it or the working directory (RELION writes
  paths relative to its project folder, e.g. Extract/job012/... from Refine3D/job050/run_data.star).
  A stack found nowhere keeps the path beside the STAR file (the error names it)."""
  if os.path.isabs(stack):
    return stack
  if stack not in cache:
    first = os.path.join(base, stack)
    candidates = [first]
    folder = base
    while os.path.dirname(folder) != folder:
      folder = os.path.dirname(folder)
      candidates.append(os.path.join(folder, stack))
    candidates.append(os.path.abspath(stack))
    cache[stack] = next((c for c in candidates if os.path.exists(c)), first)
  return cache[stack]


def _check_star_images(star: ParticleStar) -> None:
  counts: dict[str, int] = {}
  for row, (stack, i) in enumerate(zip(star.stack_paths, star.indices)):
    if stack not in counts:
      if not os.path.exists(stack):
        raise InputError(f"{star.path}: row {row + 1}: image stack {stack} not found")
      counts[stack] = len(read_stack(stack, mmap=True, check_finite=False, allow_volume=True))
    if i < 0 or i >= counts[stack]:
      raise InputError(f"{star.path}: row {row + 1}: image index {i + 1} out of range for {stack} "
                       f"({counts[stack]} images)")


def star_images(star: ParticleStar, rows=None) -> np.ndarray:
  """The particle images of `rows` (default all) as (n, H, W) float32, in row order."""
  rows = np.arange(len(star)) if rows is None else np.asarray(rows)
  out = None
  cache: dict[str, Stack] = {}
  for j, r in enumerate(rows):
    stack = star.stack_paths[r]
    if stack not in cache:
      cache[stack] = read_stack(stack, mmap=True, check_finite=False, allow_volume=True)
    img = np.asarray(cache[stack].data[star.indices[r]], dtype=np.float32)
    if out is None:
      out = np.empty((len(rows), *img.shape), np.float32)
    if img.shape != out.shape[1:]:
      raise InputError(f"{star.path}: row {r + 1}: image shape {img.shape} differs from {out.shape[1:]}")
    out[j] = img
  if out is not None and not np.isfinite(out).all():
    bad = rows[int(np.argwhere(~np.isfinite(out.reshape(len(out), -1)).all(axis=1))[0][0])]
    raise InputError(f"{star.path}: row {bad + 1}: image contains NaN or Inf values")
  return out


def _star_float(value) -> str:
  """Shortest text that reads back as the same float64 (RELION and starfile parse it)."""
  return repr(float(value))


def write_star(path: str, optics: pd.DataFrame | None, particles: pd.DataFrame) -> None:
  """Writes a RELION 3.1 STAR file (data_optics + data_particles) atomically.

  With `optics=None` only the particles block is written (the RELION 3.0 layout). Floats are
  written losslessly (not rounded to 6 decimals), so columns read back unchanged.
  """
  import starfile

  blocks = {"particles": particles} if optics is None else {"optics": optics, "particles": particles}
  with atomic_path(path) as tmp:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      starfile.write(blocks, tmp, float_format=_star_float, overwrite=True)


def pixel_size_of(row, where: str = "STAR file") -> float:
  """Pixel size (Å) of an optics row (a pandas Series or dict): rlnImagePixelSize, rlnPixelSize, or
  RELION 3.0's rlnDetectorPixelSize (µm) × 10⁴ / rlnMagnification. InputError when none is usable."""
  get = row.get
  for key in ("rlnImagePixelSize", "rlnPixelSize"):
    if get(key) is not None and float(get(key)) > 0:
      return float(get(key))
  detector, mag = get("rlnDetectorPixelSize"), get("rlnMagnification")
  if detector is not None and mag is not None and float(detector) > 0 and float(mag) > 0:
    return float(detector) * 1e4 / float(mag)
  if detector is not None:
    raise InputError(f"{where}: rlnDetectorPixelSize without rlnMagnification: no pixel size")
  raise InputError(f"{where}: no pixel size (rlnImagePixelSize, or rlnDetectorPixelSize and rlnMagnification)")
