"""The package's shape, read from its source with `ast` (nothing is imported).

- No import cycle between modules (a package's `__init__` counts as a module; an
  import of a submodule points at the submodule, not at its package).
- Imports inside functions (kept there so that a command starts fast, or an
  optional library loads only when used) count like any other: one placed there
  to dodge a cycle is found as that cycle.
- The layers of README's Layout import only downward.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("ftjax", "weights_port", "benchmarks")


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for package in PACKAGES
          for p in sorted((ROOT / package).rglob("*.py"))}


MODULES = _modules()


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
  """The project modules an import statement loads (submodules where named)."""
  if isinstance(node, ast.Import):
    names = [alias.name for alias in node.names]
  else:
    base = node.module or ""
    if node.level:
      anchor = module.split(".")
      anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
      base = ".".join(anchor + ([base] if base else []))
    names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
             for alias in node.names]
  found = []
  for name in names:
    while name and name not in MODULES:
      name = name.rpartition(".")[0]
    if name and name.split(".")[0] in PACKAGES:
      found.append(name)
  return found


def _imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
  """(modules imported at module level, [(line, module)] imported inside functions)."""
  path = MODULES[module]
  tree = ast.parse(path.read_text(), str(path))
  is_package = path.name == "__init__.py"
  top, inner = set(), []

  def visit(node: ast.AST, in_function: bool) -> None:
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.Import, ast.ImportFrom)):
        for target in _targets(child, module, is_package):
          if target != module:
            (inner.append((child.lineno, target)) if in_function else top.add(target))
      visit(child, in_function or isinstance(
          child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

  visit(tree, False)
  return top, inner


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def connect(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges.get(v, ())):
      if w not in index:
        connect(w)
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
        found.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      connect(v)
  return found


def test_the_reader_sees_the_project():
  # The checks below are only as good as the import graph: it must be populated.
  assert "ftjax.step" in MODULES and "weights_port.pth" in MODULES
  assert "ftjax.strategies.partition" in GRAPH["ftjax.step"][0]
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
  edges = {m: top | {t for _, t in inner} for m, (top, inner) in GRAPH.items()}
  assert _cycles(edges) == []


def _layout_layers() -> list[list[str]]:
  """README's Layout: the `layers` block lists module prefixes, top layer first."""
  text = (ROOT / "README.md").read_text()
  block = re.search(r"Layers, top first.*?```\n(.*?)```", text, re.S)
  assert block, "README's Layout has no 'Layers, top first' block"
  layers = []
  for line in block.group(1).splitlines():
    names = line.split(":", 1)[1] if ":" in line else ""
    layers.append([n.strip() for n in names.split(",") if n.strip()])
  return [layer for layer in layers if layer]


def _layer_of(module: str, layers: list[list[str]]) -> int | None:
  best, best_len = None, -1
  for i, layer in enumerate(layers):
    for prefix in layer:
      if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
        best, best_len = i, len(prefix)
  return best


def test_every_module_has_a_layer():
  layers = _layout_layers()
  missing = [m for m in MODULES if _layer_of(m, layers) is None]
  assert missing == []


def test_layers_import_only_downward():
  layers = _layout_layers()
  upward = []
  for module, (top, inner) in GRAPH.items():
    mine = _layer_of(module, layers)
    for target in top | {t for _, t in inner}:
      theirs = _layer_of(target, layers)
      if mine is not None and theirs is not None and theirs < mine:
        upward.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
  assert upward == []


@pytest.mark.parametrize("limit", [600])
def test_no_source_file_over_the_limit(limit):
  long = {str(p.relative_to(ROOT)): n for p in MODULES.values()
          if (n := len(p.read_text().splitlines())) > limit}
  assert long == {}


def test_every_command_is_a_console_script():
  """Each `python -m` entry point (a module run as __main__) is also a console script
  of pyproject.toml, pointing at a function the module defines."""
  import tomllib  # pylint: disable=import-outside-toplevel
  scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
  targets = {}
  for name, target in scripts.items():
    module, _, function = target.partition(":")
    tree = ast.parse(MODULES[module].read_text())
    assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, name
    targets[module] = name
  commands = {m for m, p in MODULES.items() if m.split(".")[0] != "benchmarks"
              and 'if __name__ == "__main__":' in p.read_text()}
  assert commands == set(targets)
