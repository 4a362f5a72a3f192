"""Orbax checkpoints of a training run: model, optimiser state, step and config, every N steps, last k kept.

Layout: `WORKDIR/checkpoints/<step>/{generator, discriminator, opt_g, opt_d, meta}`; `meta` is JSON
`{"step", "config"}` (the resolved config the model was built from), so a checkpoint is self-describing
and `restore.load_denoiser` can rebuild the model without the experiment's config. Each item is a pure
dict of arrays (`nnx.State.to_pure_dict`); restoring targets the current modules' shapes and shardings.
Orbax writes each step to a temporary folder and renames it when complete, so a run killed mid-save
leaves the previous checkpoint intact. Over several processes every process calls `save` (orbax writes
the replicated arrays once, from process 0, and synchronises the processes); a checkpoint restores on
any process count, its arrays replicated over the restoring job's devices.
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from cryojax_denoise.errors import InputError

# Config keys that fix the parameter shapes; a checkpoint must agree on them to be restored.
ARCH_KEYS = ("kind", "faithful", "model.arch", "model.widths", "model.blocks", "model.output", "disc.widths", "disc.blocks")


def checkpoint_dir(path: str) -> str:
  """`path` itself when it holds step folders, else `path/checkpoints` (a training workdir)."""
  path = os.path.abspath(path)
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def _get(config: dict, dotted: str):
  node = config
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return list(node) if isinstance(node, (list, tuple)) else node


def check_compatible(saved: dict, config: dict, where: str) -> None:
  """Raises one InputError line naming the first architecture key where `saved` and `config` differ."""
  for key in ARCH_KEYS:
    if key.startswith("disc.") and _get(config, "kind") != "gan":
      continue
    a, b = _get(saved, key), _get(config, key)
    if key == "model.arch":  # checkpoints from before the key existed are pix2pix
      a, b = a or "pix2pix", b or "pix2pix"
    if a != b:
      raise InputError(f"{where}: checkpoint does not match the config: it was trained with {key}={a}, "
                       f"the config has {key}={b} (use a new workdir or the checkpoint's settings)")


class _QuietOrbax:
  """Log filter: orbax logs every save/restore step at INFO; keep its warnings and errors only."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or "orbax" not in record.pathname


def _quiet_orbax() -> None:
  from absl import logging

  logger = logging.get_absl_logger()
  if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
    logger.addFilter(_QuietOrbax())


def _abstract(pure: dict, sharding) -> dict:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), pure)


class Checkpointer:
  """Saves and restores named NNX objects (modules, optimisers) plus the step and config."""

  def __init__(self, workdir: str, keep: int = 3, create: bool = True):
    _quiet_orbax()
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints") if create else checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=create,
                                           enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, objects: dict[str, nnx.Object], config: dict) -> None:
    items = {name: ocp.args.StandardSave(nnx.state(obj).to_pure_dict()) for name, obj in objects.items()}
    items["meta"] = ocp.args.JsonSave({"step": int(step), "config": config})
    self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)
    self.manager.wait_until_finished()

  def read_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise InputError(f"{self.directory}: no checkpoint found")
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - orbax raises many types on foreign folders
      raise InputError(f"{self.directory}: unreadable checkpoint at step {step} ({type(e).__name__})") from None
    return dict(out["meta"])

  def restore(self, step: int, objects: dict[str, nnx.Object], sharding=None) -> None:
    """Restores `objects` in place from checkpoint `step` (shapes must match, else InputError), placed by
    `sharding` (default: replicated over this job's devices, whatever process count saved it)."""
    if sharding is None:
      from cryojax_denoise import sharding as sh

      sharding = sh.replicated(sh.data_mesh())
    states = {name: nnx.state(obj) for name, obj in objects.items()}
    items = {name: ocp.args.StandardRestore(_abstract(st.to_pure_dict(), sharding)) for name, st in states.items()}
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001
      msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
      raise InputError(f"{self.directory}: checkpoint at step {step} does not match the model ({msg})") from None
    for name, obj in objects.items():
      nnx.replace_by_pure_dict(states[name], out[name])
      nnx.update(obj, states[name])

  def close(self) -> None:
    self.manager.close()


def saved_config(directory: str) -> tuple[int, dict]:
  """(latest step, its saved config) of the checkpoints under `directory` (a workdir or checkpoints folder)."""
  path = checkpoint_dir(directory)
  if not os.path.isdir(path):
    raise InputError(f"{directory}: no checkpoint folder")
  ckpt = Checkpointer(path, create=False)
  try:
    meta = ckpt.read_meta()
  finally:
    ckpt.close()
  if "config" not in meta:
    raise InputError(f"{path}: checkpoint has no saved config")
  return int(meta["step"]), json.loads(json.dumps(meta["config"]))


def init_dir(init: str) -> str | None:
  """The checkpoint folder named by `config.init` ("" / "none": None; "general": the bundled model)."""
  init = str(init or "").strip()
  if init.lower() in ("", "none"):
    return None
  if init == "general":
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pretrained",
                        "autoencoder_general")
    if not os.path.isdir(path):
      raise InputError(f"config.init=general: the bundled general model is not installed ({path})")
    return path
  if not os.path.isdir(init):
    raise InputError(f"config.init: checkpoint folder {init} not found (use general, none or a training workdir)")
  return init
