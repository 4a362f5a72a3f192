"""Denoising (and `make_pairs`) split by rows over the processes of a `distributed` job.

Process k of n takes a contiguous share of the input rows, cut on `batch_size` boundaries (so every
batch holds the same images as in a one-process run and the output is bit-identical), and writes it
atomically to `OUTPUT.parts/part-K-of-N.mrcs` followed by a `.json` done-marker. After a barrier,
process 0 copies the parts into the output stack (and STAR file) in input order and removes them. A
rerun after a crash skips every part whose marker matches the run (same input, method, parameters,
rows), so only missing parts are redone. Dataset-level methods (cwf) are fitted in every process on
the same rows (a fixed seed, the whole table) with the same deterministic code, so the fits agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
from absl import logging

from cryojax_denoise.distributed import barrier, info, process, shares


def parts_dir(outputs) -> str:
  return outputs.stack + ".parts"


def _part_paths(outputs, k: int, n: int) -> tuple[str, str]:
  stem = os.path.join(parts_dir(outputs), f"part-{k:05d}-of-{n:05d}")
  return stem + ".mrcs", stem + ".json"


def _fingerprint(config, table, start: int, stop: int, keys) -> str:
  """What a part's images depend on: the input files and the config `keys` (denoising's by default)."""
  source = os.stat(table.source)
  facts = {"input": os.path.abspath(table.source), "size": source.st_size, "mtime": source.st_mtime_ns,
           "rows": [start, stop, len(table)], **{key: str(config.get(key)) for key in keys}}
  return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def part_done(config, table, outputs, keys) -> bool:
  """Whether this process's part is already written by an earlier run of the same job."""
  k, n = process()
  start, stop = shares(len(table), n, config["batch_size"])[k]
  stack, marker = _part_paths(outputs, k, n)
  if not (os.path.exists(stack) and os.path.exists(marker)):
    return False
  try:
    with open(marker) as f:
      return json.load(f).get("fingerprint") == _fingerprint(config, table, start, stop, keys)
  except (OSError, ValueError):
    return False


def denoise(table, denoiser, outputs, reader, ctf_of=None, *, batch_size: int = 64, noise_std: float | None = None,
            normalize: str = "mean", facts: dict | None = None):
  """`denoise_stack.denoise` over every process: this process's part, a barrier, assembly on 0.

  `facts`: what the images depend on besides the input (the run's settings, e.g. `Settings.facts()`): a
  part written by an earlier run with the same facts is kept (resume)."""
  from cryojax_denoise import denoise_stack

  noise_std = noise_std or None
  if process()[1] == 1:
    return denoise_stack.denoise(table, denoiser, outputs, batch_size=batch_size, noise_std=noise_std,
                                 normalize=normalize, reader=reader, ctf_of=ctf_of)

  def make_fn():
    mean, scale = denoise_stack.normalization(table, reader, normalize)  # the whole table's
    return denoise_stack.denoise_batches(denoiser, noise_std, mean, scale, ctf_of)

  facts = {**(facts or {}), "batch_size": int(batch_size)}
  return by_parts(facts, table, outputs, make_fn, reader, "denoising", tuple(sorted(facts)))


def by_parts(config, table, outputs, make_fn, reader, verb: str, keys) -> object:
  """`make_fn()(rows, images) -> images` streamed over this process's share of `table` into its part
  (unless an earlier run with the same config `keys` wrote it), a barrier, then process 0 assembles
  `outputs.stack` (+ `outputs.star` when set) in input order; `rows` are indices into the whole table."""
  from cryojax_denoise import denoise_stack, io

  k, n = process()
  start, stop = shares(len(table), n, config["batch_size"])[k]
  stack, marker = _part_paths(outputs, k, n)
  if part_done(config, table, outputs, keys):
    logging.warning("process %d: part %s (rows %d-%d) already written: kept", k, stack, start + 1, stop)
  elif stop > start:
    fn = make_fn()
    part = denoise_stack.ParticleTable(table.source, table.stacks, table.stack_of[start:stop],
                                       table.indices[start:stop], table.shape, table.pixel_size)
    logging.warning("process %d of %d: %s rows %d-%d into %s", k, n, verb, start + 1, stop, stack)
    denoise_stack.stream(part, lambda rows, images: fn(rows + start, images), stack,
                         batch_size=config["batch_size"], desc=f"{verb} part {k}", reader=reader)
  if stop > start and not part_done(config, table, outputs, keys):
    io.atomic_write_text(marker, json.dumps({"rows": [start, stop],
                                             "fingerprint": _fingerprint(config, table, start, stop, keys)}) + "\n")
  barrier(f"{verb} {outputs.stack}: parts written")
  if k == 0:
    assemble(table, outputs, n, config["batch_size"])
  barrier(f"{verb} {outputs.stack}: assembled")
  return outputs


def assemble(table, outputs, n: int, batch_size: int, chunk: int = 1024) -> None:
  """Process 0: the parts, in row order, into `outputs.stack` (+ STAR); then removes the parts."""
  from cryojax_denoise import denoise_stack, io

  particles = denoise_stack.star_for_stack(table, outputs) if outputs.star else None
  with io.StackWriter(outputs.stack, len(table), table.shape, table.pixel_size) as writer:
    for k, (start, stop) in enumerate(shares(len(table), n, batch_size)):
      if stop == start:
        continue
      part = io.read_stack(_part_paths(outputs, k, n)[0], mmap=True, check_finite=False).data
      if part.shape != (stop - start, *table.shape):
        raise RuntimeError(f"{_part_paths(outputs, k, n)[0]}: {part.shape}, expected {stop - start} images")
      for i in range(0, stop - start, chunk):
        writer.write(start + i, np.asarray(part[i:i + chunk], np.float32))
      del part
  if outputs.star:
    denoise_stack.write_output_star(table, outputs, particles)
  shutil.rmtree(parts_dir(outputs), ignore_errors=True)
  info("assembled %d parts into %s", n, outputs.stack)
