"""3D maps ready for projection: load (MRC, PDB/mmCIF, built-in phantom), fit and resample.

`MapSource.volume` is a cube centred at voxel D // 2 at `pixel_size` Å; odd image sizes use a grid
one voxel larger and cryojax crops the projection.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from absl import logging

from cryojax_denoise.data import phantom
from cryojax_denoise.errors import InputError
from cryojax_denoise.io import check_input_file, read_volume

FIT_MASS_TOLERANCE = 0.01  # crop a map's box only if it loses < 1% of its density, else resample


@dataclass(frozen=True)
class MapSource:
  """A 3D map ready for projection: `volume` (D, D, D) float32 on a cubic grid of `pixel_size` Å,
  the molecule's centre at voxel D // 2; `name` says where it came from."""

  volume: np.ndarray
  pixel_size: float
  name: str


def _crop_or_pad(volume: np.ndarray, box: int) -> np.ndarray:
  """Centre-preserving crop/zero-pad of a cube to `box` (voxel D // 2 lands on box // 2)."""
  d = volume.shape[0]
  out = np.zeros((box, box, box), np.float32)
  shift = box // 2 - d // 2  # out[j] = volume[j - shift]
  lo_in, hi_in = max(0, -shift), min(d, box - shift)
  sl_in = slice(lo_in, hi_in)
  sl_out = slice(lo_in + shift, hi_in + shift)
  out[sl_out, sl_out, sl_out] = volume[sl_in, sl_in, sl_in]
  return out


def _fourier_resize(volume: np.ndarray, size: int) -> np.ndarray:
  """Fourier crop (downsample) or zero-pad (upsample) an even cube to an even `size`, keeping
  voxel values (a smooth map keeps its density values; the voxel size scales by D / size).
  Single-precision real FFTs keep memory near 1.5x the map."""
  d = volume.shape[0]
  if size == d:
    return volume.astype(np.float32)
  f = np.fft.rfftn(volume.astype(np.float32))
  freqs = np.rint(np.fft.fftfreq(size) * size).astype(int)
  keep = (freqs >= -(d // 2)) & (freqs < d - d // 2)  # frequencies both grids represent
  half = np.arange(min(size, d) // 2 + 1)
  g = np.zeros((size, size, size // 2 + 1), np.complex64)
  old = freqs[keep] % d
  g[np.ix_(np.flatnonzero(keep), np.flatnonzero(keep), half)] = f[np.ix_(old, old, half)]
  return (np.fft.irfftn(g, s=(size, size, size), axes=(0, 1, 2)) * (size / d) ** 3).astype(np.float32)


def fit_volume(volume: np.ndarray, pixel_size: float, box: int) -> tuple[np.ndarray, float]:
  """Fits a cubic map into an even `box` (box + 1 for odd box, cryojax needs even grids).

  Keeps the pixel size and crops/pads the real-space box, unless cropping would cut away more
  than 1% of the map's density: then the whole box is Fourier-resampled to `box` voxels, and the
  pixel size grows accordingly. Returns (map (B, B, B) float32, pixel size Å).
  """
  box = box + box % 2
  d = volume.shape[0]
  if d % 2:
    volume = _crop_or_pad(volume, d + 1)  # lossless: pad odd grids to even
    d += 1
  if d > box:
    kept = _crop_or_pad(volume, box)
    total = float(np.abs(volume).sum())
    if total > 0 and float(np.abs(kept).sum()) < (1 - FIT_MASS_TOLERANCE) * total:
      return _fourier_resize(volume, box), pixel_size * d / box
    return kept, pixel_size
  return _crop_or_pad(volume, box), pixel_size


def resample_volume(volume: np.ndarray, pixel_size: float, new_pixel_size: float, box: int) -> np.ndarray:
  """Resamples a map to `new_pixel_size` in a `box` grid (box + 1 if odd), by Fourier cropping or
  padding; the input is first zero-padded to a size whose rescaled size is nearly an even integer
  (relative voxel size error < 0.2% where possible)."""
  box = box + box % 2
  d = volume.shape[0] + volume.shape[0] % 2
  ratio = pixel_size / new_pixel_size
  if abs(ratio - 1.0) < 1e-6:
    return fit_volume(volume, pixel_size, box)[0]
  best = None
  for d0 in range(d, d + 130, 2):
    target = 2 * round(d0 * ratio / 2)
    err = abs(target / d0 - ratio) / ratio
    if target >= 2 and (best is None or err < best[0] - 1e-12):
      best = (err, d0, target)
    if err < 2e-3:
      break
  err, d0, target = best
  if err > 0.01:
    logging.warning("resampling map from %.4g to %.4g Å/px with %.2g%% voxel size error",
                    pixel_size, new_pixel_size, 100 * err)
  resized = _fourier_resize(_crop_or_pad(volume, d0), target)
  return _crop_or_pad(resized, box)


def _structure_atoms(path: str):
  """Positions (M, 3) Å centred on their centroid, Peng amplitudes and variances (M, 5)."""
  import cryojax.simulator as cxs

  check_input_file(path, "PDB/mmCIF file")
  try:
    gm = cxs.load_tabulated_volume(path, include_b_factors=True)
  except Exception as e:  # noqa: BLE001 - mmdf/gemmi raise many types on garbage
    raise InputError(f"{path}: not a readable PDB/mmCIF model ({type(e).__name__}: {e})") from None
  positions = np.asarray(gm.positions, np.float64)
  if len(positions) == 0:
    raise InputError(f"{path}: model holds no atoms")
  if not np.isfinite(positions).all():
    raise InputError(f"{path}: model has NaN or Inf atom coordinates")
  return positions - positions.mean(axis=0), np.asarray(gm.amplitudes), np.asarray(gm.variances)


def load_source(volume: str | None = None, structure: str | None = None, pixel_size: float | None = None,
                image_size: int = 64, seed: int = 0) -> MapSource:
  """The map to simulate from, on an `image_size` grid (even; odd sizes get one more voxel).

  * neither: the built-in phantom (`seed` picks it), ~60% of the box unless `pixel_size` is given;
  * `volume=`: an MRC map; pixel size from its header, or `pixel_size` (needed when the header
    says 0, overrides it otherwise); fitted to the box by `fit_volume`;
  * `structure=`: a PDB/mmCIF model rendered with cryojax (Peng scattering factors with the
    model's B-factors, blurred by sigma = pixel / 2 and averaged over voxels); without `pixel_size`
    the model fills ~60% of the box.
  """
  if volume and structure:
    raise InputError("give at most one of volume= (an MRC map) and structure= (a PDB/mmCIF model)")
  if int(image_size) < 8:
    raise InputError(f"image_size: must be at least 8, got {image_size}")
  if pixel_size is not None and (not math.isfinite(float(pixel_size)) or float(pixel_size) < 0):
    raise InputError(f"pixel_size: must be a positive number of Å (or 0 for the default), got {pixel_size}")
  box = int(image_size) + int(image_size) % 2
  if volume:
    check_input_file(volume, "MRC map file")
    data, size = read_volume(volume, pixel_size=pixel_size or None)
    if not np.any(data):
      raise InputError(f"{volume}: map is all zeros")
    fitted, size = fit_volume(data, size, box)
    return MapSource(fitted, float(size), os.path.abspath(volume))
  if structure:
    positions, amplitudes, variances = _structure_atoms(structure)
    size = float(pixel_size) if pixel_size else phantom.default_pixel_size(positions, box)
    # The model's B-factors blur each atom; a further Gaussian of sigma = pixel / 2 band-limits
    # the map to the grid (atoms narrower than a voxel would otherwise alias into speckle).
    rendered = phantom.render_atoms(positions, amplitudes, variances + (size / 2) ** 2, box, size)
    return MapSource(rendered, size, os.path.abspath(structure))
  rendered, size = phantom.phantom_volume(box, pixel_size=pixel_size or None, seed=int(seed))
  return MapSource(rendered, size, f"phantom(seed={int(seed)})")
