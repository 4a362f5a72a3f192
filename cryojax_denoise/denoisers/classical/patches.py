"""Overlapping r×r patches of an image, their exact adjoint, and chunked patch-wise operators.

A patch grid is the set of top-left corners `(y, x)` with `y` in `ys`, `x` in `xs`, where
`ys = 0, s, 2s, ...` up to `H - r`, plus `H - r` itself when the stride `s` does not land on it, so
every pixel is covered for any stride. Shapes depend only on `(H, W, r, stride)`, which are static
Python ints, so everything here jits and vmaps.

- `extract_patches(image, r, stride)` is the linear operator P: (H, W) -> (P, r*r), rows in raster
  order of the grid, each row the patch flattened row-major.
- `patches_adjoint(patches, shape, r, stride)` is its exact adjoint Pᵀ (overlap-add).
- `patch_counts(shape, r, stride)` = Pᵀ P 1, how many patches cover each pixel; overlap averaging
  is `patches_adjoint(...) / patch_counts(...)`.
- `map_patches(fn, image, r, stride, block_rows)` computes Pᵀ fn(P image) a block of grid rows at a
  time (`lax.scan`), so a 256² image never holds all its patches at once.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def grid_starts(n: int, r: int, stride: int = 1) -> np.ndarray:
  """Start offsets along one axis of length `n`: 0, s, 2s, ... and always n - r (static numpy)."""
  if r > n:
    raise ValueError(f"patch size {r} exceeds image size {n}")
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  starts = np.arange(0, n - r + 1, stride)
  if starts[-1] != n - r:
    starts = np.append(starts, n - r)
  return starts.astype(np.int32)


def grid_shape(shape: tuple[int, int], r: int, stride: int = 1) -> tuple[int, int]:
  """(rows, cols) of the patch grid of an image of `shape`."""
  return len(grid_starts(shape[0], r, stride)), len(grid_starts(shape[1], r, stride))


def num_patches(shape: tuple[int, int], r: int, stride: int = 1) -> int:
  ny, nx = grid_shape(shape, r, stride)
  return ny * nx


def extract_patches_at(image: jax.Array, ys: jax.Array, xs: jax.Array, r: int) -> jax.Array:
  """Patches with top-left corners at every (ys[i], xs[j]): (len(ys)*len(xs), r*r), raster order."""
  off = jnp.arange(r)
  iy = (ys[:, None] + off[None, :])[:, None, :, None]  # (ny, 1, r, 1)
  ix = (xs[:, None] + off[None, :])[None, :, None, :]  # (1, nx, 1, r)
  p = image[iy, ix]  # (ny, nx, r, r)
  return p.reshape(-1, r * r)


def adjoint_at(patches: jax.Array, shape: tuple[int, int], ys: jax.Array, xs: jax.Array, r: int,
               out: jax.Array | None = None) -> jax.Array:
  """Adjoint of `extract_patches_at`: adds each patch back at its position (into `out` if given)."""
  off = jnp.arange(r)
  iy = (ys[:, None] + off[None, :])[:, None, :, None]
  ix = (xs[:, None] + off[None, :])[None, :, None, :]
  p = patches.reshape(ys.shape[0], xs.shape[0], r, r)
  if out is None:
    out = jnp.zeros(shape, patches.dtype)
  return out.at[iy, ix].add(p)


def extract_patches(image: jax.Array, r: int, stride: int = 1) -> jax.Array:
  """All r×r patches of `image` (H, W) on the stride grid: (P, r*r), P = num_patches."""
  ys = jnp.asarray(grid_starts(image.shape[0], r, stride))
  xs = jnp.asarray(grid_starts(image.shape[1], r, stride))
  return extract_patches_at(image, ys, xs, r)


def patches_adjoint(patches: jax.Array, shape: tuple[int, int], r: int, stride: int = 1) -> jax.Array:
  """Exact adjoint of `extract_patches`: overlap-add of (P, r*r) patches into an image of `shape`."""
  ys = jnp.asarray(grid_starts(shape[0], r, stride))
  xs = jnp.asarray(grid_starts(shape[1], r, stride))
  return adjoint_at(patches, tuple(shape), ys, xs, r)


def patch_counts(shape: tuple[int, int], r: int, stride: int = 1) -> np.ndarray:
  """How many grid patches cover each pixel, (H, W) float32 (static numpy; Pᵀ P 1): the outer
  product of the 1-D coverages of rows and columns (the grid is a product of 1-D grids)."""
  return np.outer(_coverage(shape[0], r, stride), _coverage(shape[1], r, stride)).astype(np.float32)


def _coverage(n: int, r: int, stride: int) -> np.ndarray:
  """How many 1-D windows of length r starting at `grid_starts(n, r, stride)` cover each index."""
  diff = np.zeros(n + 1, np.int64)
  starts = grid_starts(n, r, stride)
  np.add.at(diff, starts, 1)
  np.add.at(diff, starts + r, -1)
  return np.cumsum(diff[:n])


def overlap_average(patches: jax.Array, shape: tuple[int, int], r: int, stride: int = 1) -> jax.Array:
  """Image from overlapping patches: overlap-add divided by the coverage counts."""
  return patches_adjoint(patches, shape, r, stride) / jnp.asarray(patch_counts(shape, r, stride))


def map_patches(fn: Callable, image: jax.Array, r: int, stride: int = 1, block_rows: int = 16,
                has_aux: bool = False):
  """Pᵀ fn(P image), computed `block_rows` grid rows at a time to bound memory.

  `fn` maps patches (n, r*r) to patches (n, r*r) (or `(patches, aux)` with `has_aux`; aux is a
  pytree per block, returned stacked over blocks with a leading axis). Rows of the last block that
  fall past the grid are masked out: their patches are zeros on input and their outputs are
  dropped, and their aux is included (use `block_valid` to mask it). Returns the overlap-added
  (H, W) image (divide by `patch_counts` to average), and the stacked aux with `has_aux`.
  """
  H, W = image.shape
  ys_all = grid_starts(H, r, stride)
  xs = jnp.asarray(grid_starts(W, r, stride))
  ny, nx = len(ys_all), len(xs)
  block_rows = max(1, min(block_rows, ny))
  n_blocks = -(-ny // block_rows)
  pad = n_blocks * block_rows - ny
  ys_pad = np.concatenate([ys_all, np.full(pad, ys_all[-1], np.int32)]).reshape(n_blocks, block_rows)
  valid = (np.arange(n_blocks * block_rows) < ny).reshape(n_blocks, block_rows)
  valid = np.repeat(valid[:, :, None], nx, axis=2).reshape(n_blocks, block_rows * nx)

  def body(acc, xs_block):
    ys_b, valid_b = xs_block
    p = extract_patches_at(image, ys_b, xs, r) * valid_b[:, None].astype(image.dtype)
    res = fn(p)
    q, aux = res if has_aux else (res, None)
    q = q * valid_b[:, None].astype(q.dtype)
    acc = adjoint_at(q, (H, W), ys_b, xs, r, out=acc)
    return acc, aux

  acc0 = jnp.zeros((H, W), jnp.result_type(image.dtype, jnp.float32))
  acc, aux = jax.lax.scan(body, acc0, (jnp.asarray(ys_pad), jnp.asarray(valid)))
  return (acc, aux) if has_aux else acc


def block_valid(shape: tuple[int, int], r: int, stride: int = 1, block_rows: int = 16) -> np.ndarray:
  """(n_blocks, block_rows*nx) bool mask of real patches in `map_patches` blocks (for its aux)."""
  ny, nx = grid_shape(shape, r, stride)
  block_rows = max(1, min(block_rows, ny))
  n_blocks = -(-ny // block_rows)
  valid = (np.arange(n_blocks * block_rows) < ny).reshape(n_blocks, block_rows)
  return np.repeat(valid[:, :, None], nx, axis=2).reshape(n_blocks, block_rows * nx)


def sample_positions(key: jax.Array, shape: tuple[int, int, int], r: int, n: int):
  """`n` random patch corners over a batch of `shape` (B, H, W): image index b, row y, col x, each (n,)."""
  B, H, W = shape
  kb, ky, kx = jax.random.split(key, 3)
  b = jax.random.randint(kb, (n,), 0, B)
  y = jax.random.randint(ky, (n,), 0, H - r + 1)
  x = jax.random.randint(kx, (n,), 0, W - r + 1)
  return b, y, x


def gather_patches(images: jax.Array, b: jax.Array, y: jax.Array, x: jax.Array, r: int) -> jax.Array:
  """Patches of the batch `images` (B, H, W) at corners (b, y, x), each (n,): (n, r*r)."""
  off = jnp.arange(r)
  iy = (y[:, None] + off[None, :])[:, :, None]
  ix = (x[:, None] + off[None, :])[:, None, :]
  return images[b[:, None, None], iy, ix].reshape(b.shape[0], r * r)


def sample_patches(key: jax.Array, images: jax.Array, r: int, n: int) -> jax.Array:
  """`n` patches at uniformly random positions of a random image of the batch (B, H, W): (n, r*r)."""
  b, y, x = sample_positions(key, images.shape, r, n)
  return gather_patches(images, b, y, x, r)
