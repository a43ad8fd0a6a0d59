"""The layers of docs/ARCHITECTURE.md hold in the code: no module imports from a layer above its own, and
no import circle exists (type-only and function-level imports count too).

The import graph is read from the source with :mod:`ast`, so nothing is executed. Every module under
``src/`` must be placed in a layer here; a new module fails :func:`test_every_module_has_a_layer` until
it is.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

#: Lowest first. A module may import modules of its own layer and of lower ones.
LAYERS: List[Tuple[str, List[str]]] = [
    ("engine: pure protocol, bytes and values in and out", ["omemo_engine", "omemo_engine.*"]),
    (
        "contract: the documented API types and ABCs, and what needs nothing else",
        [
            "omemo.types",
            "omemo.storage",
            "omemo.bundle",
            "omemo.message",
            "omemo.session",
            "omemo.backend",
            "omemo.identity_key_pair",
            "omemo.version",
            "omemo.project",
            "omemo.sce",
            "omemo.hygiene",
            "omemo._runtime",
        ],
    ),
    (
        "implementations of the contract: the core, the engine backend, the storages",
        [
            "omemo._core",
            "omemo._core.*",
            "omemo._engine",
            "omemo._engine.*",
            "omemo.storages",
            "omemo.storages.*",
        ],
    ),
    ("the public facade", ["omemo.session_manager"]),
    ("built on the facade", ["omemo", "omemo.trust", "omemo.testing", "omemo.diagnostics"]),
    ("the backend packages", ["twomemo", "twomemo.*", "oldmemo", "oldmemo.*"]),
    ("integrations: adapters over the core", ["omemo_slixmpp", "omemo_slixmpp.*"]),
]

#: Siblings of one layer that must not know each other: the core drives backends only through
#: omemo.backend.Backend, and the engine backend knows nothing of the core.
SEPARATED: List[Tuple[str, str]] = [("omemo._core", "omemo._engine"), ("omemo._engine", "omemo._core")]


def _modules() -> Dict[str, Tuple[Path, bool]]:
    modules: Dict[str, Tuple[Path, bool]] = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _imports(name: str, path: Path, is_package: bool, known: Set[str]) -> Set[str]:
    """The modules of ours that ``name`` imports (``from . import x`` counts as importing ``x`` only)."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in known]
            if node.module:
                targets.append(module)
        for target in targets:
            owner = target  # "pkg.mod.Name" is an import of "pkg.mod"
            while owner not in known and "." in owner:
                owner = owner.rsplit(".", 1)[0]
            if owner in known and owner != name:
                found.add(owner)
    return found


def import_graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {
        name: _imports(name, path, is_package, set(modules)) for name, (path, is_package) in modules.items()
    }


def layer_of(module: str) -> Optional[int]:
    for index, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return index
    return None


def upward_imports(graph: Dict[str, Set[str]]) -> List[str]:
    """Every import from a higher layer, or between separated siblings, as a readable line."""
    problems = []
    for module, targets in sorted(graph.items()):
        own = layer_of(module)
        for target in sorted(targets):
            other = layer_of(target)
            if own is not None and other is not None and other > own:
                problems.append(f"{module} ({LAYERS[own][0]}) imports {target} ({LAYERS[other][0]})")
            for low, high in SEPARATED:
                if (module == low or module.startswith(low + ".")) and (
                    target == high or target.startswith(high + ".")
                ):
                    problems.append(f"{module} imports {target}: {low} must not know {high}")
    return problems


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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


GRAPH = import_graph()


def test_every_module_has_a_layer() -> None:
    assert [module for module in sorted(GRAPH) if layer_of(module) is None] == []


def test_no_module_imports_from_a_layer_above() -> None:
    assert upward_imports(GRAPH) == []


def test_no_import_circles() -> None:
    assert circles(GRAPH) == []


def test_the_engine_imports_nothing_of_ours_outside_it() -> None:
    for module, targets in GRAPH.items():
        if module.split(".")[0] == "omemo_engine":
            assert {t for t in targets if t.split(".")[0] != "omemo_engine"} == set(), module


@pytest.mark.parametrize(
    ("graph", "upward", "circular"),
    [
        ({"omemo.types": {"omemo.session_manager"}, "omemo.session_manager": set()}, 1, 0),
        ({"omemo._core.state": {"omemo._engine.backend"}, "omemo._engine.backend": set()}, 1, 0),
        ({"omemo_engine.a": {"omemo_engine.b"}, "omemo_engine.b": {"omemo_engine.a"}}, 0, 1),
        ({"omemo.trust": {"omemo.session_manager"}, "omemo.session_manager": {"omemo.types"}}, 0, 0),
    ],
    ids=["upward", "separated siblings", "circle", "downward"],
)
def test_the_checks_find_what_they_look_for(graph: Dict[str, Set[str]], upward: int, circular: int) -> None:
    assert len(upward_imports(graph)) == upward
    assert len(circles(graph)) == circular


def test_the_graph_sees_relative_and_type_only_imports() -> None:
    # omemo._core.state imports omemo._core.devices relatively; omemo.session_manager imports the core.
    assert "omemo._core.devices" in GRAPH["omemo._core.state"]
    assert "omemo._core.state" in GRAPH["omemo.session_manager"]
    assert "omemo._runtime" in GRAPH["omemo.session_manager"]  # from . import _runtime
