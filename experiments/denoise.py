"""Denoises an MRC stack or a RELION STAR particle set with any registered method.

    python launch.py --experiment=denoise --config.method=ddtf \\
        --config.input=particles.star --config.output=out/denoised.mrcs

Writes `output` (default WORKDIR/denoised.mrcs) in the input's units, order and pixel size;
for STAR input also a STAR file beside it (same stem, `.star`) with the same rows and optics,
`rlnImageName` pointing at the new stack. Images stream in batches from memory-mapped stacks,
so memory stays bounded whatever the stack size. The input is never overwritten.

`params=auto` (or `auto,key=value,...`) picks a classical method's knob by Monte-Carlo SURE on
`sure_images` random images (`denoisers/tuning/sure.py`) and writes the choice, SURE's estimate of the MSE
and the MSE reduction in dB to `<output stem>.params.json` (and a comment at the top of the STAR
file); for cwf (fitted to the stack, no knob) it records SURE's estimate. It is the default for the
methods in `AUTO_BY_DEFAULT` when no params are given; `params=default` keeps the registry's defaults.
Every run logs that estimate for the parameters used: a quality score without ground truth to compare
methods on one's own data. The pipeline itself is `cryojax_denoise.pipeline` (callable from Python).
"""

from __future__ import annotations

import ml_collections

from cryojax_denoise import distributed
from cryojax_denoise.errors import InputError
from cryojax_denoise.pipeline.params import Settings


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "ddtf"          # any name of cryojax_denoise.denoisers.names()
  c.params = ""              # "key=value,..." (e.g. "width=2.0" for gaussian), "auto" (SURE), "default";
                             # "": auto for AUTO_BY_DEFAULT methods, the registry defaults for the others
  # Noise standard deviation in the input's units; None (default) or 0: estimated per image.
  c.noise_std = ml_collections.config_dict.placeholder(float)
  c.checkpoint = ""          # training workdir (or its checkpoints/) for gan / autoencoder; "": bundled general model
  c.input = ""               # an MRC stack (.mrcs/.mrc) or a RELION STAR file (.star)
  c.output = ""              # .mrcs (or .star for STAR input); default WORKDIR/denoised.mrcs
  c.batch_size = 64          # images per denoiser call
  c.normalize = "mean"       # none | mean | std: what is removed before denoising and restored after
  c.sure_images = 32         # random images for params=auto and the SURE quality score (0: neither)
  c.fit_size = 10000         # dataset-level methods (cwf): pass 1 fits on this many random particles
  c.noise = "white"          # auto | white | coloured: whiten with the background noise spectrum (noise/stack.py)
  c.noise_psd = ""           # a known spectrum (.txt/.npy, radial 0..0.5 cycles/px or 2D) instead of estimating
  # auto | on | off: scale the output by SURE's MSE-optimal gain α in [0, 1] (auto: under coloured noise)
  c.output_gain = "auto"
  # Memory budget in GB of the dataset-level fit (cwf: batch size, or an error naming the minimum);
  # None (default): half the machine's memory.
  c.memory_gb = ml_collections.config_dict.placeholder(float)
  distributed.add_config(c)  # distributed, coordinator_address, num_processes, process_id, collective_timeout_s
  return c


def validate(config) -> None:
  """Cheap checks before anything is written; files are checked fully when `run` opens them
  (once: a STAR file may reference 10⁵ stacks), and the launcher removes what it wrote on error."""
  from cryojax_denoise import io
  from cryojax_denoise.pipeline import check_settings

  if not config.input:
    raise InputError("input: give --config.input=STACK.mrcs or PARTICLES.star")
  io.check_input_file(config.input, "input file")
  distributed.check_config(config)
  if config.output:
    io.check_not_input(config.output, config.input)
  check_settings(Settings.from_config(config))


def run(config, workdir: str) -> None:
  from cryojax_denoise import pipeline

  distributed.initialize(config)
  pipeline.run(Settings.from_config(config), config.input, config.output, workdir)
