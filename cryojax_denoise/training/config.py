"""Training configuration: defaults, presets, validation, and the workdir / init-checkpoint checks.

`default_config(kind)` is the one config both experiments (and the SNR sweep) start from; `resolve(config)`
applies the preset, `faithful` sizes and the `init` checkpoint's model section and validates every key
(raising `InputError` before anything is written).
"""

from __future__ import annotations

import json
import os

import ml_collections

from cryojax_denoise import distributed
from cryojax_denoise.errors import InputError
from cryojax_denoise.training import checkpoints, data as data_lib, self_supervised as ss
from cryojax_denoise.training.checkpoints import init_dir

# The cianfrocco-lab model's sizes, used when `faithful=True`.
FAITHFUL = {"model.widths": (64, 128, 256, 512, 512, 512), "model.blocks": (3, 3, 3, 3, 2, 0),
            "model.output": "tanh", "disc.widths": (64, 128, 256, 512), "disc.blocks": (2, 2, 3, 2)}


def default_config(kind: str = "gan") -> ml_collections.ConfigDict:
  """Defaults for `kind` in ("gan", "autoencoder", "self_supervised"); every key can be overridden from the
  command line."""
  if kind not in ("gan", "autoencoder", "self_supervised"):
    raise ValueError(f"kind must be 'gan', 'autoencoder' or 'self_supervised', got {kind!r}")
  c = ml_collections.ConfigDict()
  c.kind = kind
  c.preset = ""                # "general": the bundled general model's recipe (PRESETS), for keys left at default
  c.steps = 2000               # total optimisation steps (a rerun resumes and stops here)
  c.batch_size = 16            # global batch, sharded over all devices
  c.image_size = 64            # simulated box (px); stacks from disk set their own
  c.checkpoint_every = 200
  c.keep_checkpoints = 3
  c.eval_every = 100           # validation MSE/PSNR every N steps (and at the end)
  c.log_every = 20             # loss lines in metrics.jsonl every N steps
  c.val_size = 64              # held-out validation images
  c.val_snr = 0.1              # SNR of the simulated validation batch
  c.snr = 0.0                  # > 0: train at this fixed SNR; 0: draw per image from snr_range
  c.snr_range = (0.01, 1.0)    # log-uniform SNR range (one model for all SNRs)
  c.seed = 0
  c.faithful = False           # True: the original's widths, blocks and tanh output (FAITHFUL)
  # Narrower and shallower than the original (FAITHFUL) so it trains in minutes on a CPU.
  # arch "pix2pix": the cianfrocco-lab generator (models/generator.py); "unet": the bias-free U-Net
  # (models/unet.py; uses widths, blocks, odd, prior).
  c.model = ml_collections.ConfigDict({"arch": "pix2pix", "widths": (16, 32, 64, 64), "blocks": (1, 1, 1, 0),
                                       "output": "linear", "noise_channel": False, "odd": False,
                                       "prior": "none"})
  c.disc = ml_collections.ConfigDict({"widths": (16, 32, 64), "blocks": (1, 1, 1)})
  c.loss = "l1"                # autoencoder loss: "l1" or "l2"
  c.l1_weight = 100.0          # GAN: λ of the L1 term
  c.lr_g = 4e-4
  c.lr_d = 1.5e-4
  c.beta1 = 0.5
  c.beta2 = 0.999
  c.lr_decay = "none"          # "cosine": learning rates decay to 5% over `steps` (set steps to the budget)
  c.grad_clip = 0.0            # > 0: clip each update's gradients to this global norm
  # Training pairs from disk instead of simulation (e.g. particles and their make_pairs projections).
  c.noisy = ""
  c.clean = ""
  # "simulate": one map (below); "corpus": the molecule family of `data.corpus` (a pool of `pool_size`
  # maps, each serving `pool_refresh` steps), for models meant for molecules they never saw.
  c.data = "simulate"
  c.pool_size = 256
  c.pool_refresh = 4000
  # "cwf_corpus" (`training.cwf_corpus`): `cwf_datasets` simulated datasets of corpus molecules, each fitted by
  # covariance Wiener filtering, `cwf_keep` (noisy, CWF estimate, clean) triplets kept from each, cached
  # per dataset in `cwf_cache` (a folder; "" keeps them in memory only); trains prior="cwf" models.
  c.cwf_datasets = 240
  c.cwf_keep = 192
  c.cwf_cache = ""
  c.cwf_coloured = 0.0         # fraction of those datasets with coloured noise, whitened (`cwf_corpus.noise_spectrum`)
  c.cwf_prior_reach = 0.0      # CWF basis reach past the box edge, a fraction of the box (1/16: the registered cwf's)
  c.cwf_loss_domain = "whitened"  # coloured datasets' MSE: on whitened particles, or "original" (coloured back)
  # Passed to the simulator: map or model (default: built-in phantom), pixel size (Å), CTF on/off.
  c.volume = ""
  c.structure = ""
  c.pixel_size = 0.0
  c.ctf = True
  distributed.add_config(c)    # distributed, coordinator_address, num_processes, process_id (multi-process)
  # Starting weights of the generator: "" / "none" (fresh), "general" (the bundled general model) or a
  # checkpoint dir; the model section (widths, blocks, ...) is then taken from that checkpoint.
  c.init = ""
  c.init_head = "keep"         # "zero": zero the init's output layer, so training starts from the prior exactly
  if kind == "self_supervised":
    ss.add_config(c)
  c.time_limit_min = 0.0       # > 0: checkpoint and stop after this many minutes (rerun to continue)
  return c


# The general model's recipe (`--config.preset=general`): the molecule corpus over SNR 0.02–2, a
# noise-level input channel, a Wiener-filtered input that the network corrects, both polarities (odd by
# construction at inference), MSE loss.
PRESETS = {
    "general": {"data": "corpus", "image_size": 64, "batch_size": 16, "steps": 6000, "snr_range": (0.02, 2.0),
                "val_snr": 0.1, "loss": "l2", "checkpoint_every": 250, "eval_every": 250,
                "lr_decay": "cosine", "grad_clip": 1.0, "model.blocks": (2, 2, 2, 0),
                "model.noise_channel": True, "model.odd": True, "model.prior": "wiener"},
}
# The dataset-conditioned general model (`--config.preset=general_cwf`): the general autoencoder fine-tuned to
# correct the covariance Wiener filter fitted on each training dataset (its Wiener-prior channel becomes the
# CWF estimate; the output layer starts at zero, so step 0 is CWF itself).
PRESETS["general_cwf"] = {**PRESETS["general"], "data": "cwf_corpus", "steps": 3000, "lr_g": 2e-4,
                          "init": "general", "init_head": "zero", "model.prior": "cwf"}
# The same recipe for particles whitened under coloured noise (`noise=coloured|auto` in `denoise`, where
# `noise.methods.fit_coloured` picks this model): three datasets in four coloured, whitened as `denoise` whitens.
# Its prior is the registered cwf (basis reach L/16 past the edge, not the inscribed disk), so `denoise` fits one
# CWF, and its loss is the MSE of the coloured-back output (what `denoise` returns), not of the whitened one.
PRESETS["general_cwf_coloured"] = {**PRESETS["general_cwf"], "cwf_coloured": 0.75, "cwf_prior_reach": 1 / 16,
                                   "cwf_loss_domain": "original"}
# Per-kind additions: the general GAN starts from the bundled general autoencoder (pix2pix fine-tuning).
KIND_PRESETS = {("general", "gan"): {"init": "general", "steps": 500}}


def apply_preset(c, kind: str) -> None:
  """Fills the preset's values into `c` in place, for every key the user left at its default."""
  if not c.get("preset"):
    return
  if c.preset not in PRESETS:
    raise InputError(f"config.preset: unknown preset {c.preset!r}; valid: {', '.join(PRESETS)}")
  default = default_config(kind)
  for key, value in {**PRESETS[c.preset], **KIND_PRESETS.get((c.preset, kind), {})}.items():
    parts = key.split(".")
    node, base = c, default
    for part in parts[:-1]:
      node, base = node[part], base[part]
    if node[parts[-1]] == base[parts[-1]]:
      node[parts[-1]] = value


def resolve(config) -> ml_collections.ConfigDict:
  """A copy with the preset and `faithful` sizes applied and the image size of disk stacks filled in;
  validates keys."""
  c = ml_collections.ConfigDict(config.to_dict())
  apply_preset(c, c.kind)
  distributed.check_config(c)
  if c.faithful:
    for key, value in FAITHFUL.items():
      section, name = key.split(".")
      c[section][name] = value
  apply_init_config(c)
  if c.get("data") == "cwf_corpus":
    c.model.prior = "cwf"  # the data supply each image's CWF estimate as the prior input
  elif c.model.get("prior") == "cwf" and not c.noisy and c.kind != "self_supervised":
    raise InputError("config.model.prior=cwf: the prior estimates come from data=cwf_corpus")
  if not 0.0 <= float(c.get("cwf_prior_reach", 0.0)) <= 1.0:
    raise InputError(f"config.cwf_prior_reach: a fraction of the box in [0, 1], got {c.cwf_prior_reach}")
  if c.get("cwf_loss_domain", "whitened") not in ("whitened", "original"):
    raise InputError(f"config.cwf_loss_domain: must be 'whitened' or 'original', got {c.cwf_loss_domain!r}")
  if not 0.0 <= float(c.get("cwf_coloured", 0.0)) <= 1.0:
    raise InputError(f"config.cwf_coloured: a fraction of datasets in [0, 1], got {c.cwf_coloured}")
  if c.get("init_head", "keep") not in ("keep", "zero"):
    raise InputError(f"config.init_head: must be 'keep' or 'zero', got {c.init_head!r}")
  for key in ("steps", "batch_size", "image_size", "checkpoint_every", "val_size", "eval_every", "log_every"):
    if int(c[key]) < 1:
      raise InputError(f"config.{key}: must be a positive integer, got {c[key]}")
  if c.kind == "autoencoder" and c.loss not in ("l1", "l2"):
    raise InputError(f"config.loss: must be 'l1' or 'l2', got {c.loss!r}")
  if len(c.model.widths) != len(c.model.blocks) or not len(c.model.widths):
    raise InputError(f"config.model: widths {tuple(c.model.widths)} and blocks {tuple(c.model.blocks)} "
                     "must be non-empty and of equal length")
  if c.get("lr_decay", "none") not in ("none", "cosine"):
    raise InputError(f"config.lr_decay: must be 'none' or 'cosine', got {c.lr_decay!r}")
  from cryojax_denoise.models import ARCHITECTURES

  if c.model.get("arch", "pix2pix") not in ARCHITECTURES:
    raise InputError(f"config.model.arch: unknown architecture {c.model.arch!r}; valid: {', '.join(ARCHITECTURES)}")
  if c.model.output not in ("linear", "tanh"):
    raise InputError(f"config.model.output: must be 'linear' or 'tanh', got {c.model.output!r}")
  if c.kind == "gan" and (len(c.disc.widths) != len(c.disc.blocks) or not len(c.disc.widths)):
    raise InputError(f"config.disc: widths {tuple(c.disc.widths)} and blocks {tuple(c.disc.blocks)} "
                     "must be non-empty and of equal length")
  if c.kind == "self_supervised":
    ss.check_config(c)  # any image size: the self-supervised losses pad to the stride
  else:
    data_lib.check_pair_config(c)
  if c.noisy and c.clean:
    noisy, _ = data_lib.read_pairs(c.noisy, c.clean)
    c.image_size = int(noisy.data.shape[1])
  from cryojax_denoise.training.model import build_generator  # the network: imported when resolving only

  stride = build_generator(c, abstract=True).stride
  if c.image_size % stride and c.kind != "self_supervised":
    raise InputError(f"config.image_size: {c.image_size} px is not divisible by the generator's total stride "
                     f"{stride} (2**len(model.widths), 2**(len − 1) for the U-Net)")
  data_lib.check_snr_config(c)
  return c


def apply_init_config(c) -> None:
  """Copies the model section (and `faithful`) of the `init` checkpoint's config into `c` in place."""
  path = init_dir(c.get("init", ""))
  if path is None:
    return
  _, saved = checkpoints.saved_config(path)
  if not isinstance(saved.get("model"), dict):
    raise InputError(f"config.init: {path} has no model section in its saved config")
  c.model = ml_collections.ConfigDict(saved["model"])
  c.faithful = bool(saved.get("faithful", False))


def check_workdir(config, workdir: str) -> None:
  """Raises InputError (before anything is written) when `workdir` holds checkpoints of another model."""
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path) or not os.listdir(path):
    return
  ckpt = checkpoints.Checkpointer(workdir, create=False)
  try:
    step = ckpt.latest_step()
    if step is not None:
      checkpoints.check_compatible(ckpt.read_meta(step).get("config", {}), config_dict(config), ckpt.directory)
  finally:
    ckpt.close()


def launcher_workdir(experiment: str) -> str:
  """The launcher's `--workdir` (default runs/EXPERIMENT), for `validate` hooks called without it."""
  from absl import flags

  workdir = flags.FLAGS.workdir if "workdir" in flags.FLAGS and flags.FLAGS.is_parsed() else None
  return workdir or os.path.join("runs", experiment)


def config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())
