"""The offline deterministic planner: a small rule-based planner, not a language model.

It serves models whose catalog entry says ``provider = "offline"`` (``offline-planner``),
so demos and tests run a real multi-step agent loop with no network. Named as what it
is wherever it appears (``provider: offline``, and its answers say so).

How it plans: the user's instruction is split into stages at "then" (or ";"). Each stage
asks for tool calls: every arithmetic expression becomes a ``calculator`` call (several
in one stage run in parallel), "remember K is V" a ``memory_store`` call, "recall K" /
"look up K" a ``memory_lookup`` call, and ``call NAME {json}`` calls any tool by name. In
a later stage "the result" (or "it") stands for the previous stage's last result. After
the last stage it answers with every result and the final one.

It counts tokens honestly by the stated rule of ``jetagent.tokens`` (input: the whole
conversation; output: its text and tool calls) and never writes more than ``max_tokens``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from jetagent.llm import Completion, Message, ToolCall, ToolSpec, Usage
from jetagent.models import ModelConfig
from jetagent.tokens import count_message_tokens, count_tokens
from jetagent.workflow import COMPACTION_PREFIX, JSON_INSTRUCTION, REPAIR_INSTRUCTION

__all__ = ["OfflinePlanner", "OfflineProvider", "compact_rounds"]

PROVIDER = "offline"
ROUNDS_PREFIX = "earlier rounds: "
_STAGE_SPLIT = re.compile(r"\bthen\b|;", re.IGNORECASE)
_EXPRESSION = re.compile(r"[-+]?[\d(][\d\s.()+\-*/%^]*[\d)]")
_OPERATOR = re.compile(r"[\d)]\s*(?:\*\*|[-+*/%^])\s*[\d(]")
_NUMBER = r"(\(?-?[\d.]+\)?)"
_WORDS = [
    (re.compile(rf"multiply {_NUMBER} by {_NUMBER}", re.I), r"\1 * \2"),
    (re.compile(rf"divide {_NUMBER} by {_NUMBER}", re.I), r"\1 / \2"),
    (re.compile(rf"add {_NUMBER} to {_NUMBER}", re.I), r"\2 + \1"),
    (re.compile(rf"subtract {_NUMBER} from {_NUMBER}", re.I), r"\2 - \1"),
    (re.compile(r"\s+plus\s+", re.I), " + "),
    (re.compile(r"\s+minus\s+", re.I), " - "),
    (re.compile(r"\s+(?:times|multiplied by)\s+", re.I), " * "),
    (re.compile(r"\s+divided by\s+", re.I), " / "),
]
_REMEMBER = re.compile(r"remember(?: that)? (?:my )?([\w ]+?) (?:is|=) (.+?)(?:[.,]|$)", re.I)
_RECALL = re.compile(r"(?:recall|look up|lookup) (?:my )?([\w ]+?)(?:[.,?]|$)", re.I)
_CALL = re.compile(r"\bcall ([A-Za-z0-9_-]+)\s*(\{.*?\})(?=\s*(?:and\b|,|$|\bcall\b))", re.I)
_RESULT_WORDS = re.compile(r"\b(?:the result|that result|the answer|it)\b", re.IGNORECASE)


@dataclass(frozen=True)
class _Task:
    tool: str
    arguments: dict[str, object]
    label: str


def _stages(instruction: str) -> list[str]:
    return [s.strip() for s in _STAGE_SPLIT.split(instruction) if s.strip()]


def _tasks(stage: str, previous: str | None, tools: set[str]) -> list[_Task]:
    if previous is not None:
        stage = _RESULT_WORDS.sub(f"({previous})" if _is_number(previous) else previous, stage)
    tasks: list[_Task] = []
    consumed = stage
    for match in _CALL.finditer(stage):
        try:
            arguments = json.loads(match.group(2))
        except json.JSONDecodeError:
            arguments = {"raw": match.group(2)}
        tasks.append(_Task(match.group(1), arguments, f"{match.group(1)} {match.group(2)}"))
        consumed = consumed.replace(match.group(0), " ")
    for match in _REMEMBER.finditer(consumed):
        key, value = match.group(1).strip(), match.group(2).strip()
        tasks.append(_Task("memory_store", {"key": key, "value": value}, f"remember {key}"))
        consumed = consumed.replace(match.group(0), " ")
    for match in _RECALL.finditer(consumed):
        key = match.group(1).strip()
        tasks.append(_Task("memory_lookup", {"key": key}, f"recall {key}"))
        consumed = consumed.replace(match.group(0), " ")
    for pattern, replacement in _WORDS:
        consumed = pattern.sub(replacement, consumed)
    for match in _EXPRESSION.finditer(consumed):
        expression = match.group(0).strip()
        if _OPERATOR.search(expression):
            tasks.append(_Task("calculator", {"expression": expression}, expression))
    return [t for t in tasks if t.tool in tools or t.tool not in _BUILTIN_TOOLS]


_BUILTIN_TOOLS = {"calculator", "memory_store", "memory_lookup"}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _tool_result_value(content: str) -> str:
    """The value a tool message carries (``{"result": ...}`` JSON, or its text)."""
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, TypeError):
        return content.strip()
    if isinstance(data, dict):
        for key in ("result", "value", "content"):
            if key in data:
                return str(data[key])
    return content.strip()


class OfflinePlanner:
    """Plans tool calls from the instruction and answers from their results."""

    name = PROVIDER

    def complete(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec],
        max_tokens: int,
    ) -> Completion:
        usage_in = count_message_tokens(messages)
        tool_names = {t.name for t in tools}
        instruction_at = max(
            (
                i
                for i, m in enumerate(messages)
                if m.role == "user" and not m.content.startswith(REPAIR_INSTRUCTION)
            ),
            default=-1,
        )
        instruction = messages[instruction_at].content if instruction_at >= 0 else ""
        after = messages[instruction_at + 1 :]
        rounds = [m for m in after if m.role == "assistant" and m.tool_calls]
        results = {m.tool_call_id: m.content for m in after if m.role == "tool"}
        # Results per finished round, in order; round k answered the k-th stage with tasks.
        # Rounds summarised away by a compaction come first, from its summary.
        finished: list[list[tuple[str, str]]] = [*_compacted_rounds(messages)]
        finished += [
            [
                (_label(c), _tool_result_value(results.get(c.id, "(no result)")))
                for c in r.tool_calls
            ]
            for r in rounds
        ]
        done = [item for round_results in finished for item in round_results]
        stages = _stages(instruction)
        previous: str | None = None
        answered = 0
        for index, stage in enumerate(stages):
            tasks = _tasks(stage, previous, tool_names)
            if not tasks:
                continue
            if answered < len(finished):
                previous = finished[answered][-1][1] if finished[answered] else previous
                answered += 1
                continue
            calls = tuple(
                ToolCall(id=f"call_{index + 1}_{i + 1}", name=t.tool, arguments=t.arguments)
                for i, t in enumerate(tasks)
            )
            text = f"Stage {index + 1} of {len(stages)}: calling " + ", ".join(
                t.tool for t in tasks
            )
            return self._answer(model, text, calls, usage_in, max_tokens, "tool_calls")
        schema = _json_schema(messages)
        if schema is not None:
            repairing = bool(messages) and messages[-1].content.startswith(REPAIR_INSTRUCTION)
            text = _json_answer(done, schema, repairing=repairing)
        else:
            text = _final_text(instruction, done)
        return self._answer(model, text, (), usage_in, max_tokens, "stop")

    def _answer(
        self,
        model: str,
        text: str,
        calls: tuple[ToolCall, ...],
        usage_in: int,
        max_tokens: int,
        finish: str,
    ) -> Completion:
        call_tokens = sum(count_tokens(c.name) + count_tokens(str(c.arguments)) for c in calls)
        budget = max(max_tokens - call_tokens, 0)
        text, truncated = _truncate(text, budget)
        output = count_tokens(text) + call_tokens
        return Completion(
            text=text,
            tool_calls=calls,
            usage=Usage(input_tokens=usage_in, output_tokens=output),
            model=model,
            provider=PROVIDER,
            finish_reason="length" if truncated else finish,
        )


def _compacted_rounds(messages: Sequence[Message]) -> list[list[tuple[str, str]]]:
    marker = COMPACTION_PREFIX + ROUNDS_PREFIX
    rounds: list[list[tuple[str, str]]] = []
    for message in messages:
        if message.role == "system" and message.content.startswith(marker):
            with contextlib.suppress(json.JSONDecodeError, TypeError, ValueError):
                for round_ in json.loads(message.content[len(marker) :]):
                    rounds.append([(str(label), str(value)) for label, value in round_])
    return rounds


def compact_rounds(messages: Sequence[Message]) -> str:
    """The planner's summary of older turns: every finished round's results, as JSON."""
    results = {m.tool_call_id: m.content for m in messages if m.role == "tool"}
    rounds = [*_compacted_rounds(messages)]
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            rounds.append(
                [
                    (_label(c), _tool_result_value(results.get(c.id, "(no result)")))
                    for c in message.tool_calls
                ]
            )
    return ROUNDS_PREFIX + json.dumps(rounds)


def _json_schema(messages: Sequence[Message]) -> dict[str, object] | None:
    for message in messages:
        if message.role == "system" and message.content.startswith(JSON_INSTRUCTION):
            try:
                schema = json.loads(message.content[len(JSON_INSTRUCTION) :])
            except json.JSONDecodeError:
                return {}
            return schema if isinstance(schema, dict) else {}
    return None


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def _json_answer(done: list[tuple[str, str]], schema: dict[str, object], *, repairing: bool) -> str:
    """A JSON answer; asked to repair, it also fills the schema's required properties."""
    answer: dict[str, object] = {
        "answer": _value(done[-1][1]) if done else None,
        "steps": [{"step": label, "result": _value(value)} for label, value in done],
    }
    required = schema.get("required")
    if repairing and isinstance(required, list):
        for name in required:
            answer.setdefault(str(name), answer["answer"])
    return json.dumps(answer)


def _label(call: ToolCall) -> str:
    if call.name == "calculator":
        return str(call.arguments.get("expression", ""))
    if call.name in ("memory_lookup", "memory_store"):
        return f"{call.name}({call.arguments.get('key', '')})"
    return call.name


def _final_text(instruction: str, done: list[tuple[str, str]]) -> str:
    if not done:
        return (
            "The offline planner found no step it can take for: "
            f"{instruction.strip()[:200]!r}. It plans arithmetic, memory and explicit "
            "'call TOOL {json}' steps; configure a real model for open questions."
        )
    lines = [f"{label} = {value}" for label, value in done]
    return "Results: " + "; ".join(lines) + f". Final answer: {done[-1][1]}"


def _truncate(text: str, max_tokens: int) -> tuple[str, bool]:
    if count_tokens(text) <= max_tokens:
        return text, False
    tokens = re.finditer(r"\w+|[^\w\s]", text)
    end = 0
    for i, match in enumerate(tokens):
        if i == max_tokens:
            break
        end = match.end()
    return text[:end], True


class OfflineProvider:
    """The planner behind the provider interface of ``ModelGateway`` (``provider = offline``)."""

    def __init__(self) -> None:
        self._planner = OfflinePlanner()

    @property
    def name(self) -> str:
        return PROVIDER

    async def complete(
        self,
        model: ModelConfig,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec],
        max_tokens: int,
    ) -> Completion:
        return self._planner.complete(model.name, messages, tools=tools, max_tokens=max_tokens)

    async def aclose(self) -> None:
        return None
