"""Fuzzing the projection's event path (issue 9): whatever is stored on ``ja.wf.*`` and
``ja.step.*`` — random bytes, random JSON (deep, wide, wrong types, huge numbers, unicode,
subject characters), valid events with one field replaced — the projection applies it or
skips it as poison, and its views and checkpoint can still be written.

Messages are really published (a real server assigns the sequences) and applied through
``ProjectionService.apply`` and ``checkpoint`` on a private loop thread.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetagent.config import Settings
from jetagent.embedded import EmbeddedServer
from jetagent.events import (
    CallRecord,
    Finalized,
    Spend,
    Started,
    StepCompleted,
    StepResult,
    StepScheduled,
    decode_event,
    encode_events,
)
from jetagent.jetstream import connect
from jetagent.jetstream._loop import LoopThread
from jetagent.jetstream.provision import provision
from jetagent.llm import Usage
from projections.service import ProjectionService

EXAMPLES = 300
"""Hypothesis examples per run (each publishes and applies up to 6 messages); the README
section "Hostile input" quotes this number."""

_NOW = datetime(2026, 12, 1, tzinfo=UTC)
_SPEND = Spend(tokens=10, usd=Decimal("0.01"))
_VALID_WF: list[dict[str, Any]] = [
    msgspec.to_builtins(event)
    for event in (
        Started(workflow_id="fz-1", at=_NOW, tenant="acme", request={"instruction": "hi"}),
        StepScheduled(
            workflow_id="fz-1",
            at=_NOW,
            step_id="s1",
            capability="reasoning",
            iteration=1,
            input={},
            reservation=_SPEND,
            tenant="acme",
        ),
        StepCompleted(
            workflow_id="fz-1",
            at=_NOW,
            step_id="s1",
            capability="reasoning",
            output={"text": "ok"},
            settlement=_SPEND,
            result_seq=1,
        ),
        Finalized(workflow_id="fz-1", at=_NOW, output="ok", spent=_SPEND, iterations=1),
    )
]
_VALID_STEP: dict[str, Any] = msgspec.to_builtins(
    StepResult(
        workflow_id="fz-1",
        step_id="s1",
        capability="reasoning",
        tenant="acme",
        ok=True,
        calls=[
            CallRecord(
                model="offline-planner",
                provider="offline",
                outcome="ok",
                usage=Usage(input_tokens=3, output_tokens=2),
                cost_usd=Decimal("0.001"),
            )
        ],
        started_at=_NOW,
        finished_at=_NOW,
    )
)

_text = st.text(
    alphabet=st.one_of(st.characters(), st.sampled_from(list(".*>$ \x00\u202e"))), max_size=40
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | _text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_text, inner, max_size=5),
    max_leaves=25,
)


@st.composite
def _mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """A valid event with one field replaced (or removed, or one added)."""
    event = dict(base)
    key = draw(st.sampled_from([*event, "extra"]))
    if draw(st.booleans()) and key in event:
        del event[key]
    else:
        event[key] = draw(
            _json | st.sampled_from(["*", "a.b", "", "x" * 300, "seq-1", "fz-1", ">"])
        )
    return event


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


_wf_bodies = st.one_of(
    st.binary(max_size=300),
    _json.map(_body),
    st.sampled_from(_VALID_WF).map(_body),
    st.sampled_from(_VALID_WF).flatmap(_mutated).map(_body),
    st.lists(st.sampled_from(_VALID_WF).flatmap(_mutated), max_size=4).map(_body),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
)
_step_bodies = st.one_of(
    st.binary(max_size=300),
    _json.map(_body),
    st.just(_body(_VALID_STEP)),
    _mutated(_VALID_STEP).map(_body),
)
_messages = st.lists(
    st.one_of(
        st.tuples(st.just("wf"), _wf_bodies),
        st.tuples(st.just("step"), _step_bodies),
    ),
    min_size=1,
    max_size=6,
)


@pytest.fixture(scope="module")
def live(nats_server: EmbeddedServer) -> Iterator[tuple[LoopThread, ProjectionService, Any]]:
    loop = LoopThread(name="projection-fuzz")
    prefix = "fz" + uuid.uuid4().hex[:8]
    config = Settings(nats_url=nats_server.url, prefix=prefix, tenants="*")
    nc = loop.run(connect(nats_server.url, name="projection-fuzz"))
    try:
        loop.run(provision(nc, config, consumers=False))
        service = ProjectionService(nc, config)
        loop.run(service.load_checkpoint())
        yield loop, service, nc
    finally:
        loop.run(nc.close())
        loop.stop()


async def _publish_and_apply(
    service: ProjectionService,
    nc: Any,
    messages: list[tuple[str, bytes]],
    workflow_id: str = "fz-1",
) -> int:
    js = nc.jetstream()
    names = service.names
    applied = 0
    for kind, data in messages:
        stream = names.workflows_stream if kind == "wf" else names.steps_stream
        subject = (
            f"{names.prefix}.wf.{workflow_id}.Started"
            if kind == "wf"
            # The subject a real result of the valid step is written on (projections/trust.py)
            else names.step_result("reasoning", workflow_id, "s1")
        )
        ack = await js.publish(subject, data)
        await service.apply(stream, ack.seq, subject, data)
        assert service.positions[stream] == ack.seq
        applied += 1
    await service.checkpoint()  # views written under their ids: no id may break a put
    await service.poison.flush()
    return applied


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=_messages)
def test_no_stored_message_breaks_the_projection(
    live: tuple[LoopThread, ProjectionService, Any], messages: list[tuple[str, bytes]]
) -> None:
    loop, service, nc = live
    seen_before = sum(service.metrics.poison.values())
    # Results held from earlier examples (waiting for their step's schedule) may be judged
    # untrusted now, when an example ends their workflow: they count here too.
    held_before = sum(len(view.held) for view in service.views.values())
    applied = loop.run(_publish_and_apply(service, nc, messages), timeout=60)
    assert applied == len(messages)
    # Every message was either folded or counted as poison, never lost in between.
    poison = sum(service.metrics.poison.values()) - seen_before
    assert 0 <= poison <= len(messages) + held_before
    # The metrics still render.
    families = list(service.registry.collect())
    assert any(f.name == "jetagent_projection_poison_messages" for f in families)


def test_a_valid_workflow_is_still_projected_after_the_fuzzing(
    live: tuple[LoopThread, ProjectionService, Any],
) -> None:
    loop, service, nc = live
    events = [decode_event(_body({**event, "workflow_id": "fz-2"})) for event in _VALID_WF]
    messages = [("wf", encode_events([event])) for event in events]
    messages.append(("step", _body({**_VALID_STEP, "workflow_id": "fz-2"})))
    poison_before = dict(service.metrics.poison)
    loop.run(_publish_and_apply(service, nc, messages, "fz-2"), timeout=60)
    assert service.metrics.poison == poison_before
    view = service.views["fz-2"]
    assert view.status.value == "finalized"
    assert view.tokens == 5
