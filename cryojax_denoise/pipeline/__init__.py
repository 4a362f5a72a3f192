"""The stack pipeline as a library: denoise a particle set (MRC stack or RELION STAR file) from Python.

>>> from cryojax_denoise import pipeline
>>> record = pipeline.denoise_particles("particles.star", method="cwf", params="auto",
...                                     output="out/denoised.mrcs")
>>> record["sure"]["mse"], record["sure"]["gain_db"]      # SURE's estimate, no ground truth needed
>>> record["outputs"]                                     # {"stack": ..., "star": ..., "params_json": ...}

`params.py`: the params text and the auto (SURE) policy, `Settings`; `sure_step.py`: SURE's choice of
the knob, the quality score and the record; `run.py`: open, fit or make the denoiser, denoise in
batches (`denoise_stack`, `streaming`; over every process with `distributed`), write. The `denoise`
experiment is a config over `run.run`.
"""

from cryojax_denoise.pipeline.params import (AUTO_BY_DEFAULT, Settings, fixed_params, has_fit_hook, is_learned,
                                             params_mode, parse_params, split_auto)
from cryojax_denoise.pipeline.run import (check_settings, check_stack_size, denoise_particles, fit_denoiser,
                                          make_denoiser, run)

__all__ = ["AUTO_BY_DEFAULT", "Settings", "check_settings", "check_stack_size", "denoise_particles", "fit_denoiser",
           "fixed_params", "has_fit_hook", "is_learned", "make_denoiser", "params_mode", "parse_params", "run",
           "split_auto"]
