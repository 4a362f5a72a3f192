"""The absl launcher behind `launch.py`: experiment lookup, config overrides, workdir."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pathlib
import re
import signal
import sys

from cryojax_denoise.errors import InputError

EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parent.parent / "experiments"


def available_experiments() -> list[str]:
  return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_experiment(name: str):
  names = available_experiments()
  if name not in names:
    raise InputError(f"unknown experiment {name!r}; valid experiments: {', '.join(names)}")
  return importlib.import_module(f"experiments.{name}")


def _fail(message: str) -> int:
  print(f"error: {message}", file=sys.stderr)
  return 2


def _check_config_keys(argv: list[str], config) -> None:
  """Rejects `--config.KEY=...` where KEY is not in the experiment's config, naming valid keys."""
  for arg in argv[1:]:
    m = re.match(r"--config\.([\w.]+)", arg)
    if not m:
      continue
    node = config
    for part in m.group(1).split("."):
      if not hasattr(node, "keys") or part not in node.keys():
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(none)"
        raise InputError(f"unknown config key {m.group(1)!r}; valid keys: {valid}")
      node = node[part]


def _experiment_name(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith("--experiment="):
      return arg.split("=", 1)[1]
    if arg == "--experiment" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def fill_preset(config, presets: dict):
  """A copy of `config` with `presets[config.preset]` filled into every field left unset (None)."""
  import ml_collections

  if config.preset not in presets:
    raise InputError(f"unknown preset {config.preset!r}; valid presets: {', '.join(presets)}")
  config = ml_collections.ConfigDict(config.to_dict())
  with config.unlocked():
    for key, value in presets[config.preset].items():
      if config[key] is None:
        config[key] = value
  return config


def to_jsonable(config) -> dict:
  return json.loads(config.to_json_best_effort())


def write_config(config, workdir: str) -> None:
  from cryojax_denoise.io import atomic_write_text

  os.makedirs(workdir, exist_ok=True)
  atomic_write_text(os.path.join(workdir, "config.json"), json.dumps(to_jsonable(config), indent=2) + "\n")


class Stopped(BaseException):
  """SIGTERM received: unwinds the run like Ctrl-C (SIGINT) does, so worker processes are ended. A
  BaseException (like KeyboardInterrupt), so no `except Exception` on the way (e.g. around the SURE
  quality score) can swallow it."""


def _raise_stopped(signum, frame):
  raise Stopped()


def _end_workers(kill: bool) -> None:
  """Ends the BM3D worker pool if this run started one (terminating busy workers when `kill`)."""
  bm3d = sys.modules.get("cryojax_denoise.denoisers.classical.bm3d")
  if bm3d is not None:
    bm3d.shutdown_pool(kill=kill)


def main(argv: list[str]) -> int:
  from absl import app, flags, logging
  from ml_collections import config_flags

  name = _experiment_name(argv)
  if name is None:
    return _fail(f"--experiment is required; valid experiments: {', '.join(available_experiments())}")
  try:
    module = load_experiment(name)
    _check_config_keys(argv, module.get_config())
  except InputError as e:
    return _fail(str(e))

  flags.DEFINE_string("experiment", None, "experiment name: a module in experiments/")
  flags.DEFINE_string("workdir", None, "output folder (default runs/NAME)")
  config_flag = config_flags.DEFINE_config_dict("config", module.get_config(), "experiment config")
  status = {"rc": 0}

  def _main(_):
    config = config_flag.value
    workdir = flags.FLAGS.workdir or os.path.join("runs", name)
    logging.set_verbosity(logging.INFO)
    existed = os.path.isdir(workdir)
    config_path = os.path.join(workdir, "config.json")
    had_config = os.path.exists(config_path)
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
      if hasattr(module, "validate"):
        if len(inspect.signature(module.validate).parameters) >= 2:
          module.validate(config, workdir)
        else:
          module.validate(config)
      logging.info("experiment %s, workdir %s", name, workdir)
      write_config(config, workdir)
      module.run(config, workdir)
    except InputError as e:
      # Bad input writes nothing: undo the config.json (and workdir) this run created.
      if not had_config and os.path.exists(config_path):
        os.remove(config_path)
      if not existed and os.path.isdir(workdir) and not os.listdir(workdir):
        os.rmdir(workdir)
      status["rc"] = _fail(str(e))
    except (KeyboardInterrupt, Stopped) as e:
      _end_workers(kill=True)
      print(f"stopped ({'SIGTERM' if isinstance(e, Stopped) else 'SIGINT'})", file=sys.stderr)
      status["rc"] = 143 if isinstance(e, Stopped) else 130
    finally:
      _end_workers(kill=False)
      signal.signal(signal.SIGTERM, previous)

  try:
    app.run(_main, argv=argv, flags_parser=_parse_flags)
  except SystemExit as e:
    if e.code not in (0, None):
      return int(e.code) if isinstance(e.code, int) else 2
  return status["rc"]


def _parse_flags(argv):
  """absl's parser, but a bad flag value is one line and exit 2, not a usage dump."""
  from absl import flags

  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
