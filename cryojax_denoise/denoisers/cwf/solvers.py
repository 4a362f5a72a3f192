"""CWF's linear algebra (denoisers/cwf/cwf.py): noise removal from the block covariances (subtraction or
ASPIRE's eigenvalue shrinkage), the grouped least-squares covariance solve by preconditioned CG, and
batched Gauss–Jordan for the per-particle r×r Wiener systems, and the k-means CTF groups with their mean M_i².
Pure jit-able functions on padded blocks (the k-means is NumPy)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def shrink_eigenvalues(lam, noise_var, gamma):
  """ASPIRE's "frobenius_norm" shrinker of sample-covariance eigenvalues (noise variance σ²,
  aspect ratio γ = p / n): 0 below the Marchenko–Pastur edge σ²(1 + √γ)², else the debiased
  spike ℓ times (1 − σ⁴γ/ℓ²) / (1 + σ²γ/ℓ)."""
  edge = noise_var * (1 + jnp.sqrt(gamma)) ** 2
  a = lam - noise_var * (gamma - 1)
  ell = 0.5 * (a + jnp.sqrt(jnp.maximum(a * a - 4 * noise_var * lam, 0.0))) - noise_var
  ell_safe = jnp.where(lam > edge, ell, 1.0)
  c = (1 - noise_var ** 2 * gamma / ell_safe ** 2) / (1 + noise_var * gamma / ell_safe)
  return jnp.where(lam > edge, ell * c, 0.0)


def _herm(x):
  return 0.5 * (x + jnp.conj(jnp.swapaxes(x, -1, -2)))


@functools.partial(jax.jit, static_argnames=("shrink",))
def noise_correct(rhs, pbar, mask, sizes, noise_var, n, *, shrink):
  """B − σ² P̄, or B shrunk in the P̄^{1/2}-whitened frame (padding masked)."""
  if not shrink:
    return rhs - noise_var * pbar
  eye = jnp.eye(rhs.shape[-1]) * (1 - mask)[:, None, :]  # identity on padded coordinates
  s_val, s_vec = jnp.linalg.eigh(pbar + eye)
  s_val = jnp.maximum(s_val, 1e-12)
  sq = (s_vec * jnp.sqrt(s_val)[:, None, :]) @ jnp.swapaxes(s_vec, -1, -2)
  isq = (s_vec / jnp.sqrt(s_val)[:, None, :]) @ jnp.swapaxes(s_vec, -1, -2)
  white = _herm(isq @ rhs @ isq)
  lam, vec = jnp.linalg.eigh(white)
  lam = shrink_eigenvalues(lam, noise_var, (sizes / n)[:, None])
  shrunk = (vec * lam[:, None, :].astype(vec.dtype)) @ jnp.conj(jnp.swapaxes(vec, -1, -2))
  return _herm(sq @ shrunk @ sq)


@functools.partial(jax.jit, static_argnames=("iters",))
def solve_covariance(p_groups, weights, rhs, mask, *, iters=40):
  """C with Σ_g w_g P_g C P_g = rhs for each block: preconditioned CG (Frobenius inner product).

  p_groups (G, K+1, p, p) real symmetric, weights (G,), rhs (K+1, p, p) real; mask (K+1, p) marks
  real coordinates (padding stays 0). A complex (Hermitian) rhs: solve its real and imaginary parts."""
  mm = mask[:, :, None] * mask[:, None, :]
  diag = jnp.diagonal(p_groups, axis1=-2, axis2=-1)  # (G, K+1, p)
  precond = jnp.einsum("g,gkp,gkq->kpq", weights, diag, diag)
  precond = jnp.where(mm > 0, jnp.maximum(precond, 1e-12 * precond.max()), 1.0)
  pg = jnp.moveaxis(p_groups * jnp.sqrt(weights)[:, None, None, None], 0, 1)  # (K+1, G, p, p)

  def op(c):  # Σ_g P_g (C P_g): two matmuls per block over the stacked groups (not G·(K+1) small ones)
    return jnp.einsum("kgpq,kgqr->kpr", pg, jnp.einsum("kpq,kgqr->kgpr", c, pg)) * mm

  def dot(a, b):
    return jnp.sum(a * b, axis=(-2, -1))

  x = rhs / precond * mm
  r = rhs * mm - op(x)
  z = r / precond
  d = z
  rz = dot(r, z)

  def body(_, state):
    x, r, d, rz = state
    q = op(d)
    alpha = rz / jnp.where(dot(d, q) > 0, dot(d, q), 1.0)
    x = x + alpha[:, None, None] * d
    r = r - alpha[:, None, None] * q
    z = r / precond
    rz_new = dot(r, z)
    beta = rz_new / jnp.where(rz > 0, rz, 1.0)
    return x, r, z + beta[:, None, None] * d, rz_new

  x, *_ = jax.lax.fori_loop(0, iters, body, (x, r, d, rz))
  return 0.5 * (x + jnp.swapaxes(x, -1, -2))


def solve_pd(a, b):
  """x with a x = b for a batch of small Hermitian positive definite a (..., r, r), b (..., r):
  Gauss–Jordan without pivoting, vectorised over the batch (LAPACK's per-matrix calls dominate
  for ~10⁵ matrices of size ~10)."""
  r = a.shape[-1]

  def step(i, state):
    a, b = state
    row = jax.lax.dynamic_index_in_dim(a, i, axis=-2, keepdims=False)  # (..., r)
    piv = jax.lax.dynamic_index_in_dim(row, i, axis=-1, keepdims=False)
    row, bi = row / piv[..., None], jax.lax.dynamic_index_in_dim(b, i, axis=-1, keepdims=False) / piv
    col = jax.lax.dynamic_index_in_dim(a, i, axis=-1, keepdims=False)  # (..., r)
    col = jnp.where(jnp.arange(r) == i, 0, col)
    a = a - col[..., :, None] * row[..., None, :]
    b = b - col * bi[..., None]
    a = jax.lax.dynamic_update_index_in_dim(a, row, i, axis=-2)
    b = jax.lax.dynamic_update_index_in_dim(b, bi, i, axis=-1)
    return a, b

  return jax.lax.fori_loop(0, r, step, (a, b))[1]


@jax.jit
def group_blocks(radial, hh_groups):
  """Mean M_i² of each CTF group (G, n, p, p) on the blocks of `radial` (n, n_rho, p), one group at a time
  (all at once XLA forms (G, n, n_rho, n_rho): 3.3 GB at 256²)."""
  proj = jnp.einsum("krp,ksp->krs", radial, radial)  # as steerable.square_sum_blocks
  return jax.lax.map(lambda hh: jnp.einsum("krp,krs,rs,ksq->kpq", radial, proj, hh, radial), hh_groups)


def ctf_groups(h: np.ndarray, n_groups: int, iters: int = 8) -> np.ndarray:
  """Cluster labels (N,) of CTF profiles (N, n_rho) by k-means on h² (sorted-split start)."""
  n = len(h)
  if n <= n_groups:
    return np.arange(n)
  x = np.asarray(h, np.float64) ** 2
  xc = x - x.mean(0)
  _, _, vt = np.linalg.svd(xc[:: max(1, n // 2000)], full_matrices=False)
  labels = np.empty(n, int)
  labels[np.argsort(xc @ vt[0])] = np.arange(n) * n_groups // n
  for _ in range(iters):
    onehot = labels[:, None] == np.arange(n_groups)[None]
    counts = onehot.sum(0)
    centers = (onehot.T @ x)[counts > 0] / counts[counts > 0, None]
    d = (x * x).sum(1)[:, None] - 2 * x @ centers.T + (centers * centers).sum(1)[None]
    labels = d.argmin(1)
  return np.unique(labels, return_inverse=True)[1]


def live_blocks(rhs, bucket: int = 8) -> np.ndarray:
  """Indices of the blocks (K+1, p, p) with a nonzero rhs, padded with a zero block to a multiple of
  `bucket` (few distinct shapes to compile): CWF's CG solves only those (the others' C is 0)."""
  nonzero = np.asarray(jnp.abs(rhs).sum((1, 2)) > 0)
  live, dead = np.flatnonzero(nonzero), np.flatnonzero(~nonzero)
  size = min(len(nonzero), -(-max(len(live), 1) // bucket) * bucket)
  return np.concatenate([live, np.full(size - len(live), dead[0] if len(dead) else 0)]).astype(np.int32)
