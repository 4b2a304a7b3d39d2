"""The offline deterministic provider decides from what any model is given: the
conversation, the offered tools' argument schemas and the tool results — never from a
tool's name or a prompt's wording."""

from __future__ import annotations

import json
from typing import Any

from capabilities.reasoning.offline import DeterministicPolicy, compact_rounds
from jetagent.llm import Completion, Message, ToolCall, ToolSpec

POLICY = DeterministicPolicy()


def _tool(name: str, *required: str, optional: tuple[str, ...] = ()) -> ToolSpec:
    properties = {arg: {"type": "string"} for arg in (*required, *optional)}
    parameters = {"type": "object", "properties": properties, "required": list(required)}
    return ToolSpec(name=name, description="(no description)", parameters=parameters)


def _turn(messages: list[Message], tools: list[ToolSpec]) -> Completion:
    return POLICY.complete("offline-planner", messages, tools=tools, max_tokens=512)


def _answer(turn: Completion, results: dict[str, Any]) -> list[Message]:
    """The assistant turn and its tool results, as the workflow appends them."""
    replies = [
        Message(
            role="tool",
            tool_call_id=call.id,
            name=call.name,
            content=json.dumps({"result": results[call.id]}),
        )
        for call in turn.tool_calls
    ]
    return [Message(role="assistant", content=turn.text, tool_calls=turn.tool_calls), *replies]


def test_the_tool_is_chosen_by_its_argument_schema_not_its_name() -> None:
    # Tools named to mislead: only the schema says which takes an expression.
    offered = [_tool("calculator", "url"), _tool("sum_it_up", "expression")]
    turn = _turn([Message(role="user", content="What is 6 * 7?")], offered)
    assert [(c.name, c.arguments) for c in turn.tool_calls] == [
        ("sum_it_up", {"expression": "6 * 7"})
    ]
    # With no tool that takes it, the policy asks for nothing and says so.
    turn = _turn([Message(role="user", content="What is 6 * 7?")], [_tool("fetch", "url")])
    assert not turn.tool_calls
    assert turn.text.startswith("The offline deterministic provider found nothing")


def test_statements_and_keys_stated_before_fill_key_and_value_tools() -> None:
    # The first offered tool the values fill exactly: a lookup does not take a value.
    offered = [_tool("fetch_note", "key"), _tool("keep_note", "key", "value")]
    request = Message(role="user", content="Remember that my locker is B12, then recall locker")
    first = _turn([request], offered)
    assert [(c.name, c.arguments) for c in first.tool_calls] == [
        ("keep_note", {"key": "locker", "value": "B12"})
    ]
    messages = [request, *_answer(first, {"call_1_1": "kept"})]
    second = _turn(messages, offered)
    assert [(c.name, c.arguments) for c in second.tool_calls] == [("fetch_note", {"key": "locker"})]
    messages += _answer(second, {"call_2_1": "B12"})
    done = _turn(messages, offered)
    assert (
        done.text
        == "Results: keep_note(locker) = kept; fetch_note(locker) = B12. Final answer: B12"
    )
    # A question is no statement.
    asked = _turn([Message(role="user", content="What is my locker?")], offered)
    assert not asked.tool_calls


def test_a_call_written_out_is_made_as_written() -> None:
    request = Message(role="user", content='call anything {"a": 1} and call other {"b": "x"}')
    turn = _turn([request], [])
    assert [(c.name, c.arguments) for c in turn.tool_calls] == [
        ("anything", {"a": 1}),
        ("other", {"b": "x"}),
    ]


def test_a_json_answer_and_its_revision_come_from_the_schema_in_the_conversation() -> None:
    schema = {"type": "object", "required": ["answer", "total"]}
    messages = [
        Message(role="system", content="Reply in JSON matching " + json.dumps(schema)),
        Message(role="user", content="What is 6 * 7?"),
    ]
    offered = [_tool("calc", "expression")]
    turn = _turn(messages, offered)
    messages += _answer(turn, {"call_1_1": 42})
    first = _turn(messages, offered)
    assert json.loads(first.text) == {"answer": 42, "steps": [{"step": "6 * 7", "result": 42}]}
    # Told straight after its answer that it is not right, it fills what the schema requires.
    messages += [
        Message(role="assistant", content=first.text),
        Message(role="user", content="No."),
    ]
    revised = _turn(messages, offered)
    assert json.loads(revised.text)["total"] == 42


def test_its_own_summary_counts_as_finished_rounds() -> None:
    request = Message(role="user", content="Compute 1 + 1 then 2 + 2")
    offered = [_tool("calc", "expression")]
    first = _turn([request], offered)
    older = _answer(first, {"call_1_1": 2})
    summary = Message(role="system", content="Earlier: " + compact_rounds(older))
    second = _turn([request, summary], offered)
    assert second.tool_calls == (
        ToolCall(id="call_2_1", name="calc", arguments={"expression": "2 + 2"}),
    )
