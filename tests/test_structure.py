"""The code base stays readable: small modules and functions, and no import cycle (issue #13's targets).

Both checks read the source with ``ast`` (nothing is imported), so they are fast and name each offender:
a module over ``MAX_MODULE_LINES`` lines or a function over ``MAX_FUNCTION_LINES`` in the size scope
(file:line and size), and an import cycle among the project's modules as a chain of imports (each with
the file:line that makes it). Imports inside functions count: a lazy import only hides a cycle from
start-up, it still ties the two modules together. Imports under ``if TYPE_CHECKING:`` do not (they never
run). The planted-package tests show the checks catch what they claim to.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
#: where the size limits hold (the product code a newcomer reads)
SIZE_SCOPE = ("rollouts", "env", "policies", "evaluation", "train.py", "evaluate.py", "route.py")
#: the project's modules, for the import graph: packages and the entry modules beside them
GRAPH_PACKAGES = ("rollouts", "env", "policies", "evaluation", "bench", "scripts", "examples")
GRAPH_MODULES = ("collect.py", "train.py", "evaluate.py", "route.py", "serve.py")


def python_files(root: Path, entries: tuple[str, ...]) -> list[Path]:
    """The ``.py`` files under ``root``'s ``entries`` (folders searched recursively; missing ones skipped)."""
    out: list[Path] = []
    for entry in entries:
        p = root / entry
        out += [p] if p.is_file() else sorted(p.rglob("*.py"))
    return out


def size_offenders(root: Path, entries: tuple[str, ...], max_module: int, max_function: int) -> list[str]:
    """``file: N lines`` for each module over ``max_module`` lines and ``file:line name(): N lines`` for
    each function (methods and nested functions included) over ``max_function``."""
    out = []
    for f in python_files(root, entries):
        src = f.read_text(encoding="utf-8")
        rel = f.relative_to(root)
        n_lines = len(src.splitlines())
        if n_lines > max_module:
            out.append(f"{rel}: module of {n_lines} lines (max {max_module})")
        for node in ast.walk(ast.parse(src, filename=str(f))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > max_function:
                    out.append(f"{rel}:{node.lineno}: function {node.name}() of {size} lines (max {max_function})")
    return out


@dataclass(frozen=True)
class ImportEdge:
    """``source`` imports ``target`` at ``where`` (file:line)."""

    source: str
    target: str
    where: str


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking_guard(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or in a function, except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif _is_type_checking_guard(node):
            todo += getattr(node, "orelse", [])  # the else branch does run
        else:
            todo += ast.iter_child_nodes(node)
    return found


def import_graph(root: Path, packages: tuple[str, ...], modules: tuple[str, ...]) -> list[ImportEdge]:
    """The imports between the project's modules. ``import a.b`` and ``from a import b`` (b a module)
    point at ``a.b``, ``from a.b import name`` at ``a.b``: the module the statement names, not the parent
    packages Python also initialises (a package front that lazily imports its implementations, which
    import the package's base module, is no cycle: rollouts/backends/)."""
    files = {module_name(root, f): f for f in python_files(root, packages + modules)}
    edges = []
    for src_mod, f in files.items():
        is_package = f.name == "__init__.py"
        for node in _imports(ast.parse(f.read_text(encoding="utf-8"), filename=str(f))):
            where = f"{f.relative_to(root)}:{node.lineno}"
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's own package, up level - 1
                    pkg = src_mod.split(".") if is_package else src_mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in dict.fromkeys(targets):
                if target in files and target != src_mod:
                    edges.append(ImportEdge(src_mod, target, where))
    return edges


def import_cycles(edges: list[ImportEdge]) -> list[list[ImportEdge]]:
    """The cycles of the graph as chains of edges: a shortest one through each module that is on a
    cycle and not on one already reported."""
    out_edges: dict[str, dict[str, ImportEdge]] = {}
    for e in edges:
        out_edges.setdefault(e.source, {}).setdefault(e.target, e)
    cycles = []
    done: set[str] = set()
    for start in sorted(out_edges):
        if start in done:
            continue
        chain = _shortest_cycle(start, out_edges)
        if chain:
            cycles.append(chain)
            done.update(e.source for e in chain)
    return cycles


def _shortest_cycle(start: str, out_edges: dict[str, dict[str, ImportEdge]]) -> list[ImportEdge]:
    """The shortest chain of imports from ``start`` back to itself (breadth first), or []."""
    came: dict[str, ImportEdge] = {}
    queue = deque([start])
    while queue:
        mod = queue.popleft()
        for target, edge in sorted(out_edges.get(mod, {}).items()):
            if target == start:
                chain = [edge]
                while chain[0].source != start:
                    chain.insert(0, came[chain[0].source])
                return chain
            if target not in came:
                came[target] = edge
                queue.append(target)
    return []


def describe_cycle(chain: list[ImportEdge]) -> str:
    """``a (a.py:3) -> b (b.py:9) -> a``: each module with the line where it imports the next."""
    return " -> ".join(f"{e.source} ({e.where})" for e in chain) + f" -> {chain[0].source}"


def test_no_module_or_function_over_the_size_limits() -> None:
    offenders = size_offenders(ROOT, SIZE_SCOPE, MAX_MODULE_LINES, MAX_FUNCTION_LINES)
    assert not offenders, "too big (split it):\n" + "\n".join(offenders)


def test_no_import_cycle_among_project_modules() -> None:
    edges = import_graph(ROOT, GRAPH_PACKAGES, GRAPH_MODULES)
    assert len({e.source for e in edges}) > 50  # the graph really covers the project
    cycles = import_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(describe_cycle(c) for c in cycles)


def _plant(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_cycle_detector_reports_a_planted_cycle_as_a_chain(tmp_path: Path) -> None:
    _plant(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import os\nfrom pkg.b import thing\n",
        "pkg/b.py": "def thing():\n    from . import c\n    return c\n",  # lazy and relative: still an edge
        "pkg/c.py": "from pkg import a\n",
        "pkg/d.py": "from pkg.a import thing\n",  # imports into the cycle, is not part of it
        "top.py": "import pkg.d\n",
    })  # fmt: skip
    cycles = import_cycles(import_graph(tmp_path, ("pkg",), ("top.py",)))
    assert [describe_cycle(c) for c in cycles] == [
        "pkg.a (pkg/a.py:2) -> pkg.b (pkg/b.py:2) -> pkg.c (pkg/c.py:1) -> pkg.a"
    ]


def test_cycle_detector_accepts_a_factory_front_and_type_checking_imports(tmp_path: Path) -> None:
    # rollouts/backends/'s layout: the front imports base and lazily an implementation, which imports base
    _plant(tmp_path, {
        "pkg/__init__.py": "from pkg.base import Base\n\ndef make():\n    from pkg.impl import Impl\n    return Impl()\n",
        "pkg/base.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.impl import Impl\n",
        "pkg/impl.py": "from pkg.base import Base\n",
    })  # fmt: skip
    edges = import_graph(tmp_path, ("pkg",), ())
    assert {(e.source, e.target) for e in edges} == {("pkg", "pkg.base"), ("pkg", "pkg.impl"), ("pkg.impl", "pkg.base")}
    assert import_cycles(edges) == []


def test_size_check_names_file_line_and_size(tmp_path: Path) -> None:
    long_body = "".join(f"    x{i} = {i}\n" for i in range(81))
    _plant(tmp_path, {
        "big/ok.py": "def f():\n    return 1\n",
        "big/long_function.py": "\n\ndef long_one():\n" + long_body,
        "big/long_module.py": "x = 1\n" * 401,
    })  # fmt: skip
    assert size_offenders(tmp_path, ("big",), MAX_MODULE_LINES, MAX_FUNCTION_LINES) == [
        "big/long_function.py:3: function long_one() of 82 lines (max 80)",
        "big/long_module.py: module of 401 lines (max 400)",
    ]
