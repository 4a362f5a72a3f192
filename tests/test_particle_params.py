"""`data.relion.ParticleParams`: the typed per-particle parameters read from and written to RELION tables."""

import jax
import numpy as np
import pandas as pd

from cryojax_denoise.data import relion, simulate
from cryojax_denoise.data.relion import ParticleParams


def _relion30_table() -> pd.DataFrame:
  return pd.DataFrame({"rlnImageName": ["000001@a.mrcs", "000002@a.mrcs", "000003@a.mrcs"],
                       "rlnAngleRot": [10.0, -20.0, 30.0], "rlnAngleTilt": [5.0, 90.0, 175.0],
                       "rlnAnglePsi": [-999.0, 45.0, 0.5], "rlnOriginX": [1.0, -2.0, 0.0],
                       "rlnOriginY": [0.0, 3.0, -1.5], "rlnDefocusU": [12000.0, 15000.0, 20000.0],
                       "rlnDefocusAngle": [0.0, 30.0, 170.0]})


def test_params_from_a_relion30_table():
  """Pixel origins become Å at the given pixel size, psi -999 ('unset') becomes 0, no rlnDefocusV means
  V = U, no rlnPhaseShift means 0; every field (N,) float32."""
  p = relion.params_from_table(_relion30_table(), pixel_size=1.31)
  assert all(np.asarray(v).shape == (3,) and np.asarray(v).dtype == np.float32 for v in p)
  np.testing.assert_allclose(p.origin_x_in_angstroms, [1.31, -2.62, 0.0], rtol=1e-6)
  np.testing.assert_allclose(p.origin_y_in_angstroms, [0.0, 3.93, -1.965], rtol=1e-6)
  np.testing.assert_array_equal(p.psi_in_degrees, [0.0, 45.0, 0.5])
  np.testing.assert_array_equal(p.defocus_v_in_angstroms, p.defocus_u_in_angstroms)
  np.testing.assert_array_equal(p.phase_shift_in_degrees, np.zeros(3))


def test_table_roundtrip_and_row_selection():
  rng = np.random.default_rng(0)
  n = 5
  params = ParticleParams(*(rng.uniform(-100, 100, n).astype(np.float32) for _ in ParticleParams._fields))
  table = relion.particles_table(params, ctf=True)
  assert list(table["rlnDefocusAngle"]) == list(params.defocus_angle_in_degrees.astype(np.float64))
  back = relion.params_from_table(table, pixel_size=2.0)  # Å origins: the pixel size is not used
  for name, a, b in zip(ParticleParams._fields, params, back):
    np.testing.assert_array_equal(a, b, err_msg=name)
  rows = np.array([3, 0])
  picked = back.take(rows)
  assert isinstance(picked, ParticleParams)
  np.testing.assert_array_equal(picked.rot_in_degrees, params.rot_in_degrees[rows])
  assert "rlnDefocusU" not in relion.particles_table(params, ctf=False).columns


def test_sampled_params_are_a_pytree_of_per_image_arrays():
  """The simulator's jitted, vmapped sampler returns ParticleParams of (n,) arrays; image i's parameters
  come from fold_in(key, i), whatever the batch they are drawn in."""
  ranges = {k: np.float32(v) for k, v in dict(max_shift_A=3.0, defocus_lo=1e4, defocus_hi=2e4,
                                              astigmatism_A=500.0).items()}
  key = jax.random.PRNGKey(3)
  p = simulate._sample_jit(key, 0, 6, ranges)
  assert isinstance(p, ParticleParams) and len(jax.tree_util.tree_leaves(p)) == len(ParticleParams._fields)
  assert all(v.shape == (6,) for v in p)
  tail = simulate._sample_jit(key, 2, 4, ranges)  # images 2..5 alone: the same values
  np.testing.assert_array_equal(np.asarray(tail.tilt_in_degrees), np.asarray(p.tilt_in_degrees)[2:])
  assert np.all(np.abs(np.asarray(p.origin_x_in_angstroms)) <= 3.0)
  assert np.all(np.asarray(p.defocus_u_in_angstroms) >= np.asarray(p.defocus_v_in_angstroms))
