"""The import graph of `cryojax_denoise` has no cycle: layers point one way.

Every `import` / `from ... import` in every module counts, at module level and inside functions
(a lazy import is still a dependency), except under `if TYPE_CHECKING:` (never executed). An edge
goes to the module named: `from pkg import sub` with `sub` a submodule -> `pkg.sub`; `from pkg import
name` with `name` defined in `pkg/__init__.py` -> `pkg` (its `__init__`, which then must not import
back the importer). Importing `a.b.c` also runs `a/__init__` and `a/b/__init__`, but only to start
them, so those parent edges are not counted (a package that imports its own self-registering
submodules is not a circle). Parsed with `ast`: no module is imported.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = "cryojax_denoise"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE


def module_files(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
  """{dotted module name: file} for every .py under `root` (a package's `__init__.py` is the package)."""
  out = {}
  for path in sorted(root.rglob("*.py")):
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _is_type_checking(test: ast.expr) -> bool:
  return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
      isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
  """Every Import/ImportFrom node in `tree`, skipping `if TYPE_CHECKING:` bodies (their `else` counts)."""
  stack = [tree]
  while stack:
    node = stack.pop()
    if isinstance(node, ast.If) and _is_type_checking(node.test):
      stack.extend(node.orelse)
      continue
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
  """The `cryojax_denoise` modules that module `name` (file `path`) imports."""
  is_package = path.name == "__init__.py"
  out = set()

  def add(target: str) -> None:
    # the longest known module that is `target` or a prefix of it (`import a.b.c` of an attribute path)
    while target and target not in modules:
      target = target.rpartition(".")[0]
    if target:
      out.add(target)

  for node in _import_nodes(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
          add(alias.name)
      continue
    if node.level:  # relative: resolve against this module's package
      package = name if is_package else name.rpartition(".")[0]
      for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
      base = f"{package}.{node.module}" if node.module else package
    else:
      base = node.module or ""
    if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
      continue
    for alias in node.names:
      sub = f"{base}.{alias.name}"
      add(sub if sub in modules else base)
  out.discard(name)
  return out


def import_graph() -> dict[str, set[str]]:
  modules = module_files()
  return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan), each sorted."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []
  counter = [0]

  def visit(v: str) -> None:
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _path_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
  """One closed walk through `component` (for a readable failure)."""
  members = set(component)
  start = component[0]
  prev, frontier = {start: None}, [start]
  while frontier:
    nxt = []
    for v in frontier:
      for w in sorted(graph[v] & members):
        if w == start:
          walk = [v]
          while prev[walk[-1]] is not None:
            walk.append(prev[walk[-1]])
          return list(reversed(walk)) + [start]
        if w not in prev:
          prev[w] = v
          nxt.append(w)
    frontier = nxt
  return component


def test_graph_sees_lazy_relative_and_package_imports(tmp_path):
  pkg = tmp_path / PACKAGE
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("from . import a\n")
  (pkg / "sub" / "a.py").write_text("def f():\n  from cryojax_denoise.sub import b\n")
  (pkg / "sub" / "b.py").write_text("import typing\nif typing.TYPE_CHECKING:\n  from cryojax_denoise import c\n"
                                   "from cryojax_denoise import sub\n")
  (pkg / "c.py").write_text("from .sub.a import f\n")
  modules = module_files(pkg)
  graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
  assert graph[f"{PACKAGE}.sub"] == {f"{PACKAGE}.sub.a"}
  assert graph[f"{PACKAGE}.sub.a"] == {f"{PACKAGE}.sub.b"}      # function-level import counts
  assert graph[f"{PACKAGE}.sub.b"] == {f"{PACKAGE}.sub"}        # TYPE_CHECKING skipped; package __init__
  assert graph[f"{PACKAGE}.c"] == {f"{PACKAGE}.sub.a"}          # relative import resolved
  assert cycles(graph) == [[f"{PACKAGE}.sub", f"{PACKAGE}.sub.a", f"{PACKAGE}.sub.b"]]


def test_no_import_cycles():
  graph = import_graph()
  assert len(graph) > 50  # the walk found the package
  found = cycles(graph)
  assert not found, "import cycles among cryojax_denoise modules:\n" + "\n".join(
      " -> ".join(_path_in(c, graph)) + f"   ({len(c)} modules)" for c in found)


def test_denoisers_import_no_training_code():
  """`import cryojax_denoise.denoisers` loads no `cryojax_denoise.training` module (learned methods load
  theirs when called); run in a fresh interpreter so other tests' imports do not count."""
  import subprocess
  import sys

  code = ("import sys; from cryojax_denoise import denoisers; assert 'gan' in denoisers.names(); "
          "print(sorted(m for m in sys.modules if m.startswith('cryojax_denoise.training')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, check=True)
  assert out.stdout.strip() == "[]", out.stdout


def test_learned_registry_stubs_have_the_loaders_signatures():
  import inspect

  from cryojax_denoise.denoisers import learned_registry as stubs
  from cryojax_denoise.training import learned

  for name in ("load_autoencoder", "load_gan", "load_autoencoder_cwf", "fit_autoencoder_cwf"):
    assert str(inspect.signature(getattr(stubs, name))) == str(inspect.signature(getattr(learned, name))), name
