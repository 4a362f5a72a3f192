"""README's Layout section against the tree: it lists every top-level folder and every folder and module of
`cryojax_denoise/`, and nothing that does not exist.

The section's format: list items "- `path`, `path` — what lives there"; the backquoted paths before the
" — " are the item's paths, relative to the parent item's folder (the first path of the item one level up,
ending in "/"). Folders end in "/".
"""

import pathlib
import re
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "cryojax_denoise"
SKIP_TOP = {"runs", "build", "logs", "venv", "__pycache__"}  # outputs, when the tree is not a git checkout


def layout_section(readme: str) -> str:
  m = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
  assert m, "README has no '## Layout' section"
  return m.group(1)


def listed_paths(section: str) -> set[str]:
  """Every path named by the section's list items, relative to the repository root."""
  paths, parents = set(), []  # parents: (indent, folder) of the open items
  for line in section.splitlines():
    m = re.match(r"^( *)- (.*)$", line)
    if not m:
      continue
    indent, head = len(m.group(1)), m.group(2).split(" — ")[0]
    names = re.findall(r"`([^`]+)`", head)
    assert names and " — " in m.group(2), f"Layout item without `path` — description: {line!r}"
    while parents and parents[-1][0] >= indent:
      parents.pop()
    base = parents[-1][1] if parents else ""
    for name in names:
      paths.add(base + name)
    parents.append((indent, base + names[0] if names[0].endswith("/") else base))
  return paths


def tree_files() -> list[str]:
  """Files of the tree: git's tracked files in a checkout, else the folder walked (caches skipped)."""
  try:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [f for f in out.splitlines() if (ROOT / f).exists()]
    if files:
      return files
  except (OSError, subprocess.CalledProcessError):
    pass
  return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
          if p.is_file() and not any(part.startswith(".") or part == "__pycache__" or part.endswith(".egg-info")
                                     for part in p.relative_to(ROOT).parts)]


def required_paths(files: list[str]) -> set[str]:
  """Top-level folders, `cryojax_denoise/`'s folders (direct ones and Python packages) and its modules."""
  req = set()
  for f in files:
    parts = f.split("/")
    if len(parts) > 1 and not parts[0].startswith(".") and parts[0] not in SKIP_TOP:
      req.add(parts[0] + "/")
    if parts[0] != PACKAGE or len(parts) < 2:
      continue
    if len(parts) > 2:
      req.add("/".join(parts[:2]) + "/")
    if parts[-1].endswith(".py"):
      if len(parts) > 2:  # a module's folder, and every package folder above it
        for k in range(2, len(parts)):
          req.add("/".join(parts[:k]) + "/")
      if parts[-1] != "__init__.py":
        req.add(f)
  return req


def test_parse_format():
  section = """
- `launch.py` — the launcher
- `pkg/` — the package
  - `a.py`, `b.py` — two modules
  - `sub/` — a folder
    - `c.py` — in it
  - `d.py` — back in pkg
text that is not an item, `ignored.py`
"""
  assert listed_paths(section) == {"launch.py", "pkg/", "pkg/a.py", "pkg/b.py", "pkg/sub/", "pkg/sub/c.py", "pkg/d.py"}
  with pytest.raises(AssertionError, match="without"):
    listed_paths("- no path here\n")


def test_required_paths_of_a_tree():
  files = ["launch.py", "tests/test_a.py", f"{PACKAGE}/__init__.py", f"{PACKAGE}/x.py", f"{PACKAGE}/d/__init__.py",
           f"{PACKAGE}/d/y.py", f"{PACKAGE}/pretrained/m/ckpt/data.bin", ".ci/run"]
  assert required_paths(files) == {"tests/", f"{PACKAGE}/", f"{PACKAGE}/x.py", f"{PACKAGE}/d/", f"{PACKAGE}/d/y.py",
                                   f"{PACKAGE}/pretrained/"}


def test_readme_layout_matches_the_tree():
  listed = listed_paths(layout_section((ROOT / "README.md").read_text()))
  files = tree_files()
  missing = sorted(required_paths(files) - listed)
  folders = {"/".join(f.split("/")[:k]) + "/" for f in files for k in range(1, f.count("/") + 1)}
  absent = sorted(p for p in listed if p not in folders and not (ROOT / p).is_file())
  assert not missing, f"README's Layout does not list: {missing}"
  assert not absent, f"README's Layout lists paths that do not exist: {absent}"
