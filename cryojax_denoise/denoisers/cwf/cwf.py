"""Covariance Wiener filtering (CWF; Bhamre, Zhang & Singer, J. Struct. Biol. 2016) in JAX.

Model: particle i is y_i = h_i * x_i + n_i (h_i its CTF, n_i white noise of variance σ²), and the
clean, CTF-free images x_i are drawn from a rotation-invariant distribution. In the steerable
Fourier–Bessel basis (`steerable.fb_basis`) the coefficients b_i = Ψᴴ y_i split by angular
frequency k, the (angle-averaged) CTF acts on block k as a real symmetric M_ik, the mean lives in
block 0 and the covariance is block diagonal, C = diag(C_k). Estimated from all particles:

* mean   μ = (Σ M_i0²)⁻¹ Σ M_i0 b_i0 (least squares over particles with their own CTFs);
* covariance: least squares Σ_i ‖M_i C M_i − (v_i v_iᴴ − σ² M_i²)‖²_F, v_i = b_i − M_i μ, i.e.
  (1/N) Σ_i P_i C P_i = B with P_i = M_i², B = (1/N) Σ_i M_i v_i v_iᴴ M_i − σ² P̄; by default the
  noise term is removed instead by eigenvalue shrinkage of B whitened by P̄^{1/2} ("frobenius" of
  Donoho, Gavish & Johnstone, as ASPIRE's `shrink_covar`, γ = p_k / N; `solvers`). The system is solved by
  preconditioned conjugate gradients on all blocks with a nonzero shrunk B at once (the others' C is 0), with Σ_i P_i C P_i taken as
  Σ_g n_g P̄_g C P̄_g over `n_groups` k-means clusters of similar CTF profiles (P̄_g their exact mean
  of M_i²; exact when N <= n_groups), and C made positive semidefinite;
* Wiener estimate  x̂_i = μ + C M_i (M_i C M_i + σ_i² I)⁻¹ (b_i − M_i μ), through C = F Fᴴ of
  rank r (push-through identity: an r×r solve per block and particle).

Output: the estimate times each particle's CTF (`modulate=True`, default: comparable with the
CTF-modulated clean images the other methods are scored against), or CTF-free (`modulate=False`).
`hermitian=False` (default, as ASPIRE) keeps the real part of each block's covariance (pooled cos
and sin coefficients); `hermitian=True` fits the full complex steerable covariance.

Sweep/denoise: `denoisers.fit("cwf", images, noise_std, ctf)(batch, noise_std, ctf_batch)`, with
`ctf = data.ctf.ctf_grid(ds.particles, ds.optics, size, ds.pixel_size)` (None without CTF).

API (dataset-level; `ctf` is (N, H, W) float32 CTF values on the unshifted FFT grid, RELION's sign,
None = identity; `noise_std` a scalar, (N,) or None = estimated per image):

    model = cwf.fit(images, noise_std, ctf)               # (N, H, W): sample of up to ~10⁴ particles
    out = cwf.apply(model, batch, noise_std, ctf_batch)   # (B, H, W), any number of batches
    out = cwf.cwf_denoise(images, noise_std, ctf=ctf)     # fit on the batch and apply
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cryojax_denoise import sharding as sh
from cryojax_denoise.denoisers.cwf import budget as bdg
from cryojax_denoise.denoisers.cwf import solvers as sv
from cryojax_denoise.denoisers.cwf import steerable as st
from cryojax_denoise.denoisers.registry import register
from cryojax_denoise.errors import InputError
from cryojax_denoise.progress import Progress


class CWFModel(NamedTuple):
  """A fitted CWF (pytree): basis, mean (pmax,) of block 0, covariance factor (k1, pmax, r) with
  C_k = F_k F_kᴴ (k1 <= K+1: blocks from k1 on are 0), `tiers`: the blocks of nonzero rank in (at most)
  two groups, each (block indices (n,), F (n, pmax, r_t), G F (n, n_rho, r_t)) with r_t the group's
  largest rank (the Wiener step costs ∝ Σ n·r_t, not k1·r), the fit's noise variance and size."""
  basis: st.FBBasis
  mean: jax.Array
  factor: jax.Array
  tiers: tuple
  noise_var: jax.Array
  n_fit: jax.Array

  @property
  def covariance(self) -> jax.Array:
    """C (K+1, pmax, pmax) (blocks past the factor's are 0)."""
    c = self.factor @ jnp.conj(jnp.swapaxes(self.factor, -1, -2))
    return jnp.pad(c, ((0, self.basis.n_blocks - c.shape[0]), (0, 0), (0, 0)))


def _noise_var(images, noise_std) -> np.ndarray:
  from cryojax_denoise.denoisers.noise import noise_std_or_estimate
  return np.asarray(noise_std_or_estimate(jnp.asarray(images), noise_std), np.float64) ** 2


def _profiles(basis, ctf, n):
  if ctf is None:
    return jnp.ones((n, basis.radial.shape[1]), jnp.float32)
  return st.radial_profile(basis, jnp.asarray(ctf, jnp.float32))


def _batches(n: int, size: int):
  for start in range(0, n, size):
    yield start, min(start + size, n)


def _padded(x, size):
  """x (n, ...) padded to (size, ...) by repeating row 0, with the weight mask (size,)."""
  n = x.shape[0]
  if n == size:
    return x, jnp.ones(size, jnp.float32)
  fill = jnp.broadcast_to(x[:1], (size - n, *x.shape[1:]))
  return jnp.concatenate([x, fill]), (jnp.arange(size) < n).astype(jnp.float32)


@jax.jit
def _coefs(basis, images):
  """Padded coefficients (B, K+1, pmax) complex64 of (B, H, W) images."""
  return st.expand_blocks(basis, images)


def _m_mean(basis, h, mean):
  """M_i0 μ (B, p): the CTF applied to the mean (block 0), profiles h (B, n_rho)."""
  g0 = basis.radial[0]
  return jnp.einsum("rp,br,r->bp", g0, h, g0 @ mean)


@jax.jit
def _block_stats(basis, b, h, w):
  """Σ_i M_i b_i b_iᴴ M_i (K+1, p, p) of a batch (weights w mask padding; block 0 is redone with the mean)."""
  u = st.apply_radial(basis, h, b)
  return jnp.einsum("b,bkp,bkq->kpq", w, u, jnp.conj(u))


@jax.jit
def _block0_stats(basis, mean, b0, h):
  """Σ_i M_i0 v_i0 v_i0ᴴ M_i0 (p, p), v_i0 = b_i0 − M_i0 μ, from every particle's block 0 (N, p)."""
  g = basis.radial[0].astype(b0.dtype)
  v = b0 - _m_mean(basis, h, mean)
  u = (h * (v @ g.T)) @ g  # Gᵀ (h ⊙ G v), (N, p)
  return jnp.einsum("bp,bq->pq", u, jnp.conj(u))


def fit(images, noise_std=None, ctf=None, *, shrink: bool = True, hermitian: bool = False,
        n_groups: int = 32, cg_iters: int = 40, batch_size: int = 256, n_rho: int | None = None,
        memory_gb: float | None = None, reach: float | None = 0.0) -> CWFModel:
  """Mean and covariance of the clean CTF-free images from (N, H, W) particles and their CTFs.

  `images`, `ctf`: arrays or lazy `budget.Rows` (read a batch at a time); `noise_std`: scalar, (N,) or
  None (estimated); its mean square is the fit's σ². Streamed over batches: memory is the basis, the
  block accumulators and per-batch work (`budget`), with the batch the largest within `memory_gb`
  (None: no limit but `batch_size`), not the N images or their coefficients. `reach`: pixels the basis
  disk reaches past the image edge (0: the inscribed disk, as autoencoder_cwf's prior; None:
  `steerable.basis_reach(H)`, what the registered method, `cwf_denoise` and `fit_denoiser`, use).
  """
  return _fit(images, noise_std, ctf, shrink, hermitian, n_groups, cg_iters, batch_size, n_rho, memory_gb,
              reach=reach)[0]


def _fit(images, noise_std, ctf, shrink, hermitian, n_groups, cg_iters, batch_size, n_rho, memory_gb=None,
         keep_coefs=False, reach=None):
  """(model, padded coefficients (N, K+1, p) when `keep_coefs` else None, radial CTF profiles (N, n_rho)).

  One pass over the particles: Σ_i M_i b_i b_iᴴ M_i for the blocks k >= 1 (the mean lives in block 0
  only, so their v_i = b_i), and each particle's block 0 and CTF profile, from which the mean, block 0's
  term and the CTF groups follow exactly as from the whole stack."""
  n, H, W = images.shape
  if H != W:
    raise InputError(f"cwf needs square images, got {H}x{W}")
  reach = st.basis_reach(H) if reach is None else float(reach)
  if not 0 <= reach <= H:
    raise InputError(f"cwf: reach (pixels the basis disk reaches past the image edge) must be in [0, {H}], "
                     f"got {reach}")
  batch = int(batch_size) if memory_gb is None else bdg.fit_batch(H, n, memory_gb, int(batch_size), n_rho, n_groups,
                                                                  reach)
  basis = st.fb_basis(H, n_rho, reach=reach)
  pmax = basis.pmax
  batch, place = sh.batch_placement(min(batch, n))
  std = None if noise_std is None else np.asarray(noise_std, np.float32)
  var_sum, rhs, b0s, hs, coefs = 0.0, None, [], [], []
  bar = Progress(n, f"cwf fit (batches of {batch})", unit="img", every_s=30.0) if n > 4 * batch else None
  for s, e in _batches(n, batch):
    x = jnp.asarray(images[s:e], jnp.float32)
    var_sum += float(np.sum(_noise_var(x, std if std is None or std.ndim == 0 else std[s:e])))
    h = _profiles(basis, None if ctf is None else ctf[s:e], e - s)
    xb, w = _padded(x, batch)
    b = _coefs(basis, place(xb))
    part = _block_stats(basis, b, place(_padded(h, batch)[0]), place(w))
    rhs = part if rhs is None else rhs + part
    b0s.append(np.asarray(b[: e - s, 0]))
    hs.append(np.asarray(h))
    if keep_coefs:
      coefs.append(b[: e - s])
    del x, xb, b, part
    if bar is not None:
      bar.update(e - s)
  noise_var = var_sum / n
  b0, h_np = np.concatenate(b0s), np.concatenate(hs)
  h_all = jnp.asarray(h_np)

  g0 = np.asarray(basis.radial[0], np.float64)
  hd = h_np.astype(np.float64)
  r0 = g0.T @ (hd * (np.real(b0).astype(np.float64) @ g0.T)).sum(0)
  pbar = st.square_sum_blocks(basis, jnp.asarray(hd.T @ hd / n, jnp.float32))  # mean M_i² (K+1, p, p)
  a0 = np.asarray(pbar[0], np.float64) * n
  p0 = int(basis.sizes[0])
  mean = np.zeros(pmax)
  mean[:p0] = np.linalg.lstsq(a0[:p0, :p0], r0[:p0], rcond=1e-10)[0]
  mean = jnp.asarray(mean, jnp.float32)
  rhs = rhs.at[0].set(_block0_stats(basis, mean, jnp.asarray(b0), h_all))

  groups = sv.ctf_groups(h_np, n_groups) if ctf is not None else np.zeros(n, int)
  g = int(groups.max()) + 1
  hh_groups = np.stack([hd[groups == j].T @ hd[groups == j] for j in range(g)])
  counts = np.bincount(groups, minlength=g).astype(np.float32)
  hh_groups = jnp.asarray(hh_groups / counts[:, None, None], jnp.float32)  # P̄_g from it, on the live blocks only
  rhs = rhs / n
  if not hermitian:
    rhs = jnp.real(rhs)  # real symmetric C: real eigh, factor and Wiener solves (complex ones are slow)
  mask = (jnp.arange(pmax)[None, :] < basis.sizes[:, None]).astype(jnp.float32)
  rhs = sv.noise_correct(rhs, pbar, mask, basis.sizes.astype(jnp.float32), jnp.float32(noise_var), n,
                         shrink=bool(shrink))
  if ctf is None:
    cov = rhs  # P_i = I: the least-squares system is the identity
  else:  # CG only on blocks whose shrunk rhs is nonzero (the others' solution is 0): most of them at 128²
    live = sv.live_blocks(rhs)
    weights, iters, m = jnp.asarray(counts / n), int(cg_iters), mask[live]
    pg = sv.group_blocks(basis.radial[live], hh_groups)
    cov = sv.solve_covariance(pg, weights, jnp.real(rhs[live]), m, iters=iters)
    if hermitian:
      cov = cov + 1j * sv.solve_covariance(pg, weights, jnp.imag(rhs[live]), m, iters=iters)
    cov = jnp.zeros_like(rhs).at[live].set(cov.astype(rhs.dtype))
  return _model(basis, mean, cov, noise_var, n), (jnp.concatenate(coefs) if keep_coefs else None), h_all


def _model(basis, mean, cov, noise_var, n) -> CWFModel:
  """PSD projection of C and its factor F (rank r = largest block rank, at least 1; blocks up to the
  last nonzero one: high angular frequencies carry no signal at cryo-EM SNRs, and skipping them is
  most of the Wiener step's cost)."""
  lam, vec = np.linalg.eigh(np.asarray(cov, np.complex128 if np.iscomplexobj(cov) else np.float64))
  keep = lam > 1e-7 * max(lam.max(), 1e-30)
  lam = np.where(keep, lam, 0.0)
  ranks = keep.sum(-1)
  r, k1 = max(1, int(ranks.max())), int(np.flatnonzero(ranks).max(initial=0)) + 1
  factor = (vec[..., ::-1][..., :r] * np.sqrt(lam[..., ::-1][..., :r])[:, None, :])[:k1]
  dtype = jnp.complex64 if np.iscomplexobj(factor) else jnp.float32
  live = np.flatnonzero(ranks[:k1])
  cut = min(np.unique(ranks[live]), key=lambda c: (ranks[live] > c).sum() * r + (ranks[live] <= c).sum() * c,
            default=0)
  tiers = []
  for sel, rt in ((live[ranks[live] > cut], r), (live[ranks[live] <= cut], cut)):
    if len(sel):
      f = jnp.asarray(factor[sel, :, :rt], dtype)
      gf = jnp.einsum("krp,kps->krs", basis.radial[sel].astype(dtype), f)
      tiers.append((jnp.asarray(sel, jnp.int32), f, gf))
  return CWFModel(basis, mean, jnp.asarray(factor, dtype), tuple(tiers), jnp.float32(noise_var), jnp.int32(n))


@jax.jit
def _apply_batch(model: CWFModel, b, h, noise_var, ctf):
  """Wiener estimates (B, H, W) from padded coefficients b (B, K+1, p), profiles h (B, n_rho)."""
  basis = model.basis
  k1 = model.factor.shape[0]
  y = b[:, :k1].at[:, 0].add(-_m_mean(basis, h, model.mean))
  parts = []
  for idx, _, z in model.tiers:  # z = G F (n, n_rho, r_t), real unless hermitian
    g = basis.radial[idx]
    hz = lambda part: jnp.einsum("krp,br,krs->bkps", g, h, part)  # noqa: E731  (B, n, p, r_t)
    u = jax.lax.complex(hz(z.real), hz(z.imag)) if jnp.iscomplexobj(z) else hz(z)  # U = M F = Gᵀ diag(h) G F
    uh = jnp.conj(jnp.swapaxes(u, -1, -2))
    parts.append((uh, jnp.einsum("bkrp,bkps->bkrs", uh, u)))  # einsum: ~2x faster than batched @ on CPU
  trace = [jnp.real(jnp.trace(gram, axis1=-2, axis2=-1)).max() for _, gram in parts]
  eps = 1e-7 * jnp.maximum(jnp.max(jnp.stack(trace)) if trace else 0.0, 1e-30)
  est = jnp.zeros_like(y)
  for (idx, f, _), (uh, gram) in zip(model.tiers, parts):
    gram = gram + (noise_var[:, None, None, None] + eps) * jnp.eye(gram.shape[-1])
    s = sv.solve_pd(gram, jnp.einsum("bkrp,bkp->bkr", uh.astype(y.dtype), y[:, idx]))
    est = est.at[:, idx].set(jnp.einsum("kps,bks->bkp", f.astype(y.dtype), s))
  out = st.evaluate_blocks(basis, est.at[:, 0].add(model.mean))  # blocks k >= k1 are 0
  if ctf is not None:
    out = jnp.fft.ifft2(jnp.fft.fft2(out) * ctf).real
  return out


def apply(model: CWFModel, images, noise_std=None, ctf=None, *, modulate: bool = True,
          batch_size: int = 128) -> jax.Array:
  """Wiener estimates (B, H, W) of `images` with their CTFs `ctf` (B, H, W) or None (identity);
  multiplied by the CTF again when `modulate` (default)."""
  images = jnp.asarray(images, jnp.float32)
  n, H, W = images.shape
  if (H, W) != model.basis.shape:
    raise InputError(f"cwf model fitted on {model.basis.shape[0]}x{model.basis.shape[1]} images, got {H}x{W}")
  return _apply(model, images, None, noise_std, ctf, modulate, batch_size)


def _apply(model, images, coefs, noise_std, ctf, modulate, batch_size, h_all=None):
  n = images.shape[0]
  var = jnp.broadcast_to(jnp.asarray(_noise_var(images, noise_std), jnp.float32), (n,))
  h_all = _profiles(model.basis, ctf, n) if h_all is None else h_all
  ctf_out = None if (ctf is None or not modulate) else jnp.asarray(ctf, jnp.float32)
  batch, place = sh.batch_placement(min(int(batch_size), n))
  outs = []
  for s, e in _batches(n, batch):
    b = _coefs(model.basis, place(_padded(images[s:e], batch)[0])) if coefs is None else _padded(coefs[s:e], batch)[0]
    h, _ = _padded(h_all[s:e], batch)
    v, _ = _padded(var[s:e], batch)
    c = None if ctf_out is None else place(_padded(ctf_out[s:e], batch)[0])
    outs.append(_apply_batch(model, place(b), place(h), place(v), c)[: e - s])
  return jnp.concatenate(outs) if len(outs) > 1 else outs[0]


def cwf_denoise(images, noise_std=None, ctf=None, *, modulate: bool = True, shrink: bool = True,
                hermitian: bool = False, n_groups: int = 32, reach: float | None = None):
  """Fits CWF on the batch (B, H, W) (CTFs `ctf` (B, H, W) or None) and applies it: the per-batch
  form (`denoisers.get("cwf")`); `denoisers.fit("cwf", stack, σ, ctf)` fits once for many batches."""
  images = jnp.asarray(images, jnp.float32)
  model, coefs, h = _fit(images, noise_std, ctf, shrink, hermitian, n_groups, 40, 256, None, keep_coefs=True,
                         reach=reach)
  return _apply(model, images, coefs, noise_std, ctf, modulate, 128, h)


def fit_denoiser(images, noise_std=None, ctf=None, *, modulate: bool = True, shrink: bool = True,
                 hermitian: bool = False, n_groups: int = 32, memory_gb: float | None = None,
                 max_box: int = bdg.MAX_BOX, reach: float | None = None):
  """Registry `fit` hook: fits on `images` (N, H, W) (an array or lazy `budget.Rows`) with CTFs `ctf` and
  returns `den(images (B, H, W), noise_std=None, ctf=None) -> (B, H, W)` applying that fit. Within
  `memory_gb` (None: no limit); boxes above `max_box` (0: none) are Fourier-cropped to it for the fit
  and the Wiener step, and the estimate padded back (`budget.crop`). `reach`: as `fit`'s, of the working box
  (None: `steerable.basis_reach(box)`); `den.reach` is the one used."""
  L = int(images.shape[-1])
  box = bdg.working_box(L, max_box)
  if box != L:
    images = bdg.mapped(images, lambda x: bdg.crop(x, box), (box, box))
    ctf = bdg.mapped(ctf, lambda c: bdg.crop_ctf(c, box), (box, box))
  reach = st.basis_reach(box) if reach is None else float(reach)
  model = fit(images, noise_std, ctf, shrink=shrink, hermitian=hermitian, n_groups=n_groups, memory_gb=memory_gb,
              reach=reach)

  def denoise(batch, noise_std=None, ctf=None):
    if box == L:
      return apply(model, batch, noise_std, ctf, modulate=modulate)
    small = None if ctf is None else bdg.crop_ctf(ctf, box)
    return bdg.uncrop(apply(model, bdg.crop(batch, box), noise_std, small, modulate=modulate), L)

  denoise.model = model
  denoise.box = box
  denoise.reach = reach
  return denoise


# The fewest particles CWF is fitted on: its covariance per angular frequency k is a p_k × p_k block in
# the Fourier-Bessel basis with p_0 = L/2 radial functions (16 at 32², 32 at 64², 64 at 128²; the basis
# of `steerable.fb_basis`), and a sample covariance of N particles has rank ≤ N. Below ~50 particles even
# a 64² stack's k = 0 block is rank-deficient and the estimate is mostly the shrinkage prior: on 10 real
# particles CWF's output correlated with the reprojection no better than the raw images (0.19 vs 0.18,
# issue 31). The pipeline refuses fewer than MIN_STACK and warns below twice that.
MIN_STACK = 50

register("cwf", uses_ctf=True, fit=fit_denoiser, min_stack=MIN_STACK,
         description="covariance Wiener filter (Bhamre et al. 2016): mean and covariance of the whole "
                     "stack in a steerable Fourier-Bessel basis, per-particle CTF")(cwf_denoise)
