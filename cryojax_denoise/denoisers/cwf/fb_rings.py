"""Fast exact Fourier–Bessel transform on the pixel grid by D4 orbits (`steerable` uses it for L >= 48).

The FB functions sampled on the pixels, ψ_kq(p) = c_kq J_k(z_kq r_p / R) e^{ikθ_p}, are separable in
polar coordinates, and the pixel grid is invariant under the 8 rotations/reflections of the square
(D4) about the centre pixel. An orbit {R^m (x0, y0), R^m (x0, −y0)}, m = 0..3 (R = +90°,
x0 >= y0 >= 0) holds up to 8 pixels of one radius r_o at angles ±θ_o + mπ/2, so

    Σ_{p∈o} x_p e^{−ikθ_p} = e^{−ikθ_o} P_o(s) + e^{ikθ_o} Q_o(s),   s = k mod 4,

P_o, Q_o the 4-point DFTs (over m) of the orbit's two sets of pixels. With A = P + Q, D = P − Q,
Re a_kq = Σ_o Jc (Re A) + Js (Im D) and Im a_kq = Σ_o Jc (Im A) − Js (Re D), Jc/Js = c_kq J_k(z_kq r_o/R)
cos/sin(kθ_o). All k of one residue s share their inputs, so the analysis Ψᴴx is a 4-point DFT per
orbit and then one real GEMM per residue, (2B, 2 n_orb) x (2 n_orb, Σ_{k≡s} p_k); the synthesis is the
same GEMMs transposed (and only over the k < k1 it is given). It is the dense matrix's map exactly
(float32 rounding aside), so adjointness, steerability and CWF's results are unchanged.

Cost: 4 n_orb · count ≈ L²/2 · count real MACs per image (the dense matrix: 2 n_disk · count ≈
1.6 L² · count), all in large GEMMs, and memory 2 n_orb · count floats (66 MB at 128², not the dense
518 MB). Considered: ASPIRE's FFB (polar NUFFT of the image, angular FFT, Gauss–Legendre radial
quadrature) needs only ~n_rho · count radial work, but it is a different, approximate operator (the
FB functions are not band-limited, so its coefficients differ from the pixel-sampled ones), its
spreading and interpolation are gather/scatter bound on CPU, and its synthesis is not zero outside
the disk.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_M = np.arange(4)
C4, S4 = np.cos(0.5 * np.pi * np.outer(_M, _M)), -np.sin(0.5 * np.pi * np.outer(_M, _M))  # F4 = C4 + i S4


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Layout:
  """Static index data: sizes (p_k per k) and, per residue s, the padded-layout positions of its
  columns (k ascending, then q) in a (K+1)*pmax flat block array."""
  sizes: tuple
  pmax: int

  def columns(self, s: int, k1: int) -> np.ndarray:
    """Flat padded positions k*pmax + q of residue s's columns with k < k1."""
    return np.concatenate([k * self.pmax + np.arange(p) for k, p in enumerate(self.sizes) if k % 4 == s and k < k1]
                          + [np.zeros(0, int)])

  def gather(self) -> np.ndarray:
    """Index into the residue-concatenated columns (+1 zero column at the end) for each padded slot."""
    order = np.concatenate([self.columns(s, len(self.sizes)) for s in range(4)])
    out = np.full(len(self.sizes) * self.pmax, len(order))
    out[order] = np.arange(len(order))
    return out


class Rings(NamedTuple):
  """Orbit form of an FB basis (pytree). plus/minus (n_orb, 4): flat pixel indices of R^m(x0, ±y0)
  (L*L = a zero pad); inverse (L*L,) each pixel's slot in the (n_orb * 8 + 1) flat slot array (the
  last = zero); mats: per residue s, (Σ_{k≡s} p_k, 2 n_orb) float32 [Jc | Js]; layout (static)."""
  plus: jax.Array
  minus: jax.Array
  inverse: jax.Array
  mats: tuple
  layout: Layout


def orbits(L: int, R: float):
  """Disk orbits of the (L, L) grid about pixel (L//2, L//2): (plus, minus, theta, r, inverse). A disk
  reaching past the grid (R > L/2) keeps the orbits with a pixel on it; the others' slots are the pad."""
  c, pad = L // 2, L * L

  def flat(x, y):  # x = column offset, y = row offset; off the grid: the zero pad
    return (y + c) * L + (x + c) if -c <= x < L - c and -c <= y < L - c else pad

  plus, minus, theta, rad = [], [], [], []
  for x0 in range(int(np.ceil(R)) + 1):
    for y0 in range(x0 + 1):
      r = np.hypot(x0, y0)
      if r >= R:
        continue
      pts = [(x0, y0), (-y0, x0), (-x0, -y0), (y0, -x0)]
      mirror = [(x0, -y0), (y0, x0), (-x0, y0), (-y0, -x0)]
      p_row = [flat(*p) for p in pts] if r > 0 else [flat(0, 0), pad, pad, pad]
      m_row = [flat(*p) for p in mirror] if 0 < y0 < x0 else [pad] * 4
      if min(p_row + m_row) == pad:
        continue
      plus.append(p_row)
      minus.append(m_row)
      theta.append(np.arctan2(y0, x0))
      rad.append(r)
  plus, minus = np.array(plus), np.array(minus)
  slots = np.concatenate([plus, minus], 1).ravel()  # (n_orb * 8,)
  inverse = np.full(pad, len(slots))
  real = slots < pad
  inverse[slots[real]] = np.flatnonzero(real)
  return plus, minus, np.array(theta), np.array(rad), inverse


def build(L: int, R: float, radii: np.ndarray, columns: list) -> Rings:
  """Rings of an FB basis from its radial functions: `radii` (n_radii,) the distinct pixel radii of
  the disk (ascending) and `columns[k]` (n_radii, p_k) c_kq J_k(z_kq r / R) there (unit norm on the
  pixels)."""
  plus, minus, theta, r, inverse = orbits(L, R)
  r_inv = np.searchsorted(radii, r)
  if not np.allclose(radii[np.minimum(r_inv, len(radii) - 1)], r, rtol=0, atol=1e-9):
    raise ValueError("radii do not match the disk of the grid")
  mats = []
  for s in range(4):
    parts = []
    for k in range(s, len(columns), 4):
      j = columns[k][r_inv].T  # (p_k, n_orb)
      parts.append(np.concatenate([j * np.cos(k * theta), j * np.sin(k * theta)], 1).astype(np.float32))
    mats.append(jnp.asarray(np.concatenate(parts + [np.zeros((0, 2 * len(r)), np.float32)])))  # 1 GB at 256²
  layout = Layout(tuple(int(c.shape[1]) for c in columns), int(columns[0].shape[1]))
  i32 = lambda a: jnp.asarray(a, jnp.int32)  # noqa: E731
  return Rings(i32(plus), i32(minus), i32(inverse), tuple(mats), layout)


def analyse(rings: Rings, images: jax.Array) -> jax.Array:
  """Ψᴴ x in padded block form: (B, H, W) real -> (B, K+1, pmax) complex64."""
  b = images.shape[0]
  x = jnp.asarray(images, jnp.float32).reshape(b, -1)
  x = jnp.concatenate([x, jnp.zeros((b, 1), x.dtype)], 1)
  xp, xm = x[:, rings.plus], x[:, rings.minus]  # (B, n_orb, 4)
  add, sub = xp + xm, xp - xm
  outs = []
  for s, mat in enumerate(rings.mats):
    ar, ai, dr, di = add @ C4[:, s], add @ S4[:, s], sub @ C4[:, s], sub @ S4[:, s]  # (B, n_orb)
    lhs = jnp.concatenate([jnp.concatenate([ar, di], 1), jnp.concatenate([ai, -dr], 1)], 0)  # (2B, 2 n_orb)
    outs.append(lhs @ mat.T)  # (2B, Σ p_k): real parts, then imaginary parts
  flat = jnp.concatenate(outs + [jnp.zeros((2 * b, 1), jnp.float32)], 1)[:, rings.layout.gather()]
  k1, pmax = len(rings.layout.sizes), rings.layout.pmax
  return jax.lax.complex(flat[:b], flat[b:]).reshape(b, k1, pmax)


def synthesise(rings: Rings, blocks: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """Re Σ_k w_k Σ_q a_kq ψ_kq for padded blocks (B, k1, pmax) of k < k1 (any k1 <= K+1; the rest 0):
  (B, H, W) float32, zero outside the disk. The transpose of `analyse` (w_0 = 1, w_k = 2)."""
  b, k1 = blocks.shape[:2]
  w = jnp.asarray(np.where(np.arange(k1) == 0, 1.0, 2.0), jnp.float32)[None, :, None]
  flat = (blocks * w).reshape(b, -1)
  n_orb = rings.plus.shape[0]
  vp = jnp.zeros((b, n_orb, 4), jnp.float32)
  vm = vp
  for s, mat in enumerate(rings.mats):
    cols = rings.layout.columns(s, k1)
    if len(cols) == 0:
      continue
    a = flat[:, cols]
    out = jnp.concatenate([jnp.real(a), jnp.imag(a)], 0) @ mat[:len(cols)]  # (2B, 2 n_orb)
    x1, x4, x3, x2 = out[:b, :n_orb], out[:b, n_orb:], out[b:, :n_orb], out[b:, n_orb:]
    # plus slots: Re(i^{sm} S+) with S+ = (X1 − X2) + i(X3 + X4); minus slots: S− = (X1 + X2) + i(X3 − X4)
    cos_m, sin_m = C4[s], -S4[s]  # cos(s m π/2), sin(s m π/2) over m
    vp = vp + (x1 - x2)[..., None] * cos_m - (x3 + x4)[..., None] * sin_m
    vm = vm + (x1 + x2)[..., None] * cos_m - (x3 - x4)[..., None] * sin_m
  slots = jnp.concatenate([vp, vm], 2).reshape(b, -1)
  slots = jnp.concatenate([slots, jnp.zeros((b, 1), slots.dtype)], 1)
  return slots[:, rings.inverse].reshape(b, *shape)
