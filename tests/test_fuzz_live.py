"""Fuzzed bodies published to a running orchestrator: each is answered once, visibly, and
the platform keeps serving (hypothesis drives a real nats-server and real services).

Every request gets a ``RequestRejected`` (or starts a workflow) under the id the README's
rule gives; every step result that answers no scheduled step is dead-lettered; cancels
and signals are dead-lettered unless they can be read; nothing is redelivered (no bad
message is treated as transient), nothing fails unexpectedly, and afterwards a normal
request still completes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as fuzz_settings
from hypothesis import strategies as st

from jetagent.config import Settings
from jetagent.contract import rejection_id
from jetagent.decoding import PoisonMessage, decode_cancel, decode_signal
from jetagent.jetstream import DirectGetter
from jetagent.jetstream._loop import LoopThread
from jetagent.orchestrator.inputs import readable_request_id as _readable_request_id
from jetagent.testing import eventually
from tests.support.platform import InProcessPlatform
from tests.test_fuzz_ingress import any_body, nearly_valid_results, request_bodies, result_bodies

LIVE_EXAMPLES = 200
"""Messages published per run (README "Rejections and dead letters")."""


@dataclass(frozen=True)
class Sent:
    kind: str
    subject: str
    body: bytes
    msg_id: str
    seq: int


def _escaped(value: Any) -> bytes:
    return json.dumps(value).encode()


bodies = {
    "request": request_bodies,
    "cancel": any_body,
    "signal": any_body,
    "step": st.one_of(any_body, result_bodies.map(_escaped), nearly_valid_results().map(_escaped)),
}


def test_fuzzed_messages_are_answered_and_the_platform_keeps_serving(settings: Settings) -> None:
    loop = LoopThread(name="fuzz-live")
    platform = loop.run(InProcessPlatform(settings).start(), timeout=60)
    names = settings.names
    p = names.prefix
    sent: list[Sent] = []
    try:

        @fuzz_settings(
            max_examples=LIVE_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=st.data(), kind=st.sampled_from(sorted(bodies)))
        def publish(data: st.DataObject, kind: str) -> None:
            body = data.draw(bodies[kind])
            n = len(sent)
            subject = {
                "request": names.request("acme"),
                "cancel": names.cancel(f"fz{n}"),
                "signal": names.signal(f"fz{n}", "approval"),
                "step": f"{p}.step.reasoning.wf-1.{n}",
            }[kind]
            msg_id = f"fz-{n}"
            ack = loop.run(
                platform.client.js.publish(subject, body, headers={"Nats-Msg-Id": msg_id}),
                timeout=10,
            )
            sent.append(Sent(kind, subject, body, msg_id, ack.seq))

        publish()
        loop.run(_every_message_was_answered(platform, sent), timeout=240)
    finally:
        loop.run(platform.stop(), timeout=60)
        loop.stop()
    assert len(sent) >= LIVE_EXAMPLES // 2, len(sent)


async def _every_message_was_answered(platform: InProcessPlatform, sent: list[Sent]) -> None:
    client, names = platform.client, platform.settings.names

    async def drained() -> bool:
        for stream, consumer in (
            (names.requests_stream, "orchestrator-requests"),
            (names.steps_stream, "orchestrator-steps"),
        ):
            info = await client.js.consumer_info(stream, consumer)
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    await eventually(drained, timeout=180, interval=0.2)
    for stream, consumer in (
        (names.requests_stream, "orchestrator-requests"),
        (names.steps_stream, "orchestrator-steps"),
    ):
        info = await client.js.consumer_info(stream, consumer)
        assert info.num_redelivered == 0, f"{consumer}: a bad message was retried"
    assert not any(t.done() for t in platform._tasks), "a service stopped"

    letters = await _dead_letters(platform)
    assert all(letter["kind"] in ("poison", "untrusted") for letter in letters.values()), [
        letter for letter in letters.values() if letter["kind"] not in ("poison", "untrusted")
    ]
    assert all(letter["reason"].strip() for letter in letters.values())

    workflows = DirectGetter(client.nc, names.workflows_stream, timeout=5)
    await workflows.open()
    try:
        for message in sent:
            key = (message.subject.split(".")[1], message.seq)
            if message.kind == "request":
                wid = rejection_id(_readable_request_id(message.body), message.msg_id)
                wid = wid or f"seq-{message.seq}"
                answer = await workflows.last(names.workflow(wid))
                assert answer is not None, f"no answer under {wid} for {message.body[:200]!r}"
            elif message.kind == "step":
                # No workflow wf-1 exists: every step result is set aside, with a reason.
                assert (names.steps_stream, message.seq) in letters, message.body[:200]
            elif (names.requests_stream, message.seq) not in letters:
                decode = decode_cancel if key[0] == "cancel" else decode_signal
                try:
                    decode(message.body)  # read: a cancel or signal of no workflow, acked
                except PoisonMessage as exc:
                    raise AssertionError(f"unreadable {key} but no dead letter: {exc}") from None
    finally:
        await workflows.close()

    kinds = {kind: sum(m.kind == kind for m in sent) for kind in bodies}
    print(f"live fuzz: {kinds} published, {len(letters)} dead letters")
    assert len(letters) >= kinds["step"], "every step result was set aside"

    wid = await client.submit(instruction="What is 2 + 2?", tenant="acme")
    assert (await client.result(wid, timeout=60)).output.endswith("4")


async def _dead_letters(platform: InProcessPlatform) -> dict[tuple[str, int], dict[str, Any]]:
    names = platform.settings.names
    reader = DirectGetter(platform.client.nc, names.dlq_stream, timeout=5)
    await reader.open()
    try:
        records = await reader.scan(f"{names.prefix}.dlq.>")
    finally:
        await reader.close()
    letters = [json.loads(r.data) for r in records]
    return {(letter["stream"], letter["stream_seq"]): letter for letter in letters}
