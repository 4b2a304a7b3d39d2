"""One translation of messages into workflow inputs, shared by the orchestrator and replay.

Before, the orchestrator's handlers and ``replay`` each parsed subjects and built
``Begin``/``Cancel``/``Signal``/``FoldResult``, so ``replay --verify`` verified a copy of
the translation, not the one that ran (issue 11, item 5). Now both call
``jetagent.orchestrator.inputs.inputs_of``: these tests show it gives the same input for
a message as delivered live and as read back from its stream, and that on a real server
replay rebuilds exactly the inputs the live orchestrator decided on.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg

import jetagent.orchestrator._service as service_module
import jetagent.orchestrator.replay as replay_module
from jetagent.config import Settings
from jetagent.decoding import PoisonMessage
from jetagent.jetstream import Record, connect
from jetagent.models import ModelCatalog
from jetagent.orchestrator import Orchestrator
from jetagent.orchestrator.inputs import Addressed, Admission, Message, Rejection, inputs_of
from jetagent.workflow import Begin, Cancel, DecideContext, FoldResult, Input, Signal
from tests.support.platform import InProcessPlatform, eventually
from tests.test_fuzz_ingress import any_body, request_bodies, result_bodies

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ADMISSION = Admission(
    models=set(ModelCatalog.load().models),
    tools={"calculator"},
    early_input_wait=timedelta(seconds=300),
)


def test_the_orchestrator_and_replay_call_the_one_translation() -> None:
    assert vars(service_module)["inputs_of"] is inputs_of
    assert vars(replay_module)["inputs_of"] is inputs_of
    # Neither builds an input of a message itself (a due timer's message is gone when
    # replay reads the history: replay's only input of its own is that Tick).
    for module in (service_module, replay_module):
        built = {
            node.func.id
            for node in ast.walk(ast.parse(inspect.getsource(module)))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert not built & {"Begin", "Cancel", "Signal", "FoldResult"}, module.__name__


def _delivered(subject: str, data: bytes, headers: dict[str, str], seq: int) -> Message:
    # A JetStream delivery: its metadata is in the ack subject (stream, consumer,
    # deliveries, stream sequence, consumer sequence, timestamp in ns, pending).
    stamp = int(NOW.timestamp() * 1e9)
    reply = f"$JS.ACK.JA_X.consumer.1.{seq}.{seq}.{stamp}.0"
    msg = Msg(_client=None, subject=subject, reply=reply, data=data, headers=headers)  # type: ignore[arg-type]
    return Message.delivered(msg)


def _stored(subject: str, data: bytes, headers: dict[str, str], seq: int) -> Message:
    # The same message read back by direct get: the server adds its own headers.
    extra = {
        "Nats-Stream": "JA_X",
        "Nats-Sequence": str(seq),
        "Nats-Subject": subject,
        "Nats-Time-Stamp": NOW.isoformat().replace("+00:00", ".123456789Z"),
    }
    return Message.stored(Record(seq, subject, data, {**headers, **extra}), stream="JA_X")


def _outcome(message: Message) -> object:
    try:
        return inputs_of(message, prefix="ja", at=NOW, admission=ADMISSION)
    except PoisonMessage as exc:
        return ("poison", exc.reason, exc.workflow_id)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return ("unreadable", str(exc))


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    kind=st.sampled_from(
        ["request.acme", "cancel.w1", "signal.w1.approval", "step.tools.w1.2", "timer.due.w1.x"]
    ),
    request=request_bodies,
    result=result_bodies,
    junk=any_body,
    use_junk=st.booleans(),
    msg_id=st.sampled_from([None, "w1", "other id"]),
    seq=st.integers(min_value=1, max_value=10**9),
)
def test_a_message_delivered_and_read_back_translates_alike(
    kind: str,
    request: Any,
    result: Any,
    junk: bytes,
    use_junk: bool,
    msg_id: str | None,
    seq: int,
) -> None:
    subject = f"ja.{kind}"
    if use_junk:
        data = junk
    elif kind.startswith("request"):
        data = request if isinstance(request, bytes) else json.dumps(request).encode()
    elif kind.startswith("step"):
        data = json.dumps(result).encode()
    elif kind.startswith("timer"):
        data = msgspec.json.encode({"workflow_id": "w1", "kind": "x", "due": NOW.isoformat()})
    else:
        tag = {"cancel": "CancelRequested", "signal": "SignalSent"}[kind.split(".")[0]]
        body = {"workflow_id": "w1", "reason": "r"} if tag == "CancelRequested" else {}
        body = body or {"workflow_id": "w1", "name": "approval", "payload": {"a": 1}}
        data = json.dumps({"type": tag, **body}).encode()
    headers = {"Nats-Msg-Id": msg_id} if msg_id else {}
    live = _outcome(_delivered(subject, data, headers, seq))
    assert live == _outcome(_stored(subject, data, headers, seq))


# ---------------------------------------------------------------- on a real server


def _comparable(command: Input, replayed: Input) -> Input:
    # How long an early cancel or signal is kept is configuration; replay knows it only
    # for one that was kept (its InputDeferred records it). Deciding on any other ignores it.
    kept = isinstance(replayed, Cancel | Signal) and replayed.expires_at != replayed.at
    if isinstance(command, Cancel | Signal) and not kept:
        return dataclasses.replace(command, expires_at=replayed.at)
    return command


async def test_replay_rebuilds_the_inputs_the_live_orchestrator_decided_on(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    live: dict[str, Addressed | Rejection | None] = {}
    replayed: dict[str, Addressed | Rejection | None] = {}

    def recording(into: dict[str, Addressed | Rejection | None]) -> Any:
        def translate(message: Message, **kwargs: Any) -> Addressed | Rejection | None:
            made = inputs_of(message, **kwargs)
            into[message.causation] = made
            return made

        return translate

    monkeypatch.setattr(service_module, "inputs_of", recording(live))
    monkeypatch.setattr(replay_module, "inputs_of", recording(replayed))
    # Workers in-process; the orchestrator is ours, translating through the recorder.
    platform = await InProcessPlatform(settings, orchestrators=0).start()
    nc = await connect(settings.nats_url, name="test-orchestrator")
    stop = asyncio.Event()
    task = asyncio.create_task(Orchestrator(nc, settings).run(stop))
    client = platform.client
    try:
        # A cancel and a signal before their workflow starts (kept), then its request
        # with no request_id in the body (the id comes from Nats-Msg-Id) and a deadline.
        await client.cancel("early", reason="changed my mind", by="ops")
        await client.signal("early", "approval", {"step_id": "9", "approved": True})
        await eventually(lambda: _kinds(client, "early", "InputDeferred", 2))
        body = {"instruction": "What is 6 * 7?", "capability_limits": {"deadline_s": 600}}
        await client.js.publish(
            settings.names.request("acme"),
            json.dumps(body).encode(),
            headers={"Nats-Msg-Id": "early"},
        )
        # A workflow that calls a tool: step results folded on the way.
        tools = await client.submit(
            instruction="What is (17 * 23) + 4?", tenant="acme", allowed_tools=["calculator"]
        )
        assert (await client.result("early", timeout=30)).detail == "changed my mind"
        assert (await client.result(tools, timeout=30)).ok

        ctx = await _context(platform)
        for wid in ("early", tools):
            report = await replay_module.replay_workflow(client.nc, settings.names, wid, ctx)
            assert report.ok, report.mismatches
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await nc.close()
        await platform.stop()

    # Replay translated each recorded cause from its stored message to the very input
    # the live orchestrator decided on when the message was delivered.
    assert replayed
    kinds = set()
    for cause, made in replayed.items():
        assert isinstance(made, Addressed), (cause, made)
        original = live[cause]
        assert isinstance(original, Addressed), (cause, original)
        assert original.workflow_id == made.workflow_id
        assert _comparable(original.input, made.input) == made.input, cause
        kinds.add(type(made.input))
    assert kinds == {Begin, Cancel, Signal, FoldResult}


async def _context(platform: InProcessPlatform) -> DecideContext:
    from tests.test_replay import _context as replay_context

    return await replay_context(platform)


async def _kinds(client: Any, wid: str, kind: str, count: int) -> bool:
    return [type(e).__name__ for e in await client.events(wid)].count(kind) >= count


def test_the_time_a_message_was_stored_is_read_from_either_view() -> None:
    delivered = _delivered("ja.cancel.w1", b"{}", {}, 3)
    stored = _stored("ja.cancel.w1", b"{}", {}, 3)
    assert delivered.time == NOW
    assert stored.time == NOW + timedelta(microseconds=123456)
    assert delivered.causation == stored.causation == "JA_X:3"
