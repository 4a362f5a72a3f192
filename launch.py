"""One launcher for every experiment.

    python launch.py --experiment=NAME [--workdir=DIR] [--config.KEY=VALUE ...]

`NAME` picks `experiments/NAME.py`, whose `get_config()` gives the defaults and
`run(config, workdir)` does the work. Overrides follow ml_collections' config flags.
"""

import sys

from cryojax_denoise import launcher

if __name__ == "__main__":
  sys.exit(launcher.main(sys.argv))
