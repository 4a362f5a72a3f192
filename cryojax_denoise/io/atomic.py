"""Atomic writes: a file appears under its name only when complete, with the usual permissions.

The temporary file beside the target is created with mode 0666 through `os.open`, so the process
umask applies as for any new file (nothing reads or changes the umask).
"""

from __future__ import annotations

import contextlib
import os
import secrets

from cryojax_denoise.errors import InputError


def _new_temporary(directory: str, base: str) -> str:
  """Creates an empty, uniquely named hidden file beside the target (mode 0666 & ~umask)."""
  suffix = ".tmp" + os.path.splitext(base)[1]
  for _ in range(100):
    tmp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}{suffix}")
    try:
      os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
      return tmp
    except FileExistsError:
      continue
  raise FileExistsError(f"{directory}: no free temporary name for {base}")


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path`; renames it onto `path` only on success.

  On failure the temporary file is removed, and so are the folders this call created.
  """
  directory = os.path.dirname(os.path.abspath(path)) or "."
  created = _missing_dirs(directory)
  os.makedirs(directory, exist_ok=True)
  tmp = _new_temporary(directory, os.path.basename(path))
  ok = False
  try:
    yield tmp
    os.replace(tmp, path)
    ok = True
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
    if not ok:
      for d in created:  # deepest first
        with contextlib.suppress(OSError):
          os.rmdir(d)


def _missing_dirs(directory: str) -> list[str]:
  """The folders of `directory` that do not exist yet, deepest first."""
  missing = []
  while directory and not os.path.exists(directory):
    missing.append(directory)
    parent = os.path.dirname(directory)
    if parent == directory:
      break
    directory = parent
  return missing


def atomic_write_text(path: str, text: str) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)


def check_not_input(output: str, *inputs: str) -> None:
  """Refuses an output path that is an existing directory or one of the inputs (we never overwrite
  user data); called before any work."""
  if os.path.isdir(output):
    raise InputError(f"{output}: output path is a directory; give a file name in it (e.g. "
                     f"{os.path.join(output, 'denoised.mrcs')})")
  for inp in inputs:
    if inp and os.path.exists(output) and os.path.exists(inp) and os.path.samefile(output, inp):
      raise InputError(f"{output}: output path is the input file; choose another output")
    if inp and os.path.abspath(output) == os.path.abspath(inp):
      raise InputError(f"{output}: output path is the input file; choose another output")
