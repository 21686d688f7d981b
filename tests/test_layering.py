"""The packages' layering, read from the source with ``ast`` (nothing is imported).

``protocol`` (sans-I/O) <- ``runtime`` (trio) <- ``actors``: a layer never imports a layer
above it, and ``protocol`` imports no event loop at all. Inside ``actors`` the modules form
no import cycle, counting the imports guarded by ``if TYPE_CHECKING:`` too: a type-only
cycle still means that neither module can be read without the other. Imports inside
functions are deliberate late imports and count for the layering only.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "runtime", "actors")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


SOURCES: dict[str, Path] = {
    _module_name(path): path
    for package in PACKAGES
    for path in sorted((ROOT / package).rglob("*.py"))
}


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements run when the module is imported: into ``if`` (``TYPE_CHECKING``
    included) and ``try`` blocks, not into functions or classes."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)


def _imported(module: str, node: ast.stmt) -> Iterator[str]:
    """The modules an import statement in ``module`` names (a submodule when it exists)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            package = module if _is_package(SOURCES[module]) else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            yield submodule if submodule in SOURCES else base


def imports(module: str, *, module_level_only: bool) -> set[str]:
    tree = ast.parse(SOURCES[module].read_text(encoding="utf-8"), filename=str(SOURCES[module]))
    nodes = _module_level(tree.body) if module_level_only else ast.walk(tree)
    return {name for node in nodes for name in _imported(module, node)}


def _top(name: str) -> str:
    return name.partition(".")[0]


def _modules_of(package: str) -> list[str]:
    return [m for m in SOURCES if _top(m) == package]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("protocol", {"trio", "runtime", "actors"}),
        ("runtime", {"actors"}),
    ],
)
def test_a_layer_never_imports_a_layer_above_it(package: str, forbidden: set[str]) -> None:
    offenders = {
        module: sorted(
            name for name in imports(module, module_level_only=False) if _top(name) in forbidden
        )
        for module in _modules_of(package)
    }
    assert not {m: names for m, names in offenders.items() if names}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def actors_import_graph() -> dict[str, set[str]]:
    modules = set(_modules_of("actors"))
    return {m: (imports(m, module_level_only=True) & modules) - {m} for m in sorted(modules)}


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_actors_modules_form_no_import_cycle() -> None:
    """Module-level imports inside ``actors``, ``TYPE_CHECKING`` ones included."""
    cycles = _cycles(actors_import_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_importing_actors_loads_no_test_or_bench_module() -> None:
    """``import actors`` (every public subpackage with it) pulls in nothing made for the
    test suite, the benchmarks or the examples."""
    code = (
        "import sys, actors, actors.leader, actors.worker, actors.client, actors.cluster\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    test_only = {"tests", "bench", "examples", "pytest", "_pytest", "hypothesis", "pytest_trio"}
    assert sorted(name for name in out if _top(name) in test_only) == []


@pytest.mark.parametrize(
    ("name", "home"),
    [("Broker", "actors.leader.Broker"), ("WorkerRunner", "actors.worker.WorkerRunner"),
     ("Message", "actors.Publication"), ("JobState", "actors.leader.JobState")],
)  # fmt: skip
def test_a_name_that_moved_says_where_it_lives_now(name: str, home: str) -> None:
    import actors

    with pytest.raises(AttributeError, match=rf"actors\.{name} moved: use {re.escape(home)}"):
        getattr(actors, name)
    with pytest.raises(ImportError):
        exec(f"from actors import {name}", {})
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        actors.Nope  # noqa: B018 - the attribute access is the test
