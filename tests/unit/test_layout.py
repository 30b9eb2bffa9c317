"""The folder tree is the architecture: these tests hold its arrows.

``common`` imports no other part of skyguard; ``client`` and ``node`` never import
each other; ``notifications`` uses only ``common`` of ``devops.skypilot``; no two
modules import each other (directly or around a circle); no module is too long
for a reader to hold.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("devops", "notifications")
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")
}


def _imports(path: Path) -> set[str]:
    """Project modules ``path`` imports, at any depth (lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES)
    return found


GRAPH = {name: _imports(path) for name, path in MODULES.items()}

#: part -> the parts of skyguard it must never import.
FORBIDDEN = {
    "devops.skypilot.common": ("devops.skypilot.client", "devops.skypilot.node", "notifications"),
    "devops.skypilot.client": (
        "devops.skypilot.node",
        "devops.skypilot.controller",
        "notifications",
    ),
    "devops.skypilot.node": ("devops.skypilot.client", "devops.skypilot.controller"),
    "devops.skypilot.controller": ("devops.skypilot.client", "devops.skypilot.node"),
    "devops.skypilot.heartbeat": ("devops.skypilot.client", "devops.skypilot.node"),
    "notifications": ("devops.skypilot.client", "devops.skypilot.node"),
}


def test_the_parts_exist() -> None:
    for part in FORBIDDEN:
        assert part in MODULES, f"{part} is gone: update docs/architecture.md and this test"


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_a_part_never_imports_what_it_must_not(part: str) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module == part or module.startswith(part + ".")
        for target in targets
        for banned in FORBIDDEN[part]
        if target == banned or target.startswith(banned + ".")
    )
    assert not wrong, wrong


def _cycle_from(start: str, graph: dict[str, set[str]] = GRAPH) -> list[str] | None:
    """A path of imports from ``start`` back to itself, if there is one."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        module, path = stack.pop()
        for target in graph[module]:
            if target == start:
                return [*path, start]
            if target not in seen and not start.startswith(target + "."):
                seen.add(target)
                stack.append((target, [*path, target]))
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_circle(module: str) -> None:
    # A package's __init__ importing its own submodules is not a circle back to it.
    cycle = _cycle_from(module)
    assert cycle is None, " -> ".join(cycle or [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_too_long_to_read(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(REPO)}: {lines} lines"


def test_the_layout_test_sees_a_circle() -> None:
    """The checker itself: a circle in a made-up graph is found."""
    lifecycle, termination = (
        "devops.skypilot.common.lifecycle",
        "devops.skypilot.common.termination",
    )
    assert termination in GRAPH[lifecycle]
    graph = {**GRAPH, termination: {*GRAPH[termination], lifecycle}}
    assert _cycle_from(lifecycle, graph) == [lifecycle, termination, lifecycle]
