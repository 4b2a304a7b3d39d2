"""Which part may know which (docs/ARCHITECTURE.md §2), enforced by import analysis.

Every module's imports are read from its source with ``ast`` (nothing is imported), at
module level and inside functions alike; imports under ``if TYPE_CHECKING:`` are types
only and are ignored for cycles but not for the "never" arrows.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {
    "jetagent": ROOT / "platform" / "jetagent",
    "capabilities": ROOT / "capabilities",
    "projections": ROOT / "projections",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (for ``from x import y``: x.y when x.y is a module)
    line: int
    typing_only: bool


def _module_name(package: str, path: Path) -> str:
    rel = path.relative_to(SOURCES[package]).with_suffix("")
    parts = [package, *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            found[_module_name(package, path)] = path
    return found


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _typing_blocks(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for sub in ast.walk(child):
                    if hasattr(sub, "lineno"):
                        lines.add(sub.lineno)
    return lines


def imports_of(module: str) -> Iterator[Import]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_lines = _typing_blocks(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, node.lineno in typing_lines)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                target = full if full in MODULES else base
                yield Import(module, target, node.lineno, node.lineno in typing_lines)


def _within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _violations(sources: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for module in sorted(MODULES):
        if not _within(module, *sources):
            continue
        for imp in imports_of(module):
            if _within(imp.target, *forbidden):
                found.append(f"{module}:{imp.line} imports {imp.target}")
    return found


PURE_CORE = ("jetagent.workflow", "jetagent.events")
IO_AND_CLOCKS = (
    "nats",
    "asyncio",
    "time",
    "random",
    "secrets",
    "uuid",
    "socket",
    "httpx",
    "jetagent.jetstream",
    "jetagent.store",
    "jetagent.orchestrator",
    "jetagent.worker",
    "jetagent.client",
)


def test_the_pure_core_does_no_io() -> None:
    found = _violations(PURE_CORE, IO_AND_CLOCKS)
    assert not found, "\n".join(found)


def test_the_pure_core_reads_no_clock() -> None:
    # datetime is a value type the events carry; reading the clock through it is not.
    calls = []
    for module in sorted(MODULES):
        if not _within(module, *PURE_CORE):
            continue
        source = MODULES[module].read_text()
        for needle in ("datetime.now(", "datetime.utcnow(", ".today(", "monotonic("):
            if needle in source:
                calls.append(f"{module}: {needle}")
    assert not calls, "\n".join(calls)


def test_the_core_never_imports_its_plugins() -> None:
    found = _violations(("jetagent",), ("capabilities", "projections"))
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "capability",
    sorted({m.split(".")[1] for m in MODULES if m.startswith("capabilities.") and "." in m[13:]}),
)
def test_a_capability_knows_no_orchestrator_other_capability_or_projection(
    capability: str,
) -> None:
    others = tuple(
        f"capabilities.{name}"
        for name in {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
        if name != capability and f"capabilities.{name}" in MODULES
    )
    forbidden = ("jetagent.orchestrator", "projections", *others)
    found = _violations((f"capabilities.{capability}",), forbidden)
    assert not found, "\n".join(found)


def test_a_projection_knows_no_capability_or_orchestrator() -> None:
    found = _violations(("projections",), ("capabilities", "jetagent.orchestrator"))
    assert not found, "\n".join(found)


def test_the_store_knows_only_jetstream_and_errors() -> None:
    allowed = ("jetagent.store", "jetagent.jetstream", "jetagent.errors")
    strays = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for module in sorted(MODULES)
        if _within(module, "jetagent.store")
        for imp in imports_of(module)
        if _within(imp.target, "jetagent") and not _within(imp.target, *allowed)
    ]
    assert not strays, "\n".join(strays)


def test_jetstream_knows_nothing_above_it() -> None:
    allowed = ("jetagent.jetstream", "jetagent.errors", "jetagent.config", "jetagent.subjects")
    strays = [
        f"{imp.module}:{imp.line} imports {imp.target}"
        for module in sorted(MODULES)
        if _within(module, "jetagent.jetstream")
        for imp in imports_of(module)
        if _within(imp.target, "jetagent") and not _within(imp.target, *allowed)
    ]
    assert not strays, "\n".join(strays)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES if m.startswith("jetagent")}
    for module in graph:
        for imp in imports_of(module):
            if imp.typing_only or imp.target == module:
                continue
            target = imp.target
            # ``import jetagent.x`` of a package counts as its __init__.
            if target in graph:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_between_modules_of_the_core() -> None:
    graph = _graph()
    # A package __init__ importing its own private modules, which import sibling modules
    # through the package's public names, is the curated-surface pattern (docs/ARCHITECTURE.md §6):
    # ignore edges from a module to its own package __init__.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    cycles = _cycles(graph)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)
