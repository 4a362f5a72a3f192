"""One launcher for every experiment.

    python launch.py --experiment=NAME [--workdir=DIR] [--config.KEY=VALUE ...]

`NAME` picks `experiments/NAME.py`, whose `get_config()` gives the defaults and
`run(config, workdir)` does the work. Overrides follow ml_collections' config flags.
"""

import os
import sys

# NumPy's LAPACK calls here are small (eigh of <= 128x128 blocks in the CWF fit and FB basis); with a
# multithreaded OpenBLAS on a busy machine each one spin-waits ~100x longer (CWF on 5 particles of 256²
# at load 4: 6 min wall, 163 CPU-s; with one BLAS thread 45 s, 37 CPU-s). JAX uses its own thread pool.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
  os.environ.setdefault(_var, "1")

from cryojax_denoise import launcher  # noqa: E402

if __name__ == "__main__":
  sys.exit(launcher.main(sys.argv))
