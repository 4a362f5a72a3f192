"""Projection matching (`reconstruction.align`, `so3_grid`): poses of simulated particles (cryojax, CTF,
origins) recovered within the grid step, independent of order and batch size, the NumPy reference
scoring the same, bad references rejected."""

import numpy as np
import pytest

from cryojax_denoise.data.relion import relion_matrix
from cryojax_denoise.errors import InputError
from cryojax_denoise.reconstruction import align, refine, so3_grid
from experiments.peers import align_reference
from blobs import blob_particles, blobs

APIX = 4.0
BOX = 32
STEP = 20.0


@pytest.fixture(scope="module")
def data():
  return blob_particles(24, snr=5.0, seed=3, max_shift_A=8.0, box=BOX, pixel_size=APIX)


def _truth(particles):
  return refine.table_poses(particles, APIX)


@pytest.fixture(scope="module")
def found(data):
  source, ds = data
  ref = align.prepare_reference(source.volume, APIX, BOX, APIX)
  ctfs = align.ctf_params(ds.particles, ds.optics, APIX)
  return align.search(ds.noisy, ctfs, ref, so3_grid.uniform_grid(STEP), resolution_A=10.0, max_shift_A=10.0,
                      batch_size=8)


def test_grid_is_even_and_covers_so3():
  grid = so3_grid.uniform_grid(STEP)
  n_dir, n_psi = so3_grid.grid_size(STEP)
  assert grid.matrices.shape == (n_dir * n_psi, 3, 3) == (104 * 18, 3, 3)
  eye = np.broadcast_to(np.eye(3), grid.matrices.shape)
  np.testing.assert_allclose(grid.matrices @ np.swapaxes(grid.matrices, 1, 2), eye, atol=1e-5)
  # Every rotation lies within one step of the grid; neighbours are about one step apart (not clumped).
  assert so3_grid.covering_radius_deg(grid, 500) < STEP
  dist = so3_grid.geodesic_deg(grid.matrices[:200, None], grid.matrices[None, :])
  np.fill_diagonal(dist[:, :200], np.inf)
  assert 0.5 * STEP < np.median(dist.min(1)) <= STEP
  offsets = so3_grid.local_offsets(5.0)
  assert offsets.shape == (27, 3, 3) and np.allclose(offsets[13], np.eye(3))
  assert so3_grid.geodesic_deg(offsets, np.eye(3)).max() == pytest.approx(5.0 * np.sqrt(3), rel=1e-4)


def test_known_pose_recovered_within_grid_step(data, found):
  """CTF-modulated, shifted cryojax projections at SNR 5: every pose within the 20° grid step (in fact
  within a few degrees after local refinement), origins within a pixel."""
  _, ds = data
  true_m, true_o = _truth(ds.particles)
  err = so3_grid.geodesic_deg(found.matrices, true_m)
  print("angular errors (deg)", np.round(err, 2))
  assert err.max() < STEP and np.median(err) < STEP / 4
  shift_err = np.sqrt(np.sum((np.stack([found.origin_x_A, found.origin_y_A], -1) - true_o) ** 2, -1))
  assert np.median(shift_err) < 0.5 * APIX and shift_err.max() < APIX
  # The Euler angles say the same rotation as the matrices.
  np.testing.assert_allclose(relion_matrix(found.rot, found.tilt, found.psi), found.matrices, atol=1e-4)
  assert np.all((found.score > 0.5) & (found.score <= 1.0))


def test_independent_of_order_and_batch_size(data, found):
  source, ds = data
  ref = align.prepare_reference(source.volume, APIX, BOX, APIX)
  order = np.random.default_rng(0).permutation(len(ds.noisy))
  ctf = align.ctf_params(ds.particles.iloc[order].reset_index(drop=True), ds.optics, APIX)
  again = align.search(ds.noisy[order], ctf, ref, so3_grid.uniform_grid(STEP), resolution_A=10.0,
                       max_shift_A=10.0, batch_size=5)
  np.testing.assert_allclose(again.matrices, found.matrices[order], atol=1e-5)
  np.testing.assert_allclose(again.origin_x_A, found.origin_x_A[order], atol=1e-5)
  np.testing.assert_allclose(again.score, found.score[order], rtol=1e-4)


def test_local_search_keeps_a_good_start(data, found):
  """From the found poses, a local-only search (no grid) scores at least as well and stays near."""
  source, ds = data
  ref = align.prepare_reference(source.volume, APIX, BOX, APIX)
  ctfs = align.ctf_params(ds.particles, ds.optics, APIX)
  local = align.search(ds.noisy, ctfs, ref, so3_grid.Grid(np.zeros((0, 3)), np.zeros((0, 3, 3)), 5.0),
                       resolution_A=10.0, batch_size=8, init=found)
  assert np.all(local.score >= found.score - 1e-5)
  assert so3_grid.geodesic_deg(local.matrices, found.matrices).max() < 12.0


def test_numpy_reference_scores_the_same(data):
  """The NumPy FFT cross-correlation search and the GEMM kernel pick the same (rotation, shift) and score."""
  source, ds = data
  ref = align.prepare_reference(source.volume, APIX)
  grid = so3_grid.uniform_grid(30.0)
  bd = align.band(BOX, APIX, 12.0)
  import jax.numpy as jnp
  kx, ky, w, flat = (jnp.asarray(v) for v in (bd.kx, bd.ky, bd.w, bd.flat))
  refs, p2, valid = align.reference_slices(ref.fvol, jnp.asarray(grid.matrices), kx, ky, scale=2.0, chunk=100)
  shifts = align.shift_grid(2.0)
  params = align.ctf_params(ds.particles, ds.optics, APIX)
  ctf = np.asarray(align._ctf_jit(params, jnp.stack([kx, ky], -1) / (BOX * APIX)))[:6]
  y, c2w, _ = align._prepare_jit(jnp.asarray(ds.noisy[:6]), jnp.asarray(ctf), kx, ky, flat, w)
  score, j, s = (np.asarray(v)[:, 0] for v in align._exhaustive(y, c2w, refs, p2, valid, jnp.asarray(shifts), kx, ky,
                                                                 d=BOX))
  k = len(bd.flat)
  slices = np.asarray(refs[..., :k] + 1j * refs[..., k:]).reshape(-1, k)[: len(grid.matrices)]
  np_score, np_j, np_s = align_reference.exhaustive_numpy(ds.noisy[:6], ctf, slices, bd, shifts)
  np.testing.assert_allclose(score, np_score, rtol=1e-4)
  np.testing.assert_array_equal(j, np_j)
  np.testing.assert_array_equal(s, np_s)


def test_wrong_reference_box_or_pixel_size_is_one_input_error():
  vol = blobs(BOX)
  with pytest.raises(InputError, match="box 32 differs from the particles' box 40"):
    align.prepare_reference(vol, APIX, 40, APIX)
  with pytest.raises(InputError, match="pixel size 4 Å differs from the particles' 5 Å"):
    align.prepare_reference(vol, APIX, BOX, 5.0)
  with pytest.raises(InputError, match="cubic"):
    align.prepare_reference(vol[:, :, :30], APIX)
  with pytest.raises(InputError, match="angular step"):
    so3_grid.uniform_grid(0.0)


def test_benchmark_times_kernel_and_numpy_on_one_grid():
  row = align_reference.benchmark(n_particles=8, n_numpy=1, box=16, step_deg=45.0, resolution_A=16.0,
                                  batch_size=8)
  assert row["particles_jax"] == 8 and row["rotations"] == len(so3_grid.uniform_grid(45.0).matrices)
  assert row["jax_comparisons_per_s"] > 0 and row["numpy_comparisons_per_s"] > 0
  assert row["batch_working_set_bytes"] == align_reference.working_set_bytes(8, row["rotations"], row["shifts"],
                                                                             row["band_points"])


_TWO_DEVICE_SCRIPT = """
import sys
import jax
import numpy as np
from cryojax_denoise import sharding
from cryojax_denoise.reconstruction import align, so3_grid
from cryojax_denoise.reconstruction.particles import ParticleParams
assert jax.device_count() == 2, jax.devices()
z = np.load(sys.argv[1])
ctfs = ParticleParams(*(z[f"p{i}"] for i in range(len(ParticleParams._fields))))
ref = align.prepare_reference(z["vol"], float(z["apix"]), int(z["box"]), float(z["apix"]))
p = align.search(z["x"], ctfs, ref, so3_grid.uniform_grid(float(z["step"])), resolution_A=10.0, max_shift_A=10.0,
                 batch_size=7, mesh=sharding.data_mesh())
np.savez(sys.argv[2], mats=p.matrices, ox=p.origin_x_A, oy=p.origin_y_A)
"""


def test_two_devices_shard_batches_and_agree_with_one(data, found, tmp_path):
  """On 2 (host) devices each batch is split over both (batch 7 rounded up to 8): the same poses."""
  import os
  import subprocess
  import sys

  source, ds = data
  ctfs = align.ctf_params(ds.particles, ds.optics, APIX)
  np.savez(tmp_path / "in.npz", x=ds.noisy, vol=source.volume, apix=APIX, box=BOX, step=STEP,
           **{f"p{i}": np.asarray(v) for i, v in enumerate(ctfs)})
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-c", _TWO_DEVICE_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                     capture_output=True, text=True, timeout=300, cwd=root, env=env)
  assert r.returncode == 0, r.stderr[-2000:]
  two = np.load(tmp_path / "out.npz")
  assert so3_grid.geodesic_deg(two["mats"], found.matrices).max() < 0.5
  np.testing.assert_allclose(two["ox"], found.origin_x_A, atol=0.05)
  np.testing.assert_allclose(two["oy"], found.origin_y_A, atol=0.05)
