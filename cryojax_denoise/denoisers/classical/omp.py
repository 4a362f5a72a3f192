"""Batch-OMP: orthogonal matching pursuit from the Gram matrix, as a jit-compiled batched kernel.

After Rubinstein, Zibulevsky & Elad, "Efficient implementation of the K-SVD algorithm using
Batch Orthogonal Matching Pursuit" (Technion CS-2008-08). Each signal x is coded only through
G = DᵀD (N, N) and Dᵀx (N,), which is cheap when many signals share one dictionary D (n, N).
Atoms are added greedily (largest |Dᵀr|); the least-squares coefficients on the support I come
from the progressively updated Cholesky factor L of G[I, I] (one new row per atom). Next to L we
keep Q = L⁻¹ G[I, :] (one row per atom), so a step costs O(k·N) and needs no triangular solve:

  w = Q[:, lam] (= L⁻¹ G[I, lam]),  d = sqrt(G[lam, lam] - wᵀw),  new row of L = [wᵀ, d],
  new row of Q = (G[lam, :] - wᵀQ) / d,  z_k = (Dᵀx[lam] - wᵀz) / d,
  Dᵀr ← Dᵀr - z_k · (new row of Q),  ‖r‖² ← ‖r‖² - z_k²,  and at the end γ = L⁻ᵀ z.

Shapes are static: at most `max_atoms` atoms per signal, unused slots padded (index 0,
coefficient 0). A batch of signals is coded together with masks: a signal is active while its
residual energy ‖r‖² exceeds its target ε² (a signal with ‖x‖² ≤ ε² takes no atom), finished
signals are frozen while the others go on, and the loop (`lax.while_loop`) stops once no signal
of the chunk is active. Signals are sorted by ‖x‖² - ε² first, so chunks with nothing to code (most of
them at cryo-EM SNRs) cost almost nothing, then processed `chunk_size` at a time (`lax.map`), so
memory is bounded. Everything jits and vmaps.

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


def _omp_chunk(gram: jax.Array, dtx: jax.Array, norm_sq: jax.Array, eps_sq: jax.Array,
               max_atoms: int) -> OmpResult:
  """Batch-OMP of a chunk of signals: dtx (P, N), norm_sq and eps_sq (P,)."""
  P, n = dtx.shape
  K = max_atoms
  dtype = dtx.dtype
  tiny = jnp.finfo(dtype).eps
  rows = jnp.arange(P)

  def cond(s):
    return (s[0] < K) & jnp.any(s[1])

  def body(s):
    k, active, cnt, idx, selected, L, Q, z, alpha, err = s
    lam = jnp.argmax(jnp.where(selected, -jnp.inf, jnp.abs(alpha)), axis=1)     # (P,)
    g_row = gram[lam]                                       # (P, N) = G[lam, :]
    w = Q[:, rows, lam].T                                   # (P, K) L⁻¹ G[I, lam], 0 in empty slots
    d_sq = g_row[rows, lam] - jnp.sum(w * w, axis=1)
    take = active & (d_sq > tiny)                           # dependent support: stop (as scikit-learn)
    d = jnp.sqrt(jnp.where(take, d_sq, 1.0))
    q = (g_row - jnp.sum(w.T[:, :, None] * Q, axis=0)) / d[:, None]   # new row of L⁻¹ G[I, :]
    z_k = (dtx[rows, lam] - jnp.sum(w * z, axis=1)) / d
    q = jnp.where(take[:, None], q, 0.0)
    z_k = jnp.where(take, z_k, 0.0)
    l_row = jnp.where(take[:, None], jnp.where(jnp.arange(K) == k, d[:, None], w), 0.0)
    alpha = alpha - z_k[:, None] * q
    err = jnp.where(take, err - z_k * z_k, err)
    idx = idx.at[:, k].set(jnp.where(take, lam, 0).astype(jnp.int32))
    selected = selected.at[rows, lam].set(selected[rows, lam] | take)
    active = take & (err > eps_sq)
    return (k + 1, active, cnt + take, idx, selected, L.at[:, k].set(l_row), Q.at[k].set(q),
            z.at[:, k].set(z_k), alpha, err)

  s0 = (jnp.asarray(0, jnp.int32), norm_sq > eps_sq, jnp.zeros((P,), jnp.int32),
        jnp.zeros((P, K), jnp.int32), jnp.zeros((P, n), bool), jnp.zeros((P, K, K), dtype),
        jnp.zeros((K, P, n), dtype), jnp.zeros((P, K), dtype), dtx, norm_sq.astype(dtype))
  _, _, n_atoms, idx, _, L, _, z, _, err = jax.lax.while_loop(cond, body, s0)
  # γ = L⁻ᵀ z on the support; empty slots get a unit diagonal so they solve to γ = 0.
  empty = (jnp.arange(K)[None, :] >= n_atoms[:, None]).astype(dtype)
  L = L + empty[:, :, None] * jnp.eye(K, dtype=dtype)
  gamma = jax.scipy.linalg.solve_triangular(L, z[..., None], lower=True, trans=1)[..., 0]
  return OmpResult(idx, gamma, n_atoms, err)


@partial(jax.jit, static_argnames=("max_atoms", "chunk_size"))
def batch_omp(gram: jax.Array, dtx: jax.Array, max_atoms: int, eps_sq=None, norms_sq=None, *,
              chunk_size: int = 1024) -> OmpResult:
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
  # Most demanding signals first: chunks whose signals all meet their target skip every step.
  order = jnp.argsort(eps - norms)
  inverse = jnp.argsort(order)
  chunk = min(chunk_size, P)
  n_chunks = -(-P // chunk)
  pad = n_chunks * chunk - P
  split = lambda a: jnp.pad(a[order], [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(
      n_chunks, chunk, *a.shape[1:])
  # padded signals have ‖x‖² = 0 ≤ ε² = 0, so they take no atom
  one = lambda args: _omp_chunk(gram, args[0], args[1], args[2], max_atoms)
  out = jax.lax.map(one, (split(dtx), split(norms), split(eps)))
  return jax.tree.map(lambda a: a.reshape(n_chunks * chunk, *a.shape[2:])[:P][inverse], out)


def omp_encode(dictionary: jax.Array, signals: jax.Array, max_atoms: int, eps_sq=None, *,
               chunk_size: int = 1024) -> OmpResult:
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
