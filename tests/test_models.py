"""Generator and discriminator: shapes, exact transposed convolution, per-image independence, init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cryojax_denoise.models import Generator, PatchDiscriminator, UNet, host_init
from cryojax_denoise.models.generator import UpConv


def test_upconv_equals_conv_transpose():
  # nnx.ConvTranspose(3, 2, (4, 4), strides=(2, 2), padding="SAME") computes lax.conv_transpose.
  rng = np.random.default_rng(0)
  up = host_init(lambda: UpConv(3, 2, bias=True, rngs=nnx.Rngs(0)), seed=0)
  up.bias[...] = jnp.asarray([0.5, -1.0])
  x = jnp.asarray(rng.normal(size=(2, 5, 6, 3)), jnp.float32)
  ref = jax.lax.conv_transpose(x, up.kernel[...], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(up(x), ref + up.bias[...], atol=1e-6)
  assert up(x).shape == (2, 10, 12, 2)


def test_generator_shapes_and_per_image_independence():
  gen = host_init(lambda: Generator((4, 8), (1, 0), rngs=nnx.Rngs(0)), seed=0)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 32, 32)), jnp.float32)
  y = nnx.jit(lambda g, x: g(x))(gen, x)
  assert y.shape == (3, 32, 32) and bool(jnp.isfinite(y).all())
  # Instance normalisation: an image's output does not depend on its batch-mates.
  y1 = nnx.jit(lambda g, x: g(x))(gen, x[:1])
  np.testing.assert_allclose(y[0], y1[0], atol=1e-5)
  with pytest.raises(ValueError, match="divisible"):
    gen(jnp.zeros((1, 30, 30)))


def test_faithful_and_tanh_shapes():
  # The original's sizes (6 levels, 256² in the paper) build for any size divisible by 64; shapes only.
  out = nnx.eval_shape(lambda: Generator((64, 128, 256, 512, 512, 512), (3, 3, 3, 3, 2, 0), "tanh",
                                         rngs=nnx.Rngs(0))(jnp.zeros((2, 128, 64))))
  assert out.shape == (2, 128, 64)
  tanh_gen = host_init(lambda: Generator((4, 8), (0, 0), "tanh", rngs=nnx.Rngs(0)), seed=1)
  assert float(jnp.abs(tanh_gen(10 * jnp.ones((1, 16, 16)))).max()) <= 1.0


def test_discriminator_patch_logits():
  disc = host_init(lambda: PatchDiscriminator((4, 8, 8), (1, 0, 0), rngs=nnx.Rngs(0)), seed=0)
  a = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32)), jnp.float32)
  logits = nnx.jit(lambda d, a, b: d(a, b))(disc, a, -a)
  assert logits.shape == (2, 8, 8) and bool(jnp.isfinite(logits).all())


def test_host_init_deterministic():
  make = lambda: Generator((4, 8), (1, 0), rngs=nnx.Rngs(0))  # noqa: E731
  p1 = nnx.state(host_init(make, 5), nnx.Param).to_pure_dict()
  p2 = nnx.state(host_init(make, 5), nnx.Param).to_pure_dict()
  p3 = nnx.state(host_init(make, 6), nnx.Param).to_pure_dict()
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
  k1, k3 = p1["down"][0]["kernel"], p3["down"][0]["kernel"]
  assert not np.array_equal(k1, k3)
  kernels = np.concatenate([np.ravel(v) for path, v in jax.tree_util.tree_leaves_with_path(p1)
                            if "kernel" in jax.tree_util.keystr(path)])
  assert abs(kernels.std() - 0.02) < 0.002
  assert np.all(p1["down_norm"][0]["scale"] == 1) and np.all(p1["down_norm"][0]["bias"] == 0)


def test_unet_is_bias_free_homogeneous_and_odd_when_symmetrised():
  # No additive constants anywhere: f(a·x) = a·f(x) for a > 0 (Mohan et al.'s bias-free property), so the
  # network is blind to the images' scale; (g(x) − g(−x)) / 2 is then odd as well.
  for prior in ("none", "wiener"):
    net = host_init(lambda: UNet((4, 8, 8), (1, 1, 1), prior=prior, rngs=nnx.Rngs(0)), seed=0, kernels="he")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16)), jnp.float32)
    y = net(x)
    assert y.shape == (2, 16, 16) and float(jnp.abs(y).max()) > 0
    np.testing.assert_allclose(net(3.5 * x), 3.5 * y, rtol=2e-4, atol=2e-4)
    odd = lambda v: 0.5 * (net(v) - net(-v))  # noqa: E731
    np.testing.assert_allclose(odd(-x), -odd(x), atol=1e-5)
  assert not any("bias" in jax.tree_util.keystr(p) for p, _ in
                 jax.tree_util.tree_leaves_with_path(nnx.state(net, nnx.Param).to_pure_dict()))
  with pytest.raises(ValueError, match="divisible"):
    net(jnp.zeros((1, 18, 18)))


def test_he_init_keeps_unnormalised_activations_at_scale():
  # Without normalisation, He-normal kernels (fan_in = 4·cin for the 4×4 transposed ones) keep the
  # features' RMS of order one through the depth; N(0, 0.02²) would shrink them ~0.3× per layer.
  net = host_init(lambda: UNet((16, 32, 64, 64), (2, 2, 2, 2), rngs=nnx.Rngs(0)), seed=3, kernels="he")
  x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 32, 32)), jnp.float32)
  assert 0.05 < float(jnp.std(net(x))) < 20.0
  k = nnx.state(net, nnx.Param).to_pure_dict()["enc"][1]["convs"][0]["kernel"]
  assert abs(float(np.std(k)) - np.sqrt(2.0 / (9 * 32))) < 0.01
