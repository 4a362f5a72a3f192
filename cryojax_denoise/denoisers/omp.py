"""Batch-OMP: orthogonal matching pursuit from the Gram matrix, jit-compiled and vmapped.

After Rubinstein, Zibulevsky & Elad, "Efficient implementation of the K-SVD algorithm using
Batch Orthogonal Matching Pursuit" (Technion CS-2008-08). Each signal x is coded only through
G = DᵀD (N, N) and Dᵀx (N,), which is cheap when many signals share one dictionary D (n, N).
Atoms are added greedily (largest |Dᵀr|); the least-squares coefficients on the support come from
a progressively updated Cholesky factor, kept here as its inverse L⁻¹ (lower triangular, one new
row per atom), so every step is a few small mat-vecs:

  w = L⁻¹ G[I, k],  d = sqrt(G[k, k] - wᵀw),  new row of L⁻¹ = (e_k - L⁻ᵀ w) / d,
  z_k = (Dᵀx[k] - wᵀz) / d,  γ = L⁻ᵀ z,  ‖r‖² = ‖x‖² - ‖z‖²,  Dᵀr = Dᵀx - G[:, I] γ.

Shapes are static: at most `max_atoms` atoms per signal, unused slots padded (index 0, coefficient
0). One signal runs a `lax.while_loop` that stops when its residual energy ‖r‖² is at most its
target ε² (or when `max_atoms` are taken); vmapped over a batch, the loop runs while any signal is
still active and the finished ones are frozen by a mask (JAX's batching rule for `while_loop`).
Batches are processed `chunk_size` signals at a time (`lax.map`), so memory is bounded.

Differences from scikit-learn's `orthogonal_mp_gram` (which otherwise selects the same atoms):
a signal with ‖x‖² ≤ ε² takes zero atoms here (scikit-learn always takes at least one), and an
atom already on the support is never re-selected (scikit-learn stops instead; in exact arithmetic
their correlation is zero, so this only matters for degenerate dictionaries).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp


class OmpResult(NamedTuple):
  """Sparse codes of P signals with at most K atoms each.

  indices: (P, K) int32 atom indices, valid in slots `< n_atoms`, in order of selection (0 elsewhere).
  coefs: (P, K) coefficients of those atoms (0 in unused slots).
  n_atoms: (P,) int32 number of atoms taken.
  residual_sq: (P,) final residual energy ‖x - Dγ‖².
  """
  indices: jax.Array
  coefs: jax.Array
  n_atoms: jax.Array
  residual_sq: jax.Array


def _omp_one(gram: jax.Array, dtx: jax.Array, norm_sq: jax.Array, eps_sq: jax.Array,
             max_atoms: int) -> OmpResult:
  """Batch-OMP for one signal: dtx (N,), norm_sq and eps_sq scalars. Vmap for a batch."""
  n = gram.shape[0]
  K = max_atoms
  dtype = dtx.dtype
  tiny = jnp.finfo(dtype).eps
  slots = jnp.arange(K)

  def cond(s):
    k, _, _, _, _, _, _, err, dependent = s
    return (k < K) & (err > eps_sq) & ~dependent

  def body(s):
    k, idx, selected, linv, z, grows, alpha, err, dependent = s
    lam = jnp.argmax(jnp.where(selected, -jnp.inf, jnp.abs(alpha)))
    g_row = gram[lam]                      # (N,) = G[lam, :]
    g = grows[:, lam]                      # (K,) G[I, lam], zero in empty slots
    w = linv @ g                           # (K,) zero beyond slot k
    d_sq = g_row[lam] - w @ w
    ok = d_sq > tiny                       # selected atoms dependent: stop (as scikit-learn)
    d = jnp.sqrt(jnp.where(ok, d_sq, 1.0))
    new_row = (jnp.where(slots == k, 1.0, 0.0).astype(dtype) - linv.T @ w) / d
    z_k = (dtx[lam] - w @ z) / d
    linv2 = linv.at[k].set(new_row)
    z2 = z.at[k].set(z_k)
    grows2 = grows.at[k].set(g_row)
    gamma = linv2.T @ z2
    alpha2 = dtx - gamma @ grows2
    err2 = norm_sq - z2 @ z2
    new = (k + 1, idx.at[k].set(lam.astype(jnp.int32)), selected.at[lam].set(True), linv2, z2,
           grows2, alpha2, err2, dependent)
    old = (k, idx, selected, linv, z, grows, alpha, err, jnp.logical_not(ok))
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

  s0 = (jnp.asarray(0, jnp.int32), jnp.zeros(K, jnp.int32), jnp.zeros(n, bool),
        jnp.zeros((K, K), dtype), jnp.zeros(K, dtype), jnp.zeros((K, n), dtype), dtx,
        jnp.asarray(norm_sq, dtype), jnp.asarray(False))
  k, idx, _, linv, z, _, _, err, _ = jax.lax.while_loop(cond, body, s0)
  gamma = linv.T @ z
  return OmpResult(idx, gamma, k, err)


@partial(jax.jit, static_argnames=("max_atoms", "chunk_size"))
def batch_omp(gram: jax.Array, dtx: jax.Array, max_atoms: int, eps_sq=None, norms_sq=None, *,
              chunk_size: int = 4096) -> OmpResult:
  """Sparse-codes P signals against one dictionary with Batch-OMP.

  Args:
    gram: (N, N) Gram matrix DᵀD of a dictionary with unit-norm atoms.
    dtx: (P, N) correlations Dᵀx of the signals.
    max_atoms: K, the most atoms per signal (static).
    eps_sq: target residual energy ε² per signal, scalar or (P,); a signal stops as soon as
      ‖x - Dγ‖² ≤ ε² (and takes no atom when ‖x‖² ≤ ε²). None: exactly `max_atoms` atoms each
      (unless the support becomes linearly dependent).
    norms_sq: (P,) ‖x‖², required with `eps_sq`.
    chunk_size: signals coded at once (static); bounds memory to about chunk_size·K·N floats.

  Returns:
    `OmpResult` with (P, K) indices and coefficients, (P,) n_atoms and residual energies.
  """
  dtx = jnp.asarray(dtx)
  P = dtx.shape[0]
  if eps_sq is None:
    eps = jnp.full((P,), -jnp.inf, dtx.dtype)
    norms = jnp.zeros((P,), dtx.dtype) if norms_sq is None else jnp.broadcast_to(norms_sq, (P,))
  else:
    if norms_sq is None:
      raise ValueError("batch_omp: norms_sq (‖x‖² per signal) is required with eps_sq")
    eps = jnp.broadcast_to(jnp.asarray(eps_sq, dtx.dtype), (P,))
    norms = jnp.broadcast_to(jnp.asarray(norms_sq, dtx.dtype), (P,))
  one = lambda args: _omp_one(gram, args[0], args[1], args[2], max_atoms)
  return jax.lax.map(one, (dtx, norms, eps), batch_size=min(chunk_size, P))


def omp_encode(dictionary: jax.Array, signals: jax.Array, max_atoms: int, eps_sq=None, *,
               chunk_size: int = 4096) -> OmpResult:
  """Batch-OMP of signals (P, n) on `dictionary` (n, N) with unit-norm columns (see `batch_omp`)."""
  gram = dictionary.T @ dictionary
  dtx = signals @ dictionary
  norms = jnp.sum(signals * signals, axis=-1)
  return batch_omp(gram, dtx, max_atoms, eps_sq, norms, chunk_size=chunk_size)


def dense_codes(result: OmpResult, n_dict: int) -> jax.Array:
  """Sparse codes as a dense (P, N) coefficient matrix (unused slots contribute nothing)."""
  P, K = result.indices.shape
  valid = jnp.arange(K)[None, :] < result.n_atoms[:, None]
  rows = jnp.broadcast_to(jnp.arange(P)[:, None], (P, K))
  vals = jnp.where(valid, result.coefs, 0.0)
  return jnp.zeros((P, n_dict), result.coefs.dtype).at[rows, result.indices].add(vals)


def reconstruct(dictionary: jax.Array, result: OmpResult) -> jax.Array:
  """Dγ for every signal: (P, n), gathering only the K selected atoms of each."""
  K = result.indices.shape[1]
  valid = jnp.arange(K)[None, :] < result.n_atoms[:, None]
  atoms = dictionary.T[result.indices]                     # (P, K, n)
  return jnp.einsum("pk,pkn->pn", jnp.where(valid, result.coefs, 0.0), atoms)
