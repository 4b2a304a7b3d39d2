"""Property-based fuzzing of every decoder at the orchestrator's doors (hypothesis).

Arbitrary bytes and arbitrary JSON — deep, wide, wrong types, huge numbers, unicode
(lone surrogates included), subject characters — must always give either a valid value
or a clear rejection (a reason a person can read); no other exception may escape.
The example counts are in README "Rejections and dead letters" (keep them in step).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jetagent.contract import ID_PATTERN, rejection_id, validate_request
from jetagent.decoding import (
    PoisonMessage,
    decode_cancel,
    decode_signal,
    decode_step_result,
    is_token,
)
from jetagent.events import (
    CancelRequested,
    RequestRejected,
    SignalSent,
    Started,
    StepResult,
    WorkflowEvent,
    decode_events,
    encode,
)
from jetagent.models import ModelCatalog
from jetagent.result_check import result_problem
from jetagent.workflow import Begin, DecideContext, FoldResult, WorkflowState, decide, evolve

EXAMPLES = 300
"""Examples per property below (README "Rejections and dead letters")."""

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Text with what hurts most: subject characters, whitespace, lone surrogates, emoji.
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.sampled_from(list(".*> \t\r\n$\\\"'{}[]\x00ü\ud800😀a-_9")), max_size=20),
    st.sampled_from(["", "*", ">", "a.b", "a b", "..", "x" * 65, "\ud800", "é" * 70]),
)
huge_numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**60), max_value=10**60),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(st.none(), st.booleans(), huge_numbers, hostile_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(hostile_text, inner, max_size=6)
    ),
    max_leaves=30,
)


def _nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "[":
        return (opener * depth + closer * depth).encode()
    return ('{"a":' * depth + "1" + "}" * depth).encode()


deep_json = st.builds(_nested, st.integers(min_value=1, max_value=6000), st.sampled_from("[{"))


def _dumps(value: Any) -> bytes:
    # surrogatepass: lone surrogates reach the decoders as a hostile publisher sends them.
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _escaped(value: Any) -> bytes:
    return json.dumps(value).encode()  # \\ud800 escapes: valid JSON with lone surrogates


any_body = st.one_of(
    st.binary(max_size=300),
    deep_json,
    json_values.map(_dumps),
    json_values.map(_escaped),
)

MODELS = set(ModelCatalog.load().models)


def request_like(extra: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A request with every field present or not, right or wrong."""
    fields = {
        "request_id": st.one_of(hostile_text, st.from_regex(ID_PATTERN, fullmatch=True)),
        "tenant": st.one_of(hostile_text, st.just("acme")),
        "instruction": st.one_of(hostile_text, st.just("What is 2 + 2?")),
        "capability_limits": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {}, optional={"token_cap": huge_numbers, "deadline_s": huge_numbers}
            ),
        ),
        "model_preferences": st.one_of(json_values, st.just({"models": ["offline-planner"]})),
        "allowed_tools": st.one_of(st.none(), st.lists(hostile_text, max_size=3), json_values),
        "output": st.one_of(
            json_values,
            st.fixed_dictionaries({"type": st.just("json")}, optional={"json_schema": json_values}),
        ),
        "metadata": json_values,
        "session_context": json_values,
        **extra,
    }
    return st.fixed_dictionaries({}, optional=fields)


schemas = st.one_of(
    json_values,
    st.sampled_from(
        [
            {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
            {"type": "string", "pattern": "^[a-z]+$"},
            {"$defs": {"a": {"type": "number"}}, "items": {"$ref": "#/$defs/a"}},
            {"type": 5},
            {"pattern": "("},
            {"$ref": "#/$defs/nowhere"},
            {"$ref": "https://example.com/s.json"},
        ]
    ),
)


REQUEST_FIELDS = [
    "request_id",
    "tenant",
    "instruction",
    "capability_limits",
    "model_preferences",
    "allowed_tools",
    "output",
    "metadata",
    "session_context",
    "unknown_field",
]


@st.composite
def nearly_valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request, then up to two fields replaced by anything at all."""
    request: dict[str, Any] = {
        "request_id": draw(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)),
        "tenant": "acme",
        "instruction": draw(st.text(min_size=1, max_size=50)),
    }
    if draw(st.booleans()):
        request["output"] = {"type": "json", "json_schema": draw(schemas)}
    if draw(st.booleans()):
        request["capability_limits"] = {"token_cap": draw(st.integers(16, 10_000_000))}
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(REQUEST_FIELDS))
        request[key] = draw(json_values)
    return request


request_bodies = st.one_of(
    any_body,
    request_like({}).map(_dumps),
    request_like({}).map(_escaped),
    nearly_valid_requests().map(_escaped),
    nearly_valid_requests().map(_dumps),
)


def _readable(text: str) -> bool:
    return isinstance(text, str) and bool(text.strip())


@FUZZ
@given(body=request_bodies, msg_id=st.one_of(st.none(), hostile_text))
def test_any_request_body_is_a_workflow_or_a_clear_rejection(
    body: bytes, msg_id: str | None
) -> None:
    request, problems = validate_request(
        body,
        subject_tenant="acme",
        tenants=None,
        tools={"calculator"},
        models=MODELS,
        max_bytes=256 * 1024,
    )
    at = datetime.now(UTC)
    if request is not None:
        event("a valid workflow")
        assert problems == []
        # A valid workflow: its first event encodes and reads back.
        started = Started(
            workflow_id=request.request_id,
            at=at,
            tenant=request.tenant,
            request=request.model_dump(mode="json"),
        )
        assert decode_events(encode(started)) == [started]
        return
    event("rejected")
    assert problems, "a rejection lists its reasons"
    assert all(_readable(p) for p in problems)
    # The rejection has an id the sender can compute, and is recordable as an event.
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError):
        raw = None
    wid = rejection_id(raw.get("request_id") if isinstance(raw, dict) else None, msg_id)
    assert wid is None or is_token(wid)
    rejected = RequestRejected(workflow_id=wid or "seq-1", at=at, reasons=problems)
    assert decode_events(encode(rejected)) == [rejected]


@FUZZ
@given(
    body=st.one_of(
        any_body,
        st.fixed_dictionaries(
            {"type": st.sampled_from(["CancelRequested", "SignalSent"])},
            optional={
                "workflow_id": hostile_text,
                "name": hostile_text,
                "payload": json_values,
                "reason": json_values,
                "by": hostile_text,
            },
        ).map(_dumps),
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(["CancelRequested", "SignalSent"]),
                "workflow_id": st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
                "name": st.text(max_size=10),
            },
            optional={"payload": json_values, "reason": st.text(), "by": st.text()},
        ).map(_escaped),
    )
)
def test_any_cancel_or_signal_is_read_or_refused_with_a_reason(body: bytes) -> None:
    for decode in (decode_cancel, decode_signal):
        value: CancelRequested | SignalSent | None = None
        try:
            value = decode(body)
        except PoisonMessage as exc:
            reason = exc.reason
        if value is None:
            event("refused")
            assert _readable(reason)
        else:
            event("read")
            assert is_token(value.workflow_id)


STATE_CTX = DecideContext(models=ModelCatalog.load().models)


def _workflow_with_a_pending_step() -> WorkflowState:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    begin = Begin(
        workflow_id="wf-1",
        tenant="acme",
        request={"instruction": "Say hello", "tenant": "acme", "request_id": "wf-1"},
        at=at,
    )
    state = WorkflowState()
    for started in decide(state, begin, STATE_CTX):
        state = evolve(state, started)
    assert state.steps, "the workflow scheduled its first step"
    return state


PENDING = _workflow_with_a_pending_step()
[PENDING_STEP] = PENDING.steps.values()

result_bodies = st.fixed_dictionaries(
    {"type": st.just("StepResult")},
    optional={
        "workflow_id": st.one_of(hostile_text, st.just("wf-1")),
        "step_id": st.one_of(hostile_text, st.just(PENDING_STEP.step_id)),
        "capability": st.one_of(hostile_text, st.sampled_from(["reasoning", "tools"])),
        "tool": st.one_of(st.none(), hostile_text),
        "attempt": st.one_of(huge_numbers, st.just(1)),
        "tenant": st.one_of(hostile_text, st.just("acme")),
        "ok": st.one_of(st.booleans(), json_values),
        "output": st.one_of(json_values, st.fixed_dictionaries({"text": hostile_text})),
        "error": json_values,
        "calls": json_values,
        "started_at": st.one_of(hostile_text, st.just("2026-01-01T00:00:00Z")),
        "finished_at": st.one_of(hostile_text, st.just("2026-01-01T00:00:01Z")),
    },
)


@st.composite
def nearly_valid_results(draw: st.DrawFn) -> dict[str, Any]:
    """The pending step's right answer, then up to two fields replaced by anything."""
    result: dict[str, Any] = {
        "type": "StepResult",
        "workflow_id": "wf-1",
        "step_id": PENDING_STEP.step_id,
        "capability": PENDING_STEP.capability,
        "attempt": PENDING_STEP.attempt,
        "tenant": "acme",
        "ok": draw(st.booleans()),
        "output": {"text": draw(st.text(max_size=40)), "tool_calls": []},
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:00:01Z",
    }
    keys = [*result, "tool", "error", "calls", "routing", "deliveries"]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        result[draw(st.sampled_from(keys))] = draw(json_values)
    return result


@FUZZ
@given(
    body=st.one_of(
        any_body,
        result_bodies.map(_dumps),
        result_bodies.map(_escaped),
        nearly_valid_results().map(_dumps),
        nearly_valid_results().map(_escaped),
    ),
    subject_capability=st.sampled_from(["reasoning", "reasoning", "tools", "x"]),
)
def test_any_step_result_is_folded_only_if_it_matches_the_pending_step(
    body: bytes, subject_capability: str
) -> None:
    # The orchestrator's step-result path, minus NATS: decode, check trust, decide.
    result: StepResult | None = None
    try:
        result = decode_step_result(body)
    except PoisonMessage as exc:
        reason = exc.reason
    if result is None:
        event("poison")
        assert _readable(reason)
        return
    subject = f"ja.step.{subject_capability}.{result.workflow_id}.{result.step_id}"
    problem = result_problem(subject, result, PENDING, prefix="ja")
    if problem is not None:
        event("untrusted")
        assert _readable(problem)
        return
    assert result.capability == PENDING_STEP.capability == subject_capability
    assert result.step_id == PENDING_STEP.step_id
    assert result.attempt == PENDING_STEP.attempt
    fold = FoldResult(result=result, result_seq=7, at=datetime.now(UTC))
    # Folded, whatever the output holds (unreadable tool calls fail the step).
    events = decide(PENDING, fold, STATE_CTX)
    event("trusted and folded")
    assert events, "a trusted result for a pending step is folded"
    for folded in events:
        assert decode_events(encode(folded)) == [folded]


@FUZZ
@given(body=any_body)
def test_any_workflow_message_is_events_or_a_decode_error(body: bytes) -> None:
    events: list[WorkflowEvent] | None = None
    try:
        events = decode_events(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        reason = str(exc)
    if events is None:
        event("refused")
        assert _readable(reason)
    else:
        event("events")
        assert events
