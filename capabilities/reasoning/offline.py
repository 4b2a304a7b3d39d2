"""The offline deterministic provider: a fixed policy, not a language model.

It serves models whose catalog entry says ``provider = "offline"`` (``offline-planner``),
so the demo and tests run real multi-step agent loops with no network. Named as what it
is wherever it appears (``provider: offline``, and its answers say so). It decides from
what any model is given — the conversation, the offered tools with their argument
schemas, the tool results — and knows no tool, prompt or request by name.

**Its policy.** The request (the last user turn) is read in stages, split at "then" (or
";"); each stage that asks for something becomes one round of tool calls, in order
(:mod:`capabilities.reasoning._reading`):

- a call written out, ``call NAME {json}``, is made as written (several: "and");
- every other thing the stage says goes to the first offered tool whose argument schema
  it fills exactly: an arithmetic expression (operator words read as symbols: "plus",
  "multiply A by B", "add A to B" …) fills a tool whose one argument is an
  ``expression``; a statement "K is V" one that takes a ``key`` and a ``value``; a key
  stated by an earlier stage, mentioned again, one that takes a ``key``. A thing no
  offered tool takes asks for nothing;
- "the result" (or "it") stands for the last result of the round before.

After the last round it answers from the tool results: every call with its result, and
the final one. Where the conversation asks for JSON (a system turn that mentions JSON and
ends with a JSON Schema), it answers ``{"answer": ..., "steps": [...]}``; told right
after that answer that it is not right (a user turn straight after it), it answers again
with every property the schema requires set to the final result.

**Its summaries.** :func:`compact_rounds` summarises older rounds as
``earlier rounds: [...]``; reading such a summary back, it counts those rounds as done.

It counts tokens honestly by the stated rule of ``jetagent.tokens`` (input: the whole
conversation; output: its text and tool calls) and never writes more than ``max_tokens``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence

from capabilities.reasoning._reading import EXPRESSION, KEY, read_stage, stages, takes
from jetagent.llm import Completion, Message, ToolCall, ToolSpec, Usage
from jetagent.models import ModelConfig
from jetagent.tokens import count_message_tokens, count_tokens

__all__ = ["DeterministicPolicy", "OfflineProvider", "compact_rounds"]

PROVIDER = "offline"
ROUNDS_PREFIX = "earlier rounds: "
_SCHEMA_WORDS = frozenset({"type", "properties", "required", "items", "enum", "const", "$schema"})


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


def _round(call: ToolCall, results: dict[str | None, str]) -> tuple[str, str]:
    return _label(call), _tool_result_value(results.get(call.id, "(no result)"))


def _calls(
    stage: str, previous: str | None, known: list[str], tools: Sequence[ToolSpec]
) -> tuple[list[tuple[str, dict[str, object]]], list[str]]:
    """The ``(tool, arguments)`` a stage calls, and the keys it states."""
    reading = read_stage(stage, previous, known)
    calls: list[tuple[str, dict[str, object]]] = []
    for ask in reading.asks:
        if ask.tool is not None:
            calls.append((ask.tool, ask.arguments))
            continue
        tool = next((t for t in tools if takes(t, ask.arguments)), None)
        if tool is not None:
            calls.append((tool.name, ask.arguments))
    return calls, reading.stated


class DeterministicPolicy:
    """The offline deterministic provider's policy: tool calls from the request's stages,
    then an answer from their results (see the module's docstring)."""

    name = PROVIDER

    def complete(
        self,
        model: str,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec],
        max_tokens: int,
    ) -> Completion:
        """The next turn of ``messages``: a round of tool calls, or the answer."""
        usage_in = count_message_tokens(messages)
        schema = _answer_schema(messages)
        revising = schema is not None and _told_again(messages)
        last = len(messages) - (2 if revising else 0)
        request_at = max((i for i in range(last) if messages[i].role == "user"), default=-1)
        request = messages[request_at].content if request_at >= 0 else ""
        after = messages[request_at + 1 :]
        results = {m.tool_call_id: m.content for m in after if m.role == "tool"}
        # Results per finished round, in order; round k answered the k-th stage that asks
        # for calls. Rounds summarised away by a compaction come first, from its summary.
        finished: list[list[tuple[str, str]]] = [*_compacted_rounds(messages)]
        finished += [
            [_round(c, results) for c in m.tool_calls]
            for m in after
            if m.role == "assistant" and m.tool_calls
        ]
        done = [item for round_results in finished for item in round_results]
        steps = stages(request)
        previous: str | None = None
        known: list[str] = []
        answered = 0
        for index, stage in enumerate(steps):
            calls, stated = _calls(stage, previous, known, tools)
            known += [key for key in stated if key not in known]
            if not calls:
                continue
            if answered < len(finished):
                previous = finished[answered][-1][1] if finished[answered] else previous
                answered += 1
                continue
            tool_calls = tuple(
                ToolCall(id=f"call_{index + 1}_{i + 1}", name=name, arguments=arguments)
                for i, (name, arguments) in enumerate(calls)
            )
            text = f"Stage {index + 1} of {len(steps)}: calling " + ", ".join(
                name for name, _ in calls
            )
            return self._answer(model, text, tool_calls, usage_in, max_tokens, "tool_calls")
        if schema is not None:
            text = _json_answer(done, schema, revising=revising)
        else:
            text = _final_text(request, done)
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


def _told_again(messages: Sequence[Message]) -> bool:
    """Whether the last turn is the user's, straight after an answer (no tool calls)."""
    return (
        len(messages) >= 2
        and messages[-1].role == "user"
        and messages[-2].role == "assistant"
        and not messages[-2].tool_calls
    )


def _compacted_rounds(messages: Sequence[Message]) -> list[list[tuple[str, str]]]:
    """The rounds a summary of its own (:func:`compact_rounds`) stands for."""
    rounds: list[list[tuple[str, str]]] = []
    for message in messages:
        at = message.content.find(ROUNDS_PREFIX) if message.role == "system" else -1
        if at < 0:
            continue
        with contextlib.suppress(json.JSONDecodeError, TypeError, ValueError):
            for round_ in json.loads(message.content[at + len(ROUNDS_PREFIX) :]):
                rounds.append([(str(label), str(value)) for label, value in round_])
    return rounds


def compact_rounds(messages: Sequence[Message]) -> str:
    """The policy's summary of older turns: every finished round's results, as JSON."""
    results = {m.tool_call_id: m.content for m in messages if m.role == "tool"}
    rounds = [*_compacted_rounds(messages)]
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            rounds.append([_round(c, results) for c in message.tool_calls])
    return ROUNDS_PREFIX + json.dumps(rounds)


def _answer_schema(messages: Sequence[Message]) -> dict[str, object] | None:
    """The JSON Schema the answer must satisfy: what a system turn that mentions JSON
    ends with (None: a text answer)."""
    for message in reversed(messages):
        if message.role != "system" or "json" not in message.content.lower():
            continue
        start = message.content.find("{")
        if start < 0:
            continue
        try:
            schema = json.loads(message.content[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(schema, dict) and (not schema or _SCHEMA_WORDS & schema.keys()):
            return schema
    return None


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def _json_answer(done: list[tuple[str, str]], schema: dict[str, object], *, revising: bool) -> str:
    """A JSON answer; revising, it also fills the schema's required properties."""
    answer: dict[str, object] = {
        "answer": _value(done[-1][1]) if done else None,
        "steps": [{"step": label, "result": _value(value)} for label, value in done],
    }
    required = schema.get("required")
    if revising and isinstance(required, list):
        for name in required:
            answer.setdefault(str(name), answer["answer"])
    return json.dumps(answer)


def _label(call: ToolCall) -> str:
    """How the answer names a call: its expression, else the tool and the key it used."""
    if EXPRESSION in call.arguments:
        return str(call.arguments[EXPRESSION])
    if KEY in call.arguments:
        return f"{call.name}({call.arguments[KEY]})"
    return call.name


def _final_text(request: str, done: list[tuple[str, str]]) -> str:
    if not done:
        return (
            "The offline deterministic provider found nothing an offered tool takes in: "
            f"{request.strip()[:200]!r}. It calls tools with arithmetic, 'K is V' "
            "statements, keys stated before and explicit 'call TOOL {json}' steps; "
            "configure a real model for open questions."
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
    """The offline deterministic provider behind the provider interface of
    ``ModelGateway`` (``provider = "offline"``)."""

    def __init__(self) -> None:
        self._policy = DeterministicPolicy()

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
        return self._policy.complete(model.name, messages, tools=tools, max_tokens=max_tokens)

    async def aclose(self) -> None:
        return None
