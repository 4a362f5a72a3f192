"""Steerable Fourier–Bessel (FB) basis of the disk of radius R = L/2 (+ `reach`) pixels, complex form.

Basis functions ψ_kq(r, θ) = c_kq J_k(z_kq r / R) e^{ikθ} on the pixels with r < R (centre pixel
L // 2, x = column, y = row, θ = atan2(y, x)), z_kq the q-th positive zero of J_k, kept while
z_kq < π R (ASPIRE's FFBBasis2D truncation: Nyquist-limited radial frequency); c_kq makes each
sampled function unit-norm on the pixel grid. Only k >= 0 is stored: a real image has
a_{-k} = conj(a_k), so image = Re Σ_{k>=0} w_k a_k ψ_k with w_0 = 1, w_k = 2.

* `expand_t(basis, images)` = Ψᴴ x, the adjoint (ASPIRE's `evaluate_t`), (B, H, W) -> (B, count)
  complex; `evaluate(basis, coefs)` maps back; `expand_blocks` / `evaluate_blocks` the same in the
  padded per-k layout (the latter for blocks k < k1 only). Two exact implementations of the same
  matrix: dense (Ψ stored, n_disk x count; L < `FAST_FROM`) and `fb_rings` (D4 orbits, angular phases and
  per-k radial matmuls, ~8x fewer operations at 128², no L² x count matrix; L >= `FAST_FROM`). `to_real` packs coefficients into ASPIRE's real
  cos/sin form (√2 Re, −√2 Im for k > 0), in which `evaluate` and `expand_t` are exact transposes.
* Steerability: rotating an image by α (counter-clockwise in (x, y)) multiplies a_k by e^{-ikα}.
* Blocks: coefficients of angular frequency k, padded to `pmax` (`pad` / `unpad`), so per-k
  work is one vmapped array op. White pixel noise σ² gives coefficient noise ≈ σ² I.
* Radial CTF: a radially symmetric filter h(ρ) acts on block k as M_k = Gₖᵀ diag(h) Gₖ, with Gₖ
  (n_rho, pmax) the basis's Hankel profiles on Gauss–Legendre nodes ρ ∈ [0, 0.5] cycles/pixel,
  orthonormalised so that h ≡ 1 gives M_k = I exactly. `radial_profile(basis, ctf)` averages a
  (B, H, W) CTF on the FFT grid over angle: its mean over the grid frequencies of each distinct radius,
  interpolated in radius to those nodes (`_ctf_rings`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from cryojax_denoise.denoisers.cwf import fb_rings

# From this size on the orbit transform replaces the dense matrix. CPU-s per 256 images, expand /
# evaluate, dense vs orbits: 32²: 0.006/0.008 vs 0.006/0.005; 64²: 0.050/0.105 vs 0.045/0.030;
# 128²: the dense matrix is 518 MB, orbits 0.26/0.20 (/work/notes/h4_cwf/bench*.log).
FAST_FROM = 48

# CWF's basis disk radius L/2 + EDGE_REACH·L px (`fb_basis`'s `reach`; 4 px at 64²). On the inscribed disk
# every FB function is 0 on the rim, so an estimate in it is 0 on the rim and beyond, where box-filling
# molecules have signal, and ASPIRE's band-limited FFB functions (which spill past it) beat it (docs/cwf.md).
EDGE_REACH = 1 / 16


def basis_reach(L: int) -> float:
  """Pixels CWF's basis disk reaches past the edge of (L, L) images."""
  return EDGE_REACH * int(L)


class FBBasis(NamedTuple):
  """Arrays of an FB basis (a pytree). count = number of (k >= 0, q) functions.

  psi_re, psi_im: (n_disk, count) float32, the sampled functions on the disk pixels `disk` (n_disk,)
  (flat indices into H*W), None when `rings` (the orbit form, `fb_rings.Rings`) is used instead; k_of (count,) angular frequency; weight (count,) w_k; pad_index
  (K+1, pmax) index into count (count = padding); flat_index (count,) position in the padded
  (K+1)*pmax layout; sizes (K+1,) p_k; radial (K+1, n_rho, pmax) orthonormal Hankel profiles;
  ctf_interp (n_rho, H*W) angular averaging of an FFT-grid filter at the nodes.
  """
  psi_re: jax.Array
  psi_im: jax.Array
  disk: jax.Array
  k_of: jax.Array
  weight: jax.Array
  pad_index: jax.Array
  flat_index: jax.Array
  sizes: jax.Array
  radial: jax.Array
  ctf_interp: jax.Array
  rings: fb_rings.Rings | None = None

  @property
  def shape(self) -> tuple[int, int]:
    n = int(round(np.sqrt(self.ctf_interp.shape[1])))
    return n, n

  @property
  def count(self) -> int:
    return self.k_of.shape[0]

  @property
  def n_blocks(self) -> int:
    return self.pad_index.shape[0]

  @property
  def pmax(self) -> int:
    return self.pad_index.shape[1]


def bessel_zeros(k: int, bound: float, table: tuple | None = None) -> np.ndarray:
  """Positive zeros of J_k below `bound` (ascending). With `table` (`bessel_table` covering `bound`):
  bracketed by its sign changes and polished by Newton steps on scipy's J_k (cheaper than jn_zeros,
  which also finds the zeros of J_k', Y_k and Y_k')."""
  if table is None:
    n = max(4, int(bound / np.pi) + 4)
    z = special.jn_zeros(k, n)
    while z[-1] < bound:
      n *= 2
      z = special.jn_zeros(k, n)
    return z[z < bound]
  values, step = table
  first = int(k / step) + 1  # every zero of J_k is > k; below, J_k is tiny and the table's rounding noise
  row = values[k][first:]
  i = np.flatnonzero(np.sign(row[:-1]) * np.sign(row[1:]) <= 0)
  i = i[np.r_[True, np.diff(i) > 1]] if len(i) else i  # a zero on a node shows in two intervals
  x = (i + first + row[i] / (row[i] - row[i + 1] + 1e-300)) * step  # linear interpolation
  for _ in range(4):
    x = x - special.jv(k, x) / special.jvp(k, x)
  return x[(x > 0) & (x < bound)]


@functools.lru_cache(maxsize=8)
def _leggauss(n: int) -> tuple[np.ndarray, np.ndarray]:
  return np.polynomial.legendre.leggauss(n)


def bessel_table(k_max: int, x_max: float, step: float = 1 / 16) -> tuple[np.ndarray, float]:
  """J_k(x) for k = 0..k_max + 1 on the grid x = 0, step, ... >= x_max: ((k_max + 2, n_x) float64, step).

  One FFT per grid point gives every order at once: J_k(x) = Re (1/N) Σ_n e^{i x sin τ_n} e^{-ik τ_n},
  τ_n = 2πn/N (the trapezoid rule, exact up to J_{N-k}(x), negligible for N > k + x + 64). scipy's
  `jv` costs ~2 µs per value, and the basis needs ~(distinct radii · count) of them (10⁸ at 256²)."""
  n_fft = 1 << int(np.ceil(np.log2(k_max + 2 + x_max + 64)))
  x = np.arange(int(np.ceil(x_max / step)) + 2) * step
  tau = 2 * np.pi * np.arange(n_fft) / n_fft
  table = np.empty((k_max + 2, len(x)))
  for start in range(0, len(x), 512):
    e = np.exp(1j * np.outer(x[start:start + 512], np.sin(tau)))
    table[:, start:start + 512] = np.fft.fft(e, axis=1)[:, : k_max + 2].real.T / n_fft
  return table, step


def bessel_interp(table: np.ndarray, step: float, k: int, x: np.ndarray) -> np.ndarray:
  """J_k(x) (x's shape, float64) by cubic Hermite interpolation of `bessel_table` (J_k' = (J_{k-1} −
  J_{k+1}) / 2, J_{-1} = −J_1; error <= step⁴/384 ≈ 4e-8 at step 1/16)."""
  i = np.minimum((x / step).astype(int), table.shape[1] - 2)
  t = x / step - i
  below = table[k - 1] if k > 0 else -table[1]
  deriv = (below - table[k + 1]) * (step / 2)
  f0, f1, d0, d1 = table[k][i], table[k][i + 1], deriv[i], deriv[i + 1]
  t2, t3 = t * t, t * t * t
  return f0 * (2 * t3 - 3 * t2 + 1) + d0 * (t3 - 2 * t2 + t) + f1 * (3 * t2 - 2 * t3) + d1 * (t3 - t2)


def _radial_profiles(k: int, zeros: np.ndarray, norms: np.ndarray, R: float, rho: np.ndarray) -> np.ndarray:
  """g_kq(ρ) = 2π c_kq ∫_0^R J_k(z_kq r/R) J_k(2πρr) r dr, (n_rho, p) float64, c_kq = 1 / norms_q.

  Closed form (Lommel): with α = z_kq a zero of J_k and β = 2πρR,
  ∫_0^1 x J_k(αx) J_k(βx) dx = α J_{k+1}(α) J_k(β) / (α² − β²), and ½ J_{k+1}(α)² at β = α."""
  alpha, beta = zeros[None, :], 2 * np.pi * R * rho[:, None]
  jk1 = special.jv(k + 1, zeros)[None, :]
  diff = alpha * alpha - beta * beta
  near = np.abs(alpha - beta) < 1e-9 * alpha
  integral = np.where(near, 0.5 * jk1 * jk1, alpha * jk1 * special.jv(k, beta) / np.where(near, 1.0, diff))
  return 2 * np.pi * R * R * integral / norms


def _ctf_rings(L: int, rho: np.ndarray) -> np.ndarray:
  """(n_rho, L*L): a filter on the fftfreq-layout grid -> its mean over the grid frequencies at each of the
  grid's distinct radii, linearly interpolated in radius to the nodes ρ (cycles/px).

  The particles were filtered by the CTF at exactly those frequencies, so their ring means are its angular
  average; interpolating along circles between grid points instead (bilinear, as before) also averages
  across radius, over ±1 px: that shrank a CTF whose phase turns by ~1 rad per pixel (small pixels, large
  defocus) by 10-40% and cost up to 1.17x ASPIRE's MSE (docs/cwf.md)."""
  f = np.fft.fftfreq(L) * L
  radius = np.round(np.hypot(*np.meshgrid(f, f, indexing="ij")).ravel(), 9)
  u, inv, count = np.unique(radius, return_inverse=True, return_counts=True)
  order = np.argsort(inv, kind="stable")
  start = np.concatenate([[0], np.cumsum(count)])
  x = np.asarray(rho, np.float64) * L
  b = np.clip(np.searchsorted(u, x), 1, len(u) - 1)
  a = b - 1
  t = np.clip((x - u[a]) / (u[b] - u[a]), 0.0, 1.0)
  out = np.zeros((len(x), L * L))
  for j in range(len(x)):
    for ring, w in ((a[j], 1 - t[j]), (b[j], t[j])):
      out[j, order[start[ring]:start[ring + 1]]] += w / count[ring]
  return out


@functools.lru_cache(maxsize=4)
def fb_basis(L: int, n_rho: int | None = None, fast: bool | None = None, reach: float = 0.0) -> FBBasis:
  """The FB basis of (L, L) images (cached). `n_rho` radial nodes for filters (default L); `fast`:
  orbit transform instead of the dense matrix (default: L >= FAST_FROM). `reach` (pixels, >= 0): the
  disk's radius is L/2 + reach, sampled on the pixels of the grid only (as if the image were zero-padded
  by `reach`, each function unit-norm on that padded disk): the basis then also covers the strip along
  the edge and part of the corners, but the clipped functions are only nearly orthonormal and steerable
  (`cwf` uses it; 0 = the exact basis)."""
  L = int(L)
  fast = L >= FAST_FROM if fast is None else bool(fast)
  if L < 8:
    raise ValueError(f"FB basis needs images of at least 8x8, got {L}")
  R = L / 2 + float(reach)
  bound = np.pi * R
  c = L // 2
  yy, xx = np.mgrid[0:L, 0:L]
  x, y = (xx - c).ravel(), (yy - c).ravel()
  r = np.hypot(x, y)
  disk = np.flatnonzero(r < R)
  r, theta = r[disk], np.arctan2(y[disk], x[disk])
  r_unique, r_inv, r_count = np.unique(r, return_inverse=True, return_counts=True)  # J_k once per radius
  # Unit norm over the whole disk's pixels (those off the grid too, i.e. of the zero-padded image): a
  # function mostly off the grid keeps a small norm on it (normalised there, it would be a spike).
  e = int(np.ceil(reach))
  full = np.hypot(*(np.mgrid[0:L + 2 * e, 0:L + 2 * e] - (c + e))).ravel()
  full_r, full_count = np.unique(full[full < R], return_counts=True)
  n_rho = int(n_rho or L)
  t, w = _leggauss(n_rho)
  rho, wrho = (t + 1) / 4, w / 4  # nodes on [0, 0.5]
  cols, ks, blocks, radial, columns = [], [], [], [], []
  table, step = bessel_table(int(np.ceil(bound)), bound)  # J_k(z_kq r/R) < J_k at z < πR: k < πR
  k = 0
  while True:
    zeros = bessel_zeros(k, bound, (table, step))
    if len(zeros) == 0:
      break
    j = bessel_interp(table, step, k, np.outer(r_unique, zeros) / R)
    norms = np.sqrt(full_count @ bessel_interp(table, step, k, np.outer(full_r, zeros) / R) ** 2)
    if fast:
      columns.append((j / norms).astype(np.float32))  # (n_radii, p_k): 0.4 GB in all at 256²
    else:
      cols.append(j[r_inv] * np.exp(1j * k * theta)[:, None] / norms)
    ks += [k] * len(zeros)
    blocks.append(len(zeros))
    g = _radial_profiles(k, zeros, norms, R, rho) * np.sqrt(2 * np.pi * wrho * rho)[:, None]
    s_val, s_vec = np.linalg.eigh(g.T @ g)  # orthonormalise: h ≡ 1 gives M = I exactly
    radial.append(g @ (s_vec / np.sqrt(np.maximum(s_val, 1e-12))) @ s_vec.T)
    k += 1
  sizes = np.array(blocks)
  K1, pmax, count = len(blocks), int(sizes.max()), int(sizes.sum())
  pad_index = np.full((K1, pmax), count)
  flat_index = np.empty(count, int)
  rad = np.zeros((K1, n_rho, pmax))
  start = 0
  for kk, p in enumerate(blocks):
    pad_index[kk, :p] = np.arange(start, start + p)
    flat_index[start:start + p] = kk * pmax + np.arange(p)
    rad[kk, :, :p] = radial[kk]
    start += p
  ks = np.array(ks)
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  psi = None if fast else np.concatenate(cols, axis=1)
  rings = fb_rings.build(L, R, r_unique, columns) if fast else None
  return FBBasis(None if fast else f32(psi.real), None if fast else f32(psi.imag), jnp.asarray(disk, jnp.int32), jnp.asarray(ks, jnp.int32),
                 f32(np.where(ks == 0, 1.0, 2.0)), jnp.asarray(pad_index, jnp.int32),
                 jnp.asarray(flat_index, jnp.int32), jnp.asarray(sizes, jnp.int32), f32(rad),
                 f32(_ctf_rings(L, rho)), rings)


@jax.jit
def expand_t(basis: FBBasis, images: jax.Array) -> jax.Array:
  """Ψᴴ x: (B, H, W) real -> (B, count) complex64 coefficients (adjoint of the synthesis)."""
  if basis.rings is not None:
    return unpad(basis, fb_rings.analyse(basis.rings, images))
  x = jnp.asarray(images, jnp.float32).reshape(images.shape[0], -1)[:, basis.disk]
  return jax.lax.complex(x @ basis.psi_re, -(x @ basis.psi_im))


@jax.jit
def expand_blocks(basis: FBBasis, images: jax.Array) -> jax.Array:
  """Ψᴴ x in the padded layout: (B, H, W) real -> (B, K+1, pmax) complex64."""
  if basis.rings is not None:
    return fb_rings.analyse(basis.rings, images)
  return pad(basis, expand_t(basis, images))


@jax.jit
def evaluate_blocks(basis: FBBasis, blocks: jax.Array) -> jax.Array:
  """`evaluate` of padded blocks (B, k1, pmax) of k < k1 (k1 <= K+1; higher blocks 0): (B, H, W)."""
  if basis.rings is not None:
    return fb_rings.synthesise(basis.rings, blocks, basis.shape)
  full = jnp.pad(blocks, ((0, 0), (0, basis.n_blocks - blocks.shape[1]), (0, 0)))
  return evaluate(basis, unpad(basis, full))


@jax.jit
def evaluate(basis: FBBasis, coefs: jax.Array) -> jax.Array:
  """Re Σ w_k a_k ψ_k: (B, count) complex -> (B, H, W) float32 (zero outside the disk)."""
  if basis.rings is not None:
    return fb_rings.synthesise(basis.rings, pad(basis, coefs), basis.shape)
  a = coefs * basis.weight
  disk = jnp.real(a) @ basis.psi_re.T - jnp.imag(a) @ basis.psi_im.T
  H, W = basis.shape
  out = jnp.zeros((coefs.shape[0], H * W), jnp.float32).at[:, basis.disk].set(disk)
  return out.reshape(-1, H, W)


def to_real(basis: FBBasis, coefs: jax.Array) -> jax.Array:
  """Complex (B, count) -> ASPIRE-style real coefficients (B, count + count_{k>0}): k = 0 parts,
  then √2 Re a_k and −√2 Im a_k of k > 0 (the cos and sin coefficients)."""
  pos = np.asarray(basis.k_of) > 0
  s = np.sqrt(2.0)
  return jnp.concatenate([jnp.real(coefs[:, ~pos]), s * jnp.real(coefs[:, pos]), -s * jnp.imag(coefs[:, pos])], 1)


def from_real(basis: FBBasis, real: jax.Array) -> jax.Array:
  """Inverse of `to_real`."""
  pos = np.asarray(basis.k_of) > 0
  n0, n1 = int((~pos).sum()), int(pos.sum())
  out = jnp.zeros((real.shape[0], basis.count), jnp.complex64)
  out = out.at[:, np.flatnonzero(~pos)].set(real[:, :n0])
  c, s = real[:, n0:n0 + n1], real[:, n0 + n1:]
  return out.at[:, np.flatnonzero(pos)].set((c - 1j * s) / np.sqrt(2.0))


def pad(basis: FBBasis, coefs: jax.Array) -> jax.Array:
  """(B, count) -> (B, K+1, pmax) per-k blocks, zero padded."""
  z = jnp.concatenate([coefs, jnp.zeros((coefs.shape[0], 1), coefs.dtype)], axis=1)
  return z[:, basis.pad_index]


def unpad(basis: FBBasis, blocks: jax.Array) -> jax.Array:
  """(B, K+1, pmax) -> (B, count)."""
  return blocks.reshape(blocks.shape[0], -1)[:, basis.flat_index]


def radial_profile(basis: FBBasis, ctf: jax.Array) -> jax.Array:
  """Angle-averaged filter values (B, n_rho) of (B, H, W) FFT-grid (fftfreq layout) CTFs."""
  return jnp.asarray(ctf, jnp.float32).reshape(ctf.shape[0], -1) @ basis.ctf_interp.T


def ctf_blocks(basis: FBBasis, h: jax.Array) -> jax.Array:
  """M_k = Gₖᵀ diag(h) Gₖ for radial profiles h (..., n_rho): (..., K+1, pmax, pmax) float32."""
  return jnp.einsum("krp,...r,krq->...kpq", basis.radial, h, basis.radial)


def apply_radial(basis: FBBasis, h: jax.Array, v: jax.Array) -> jax.Array:
  """M_i v_i = Gᵀ (h_i ⊙ G v_i) per block without forming M: h (B, n_rho), v (B, K+1, pmax)."""
  g = basis.radial.astype(v.dtype)
  return jnp.einsum("krp,bkr->bkp", g, h[:, None, :] * jnp.einsum("krq,bkq->bkr", g, v))


@jax.jit
def square_sum_blocks(basis: FBBasis, hh: jax.Array) -> jax.Array:
  """Σ_i M_i² (..., K+1, pmax, pmax) from Σ_i h_i h_iᵀ (..., n_rho, n_rho), exactly: M_i² =
  Gᵀ D_i Π D_i G with Π = G Gᵀ, so Σ_i M_i² = Gᵀ (Π ∘ Σ_i h_i h_iᵀ) G."""
  g = basis.radial
  proj = jnp.einsum("krp,ksp->krs", g, g)
  return jnp.einsum("krp,krs,...rs,ksq->...kpq", g, proj, hh, g)
