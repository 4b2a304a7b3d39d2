"""Capabilities see only their step: no module under ``capabilities/`` reaches past it.

A capability is a stateless worker of one step (docs/ARCHITECTURE.md, "Which part may
know which"): what it needs of the workflow travels in the step (``StepContext.input``
and the step's own fields), so it imports only jetagent's public worker API and shared
value types (``llm``, ``models``, ``errors``, ``tokens``, the step result's
``CallRecord``…). It never imports the workflow core, the orchestrator, the store, the
CLI, the gateway, the client, a projection or another capability, never the workflow's
events (``Started``…) or their codec, and never reads the workflow's streams or subjects.

Checked by reading the source (``ast``), so a forbidden import inside a function or
under ``TYPE_CHECKING`` counts too.
"""

from __future__ import annotations

import ast
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

from jetagent import events

ROOT = Path(__file__).resolve().parent.parent
CAPABILITIES = ROOT / "capabilities"

FORBIDDEN_MODULES = (
    "jetagent.workflow",
    "jetagent.orchestrator",
    "jetagent.store",
    "jetagent.cli",
    "jetagent.gateway",
    "jetagent.client",
    "jetagent.sessions",
    "jetagent.result_check",
    "projections",
)
"""Layers above a capability, or beside it, and the workflow's own pure core."""

WORKFLOW_EVENT_NAMES = frozenset(
    {cls.__name__ for cls in typing.get_args(events.WorkflowEvent)}
    | {
        "WorkflowEvent",
        "CancelRequested",
        "SignalSent",
        "CURRENT_VERSIONS",
        "UPCASTERS",
        "decode_event",
        "decode_events",
        "decode_step_result",
        "encode_events",
        "group_for_messages",
        "subject_tail",
    }
)
"""What of ``jetagent.events`` belongs to the workflow's record, not to a step's result."""

WORKFLOW_NAMES = frozenset(
    {
        "workflow_root",
        "workflows_stream",
        "requests_stream",
        "steps_stream",
        "timers_stream",
        "step_results",
        "step_scheduled",
    }
)
"""``jetagent.config.Names`` members that locate the workflow's record."""

WORKFLOW_SUBJECT_PARTS = (".wf.", "wf.*", ".StepScheduled", ".Started", "_WORKFLOWS", "_REQUESTS")
"""Pieces of a hand-built subject or stream name of the workflow's record."""

CONSUMER_FILTER = "subjects"
"""``CapabilitySpec(subjects=...)``: the consumer filter of a pool serving some tools only.

It declares which scheduled steps the worker receives (the worker's business, not a read
of the workflow), so its ``StepScheduled`` subjects are not a reach past the step; the
worker's API should build them itself one day (a spec naming the tools it serves)."""


@dataclass(frozen=True)
class Reach:
    """One place a capability reaches past its step."""

    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _modules() -> list[Path]:
    return sorted(p for p in CAPABILITIES.rglob("*.py") if "__pycache__" not in p.parts)


def _capability_of(path: Path) -> str:
    """The capability a module belongs to (``capabilities/<name>/...``)."""
    parts = path.relative_to(CAPABILITIES).parts
    return parts[0] if len(parts) > 1 else ""


def _imported(node: ast.Import | ast.ImportFrom, path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` pairs an import statement binds (``name`` None: the module)."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    module = node.module or ""
    if node.level:
        package = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
        module = ".".join((*package, *([module] if module else [])))
    return [(module, alias.name) for alias in node.names]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _import_reaches(path: Path, module: str, name: str | None) -> str | None:
    full = f"{module}.{name}" if name else module
    for forbidden in FORBIDDEN_MODULES:
        if _within(module, forbidden) or _within(full, forbidden):
            return f"imports {full} ({forbidden})"
    if _within(module, "capabilities"):
        other = module.split(".")[1] if module.count(".") else ""
        own = _capability_of(path)
        if other and own and other != own:
            return f"imports another capability: {full}"
    if module == "jetagent.events":
        if name is None or name == "*":
            return "imports jetagent.events whole (take the step-result types by name)"
        if name in WORKFLOW_EVENT_NAMES:
            return f"imports the workflow's {name} from jetagent.events"
    if module == "jetagent" and name == "events":
        return "imports jetagent.events whole (take the step-result types by name)"
    return None


def _strings(node: ast.AST) -> list[str]:
    """The literal text of a string or f-string node."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value for v in node.values if isinstance(v, ast.Constant))]
    return []


def _consumer_filters(tree: ast.AST) -> set[int]:
    """ids of the nodes inside a ``CapabilitySpec(subjects=...)`` argument."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "CapabilitySpec":
            for keyword in node.keywords:
                if keyword.arg == CONSUMER_FILTER:
                    inside.update(id(n) for n in ast.walk(keyword.value))
    return inside


def reaches(path: Path, source: str) -> list[Reach]:
    """Every place the module at ``path`` (source ``source``) reaches past its step."""
    tree = ast.parse(source, filename=str(path))
    where = str(path.relative_to(ROOT))
    found: list[Reach] = []
    filters = _consumer_filters(tree)
    # An f-string's literal parts are read as the whole f-string, not again on their own;
    # docstrings (a string as a statement) may describe what they like.
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    parts |= {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for module, name in _imported(node, path):
                problem = _import_reaches(path, module, name)
                if problem is not None:
                    found.append(Reach(where, node.lineno, problem))
        elif isinstance(node, ast.Attribute) and node.attr in WORKFLOW_NAMES:
            found.append(Reach(where, node.lineno, f"reads the workflow's .{node.attr}"))
        elif id(node) not in filters and id(node) not in parts:
            for text in _strings(node):
                hits = [part for part in WORKFLOW_SUBJECT_PARTS if part in text]
                if hits:
                    line = getattr(node, "lineno", 0)
                    found.append(Reach(where, line, f"names a workflow subject: {text!r}"))
    return sorted(found, key=lambda r: r.line)


@pytest.mark.parametrize(
    "path", _modules(), ids=lambda p: str(p.relative_to(CAPABILITIES)).removesuffix(".py")
)
def test_a_capability_module_sees_only_its_step(path: Path) -> None:
    found = reaches(path, path.read_text())
    assert not found, "\n".join(str(r) for r in found)


def test_the_check_finds_each_kind_of_reach() -> None:
    # The check itself: each way past the step that the rules name is found.
    path = CAPABILITIES / "memory" / "_example.py"
    source = """\'A docstring may say steps come from <prefix>.wf.<id>.StepScheduled.\'
from jetagent.workflow import JSON_INSTRUCTION
from jetagent.events import CallRecord, Started
import jetagent.orchestrator.replay
from jetagent import events
from capabilities.tools.calculator import evaluate
from capabilities.memory._store import MemoryStore
from ..reasoning import offline

async def session(ctx):
    stream = ctx.names.workflows_stream
    return await ctx.last_message(stream, f"{ctx.names.prefix}.wf.{ctx.workflow_id}.Started")
"""
    found = [r.what for r in reaches(path, source)]
    assert found == [
        "imports jetagent.workflow.JSON_INSTRUCTION (jetagent.workflow)",
        "imports the workflow's Started from jetagent.events",
        "imports jetagent.orchestrator.replay (jetagent.orchestrator)",
        "imports jetagent.events whole (take the step-result types by name)",
        "imports another capability: capabilities.tools.calculator.evaluate",
        "imports another capability: capabilities.reasoning.offline",
        "reads the workflow's .workflows_stream",
        "names a workflow subject: '.wf..Started'",
    ], found
    # A pool's consumer filter is the worker's business, not a read of the workflow.
    spec = 'CapabilitySpec(name="tools", subjects=[f"{{p}}.wf.*.StepScheduled.tools.{t}"])'
    assert reaches(path, spec) == []
