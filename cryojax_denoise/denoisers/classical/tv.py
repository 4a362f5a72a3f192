"""Total-variation denoising (Rudin, Osher & Fatemi 1992) by Chambolle's projection algorithm (2004).

Each image f is replaced by the minimiser of  ||u - f||² / 2 + w·TV(u),  TV the isotropic total
variation with forward differences and Neumann boundary, w = lam·σ (so the knob is scale-free, like
the other methods' thresholds). Chambolle's dual iteration, written for q = w·p (no division by w):

    u = f - div q,   q ← w (q - τ ∇u) / (w + τ |∇u|),   τ = 1/4,

converges to the minimiser u (τ ≤ 1/8 is proved; 1/4 works in practice, as Chambolle notes).
Jitted, vmapped over the batch (one w per image), `n_iter` iterations (static).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cryojax_denoise.denoisers.registry import register


def gradient(u: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Forward differences of (H, W) along y and x, zero in the last row / column (Neumann)."""
  gy = jnp.zeros_like(u).at[:-1, :].set(u[1:, :] - u[:-1, :])
  gx = jnp.zeros_like(u).at[:, :-1].set(u[:, 1:] - u[:, :-1])
  return gy, gx


def divergence(qy: jax.Array, qx: jax.Array) -> jax.Array:
  """-∇ᵀ(qy, qx) for fields that vanish in the last row / column (as `gradient`'s output does)."""
  dy = qy - jnp.pad(qy[:-1, :], ((1, 0), (0, 0)))
  dx = qx - jnp.pad(qx[:, :-1], ((0, 0), (1, 0)))
  return dy + dx


def chambolle_tv(f: jax.Array, weight: jax.Array, n_iter: int, tau: float = 0.25) -> jax.Array:
  """TV-denoised (H, W) image: `n_iter` projection steps for min ||u - f||²/2 + weight·TV(u)."""
  f = jnp.asarray(f, jnp.float32)
  weight = jnp.asarray(weight, jnp.float32)

  def step(_, q):
    qy, qx = q
    gy, gx = gradient(f - divergence(qy, qx))
    scale = weight / jnp.maximum(weight + tau * jnp.sqrt(gy ** 2 + gx ** 2), 1e-30)
    return (qy - tau * gy) * scale, (qx - tau * gx) * scale

  zero = jnp.zeros_like(f)
  qy, qx = jax.lax.fori_loop(0, n_iter, step, (zero, zero))
  return f - divergence(qy, qx)


@register("tv", knob="lam", grid=(0.5, 0.7, 0.85, 1.0, 1.2, 1.4, 2.0),
          description="total variation (Chambolle's projection algorithm), weight lam·σ")
@functools.partial(jax.jit, static_argnames=("n_iter",))
def tv_denoise(images: jax.Array, noise_std: jax.Array, *, lam: float = 1.0, n_iter: int = 300,
               tau: float = 0.25) -> jax.Array:
  """TV denoising of (B, H, W) with noise std `noise_std` (scalar or (B,), image units): (B, H, W).

  Minimises ||u - f||²/2 + lam·σ·TV(u) per image with `n_iter` steps of Chambolle's algorithm.
  """
  x = jnp.asarray(images, jnp.float32)
  sigma = jnp.broadcast_to(jnp.asarray(noise_std, jnp.float32), (x.shape[0],))
  return jax.vmap(chambolle_tv, in_axes=(0, 0, None, None))(x, lam * sigma, n_iter, tau)


def tv_energy(u: jax.Array, f: jax.Array, weight) -> jax.Array:
  """The ROF objective ||u - f||²/2 + weight·TV(u) of (H, W) images (isotropic TV, as above)."""
  gy, gx = gradient(jnp.asarray(u, jnp.float32))
  return 0.5 * jnp.sum((u - f) ** 2) + weight * jnp.sum(jnp.sqrt(gy ** 2 + gx ** 2))
