"""A step's result is written once, through the JetStream write path.

The write expects the subject to be empty (expected last subject sequence 0) and carries
no ``Nats-Msg-Id`` (a forged id could get the real result dropped as a duplicate). A lost
acknowledgement is resolved by the write-once check itself: the retry finds the subject
taken, which means the step has its result.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from jetagent.config import Settings
from jetagent.events import StepResult
from jetagent.jetstream import DirectGetter, _writes, connect
from jetagent.jetstream.provision import provision
from jetagent.worker._results import StepRecords


def _result(worker: str) -> StepResult:
    now = datetime.now(UTC)
    return StepResult(
        workflow_id="wf-1",
        step_id="s1",
        capability="tools",
        tenant="acme",
        ok=True,
        output={"answer": 42},
        started_at=now,
        finished_at=now,
        worker=worker,
        deliveries=1,
    )


async def test_a_result_whose_ack_is_lost_is_recorded_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = await connect(settings.nats_url, name="test-step-results")
    names = settings.names
    reader = DirectGetter(nc, names.steps_stream, timeout=5)
    try:
        await provision(nc, settings)
        await reader.open()
        records = StepRecords(nc, nc.jetstream(), names, reader)
        subject = names.step_result("tools", "wf-1", "s1")
        publish = _writes._publish
        lost = {"count": 0}

        async def store_then_lose_the_ack(*args: Any) -> Any:
            # The server stores the result, but its first acknowledgement never arrives.
            ack = await publish(*args)
            if lost["count"] == 0:
                lost["count"] += 1
                raise NatsTimeoutError
            return ack

        monkeypatch.setattr(_writes, "_publish", store_then_lose_the_ack)
        assert not await records.recorded(subject)
        await records.record(subject, _result("w1"), scheduled_seq=7)
        assert lost["count"] == 1  # the retry met the write-once check: nothing stored twice
        monkeypatch.setattr(_writes, "_publish", publish)
        # Another replica finishing the same step finds it recorded: nothing happens.
        await records.record(subject, _result("w2"), scheduled_seq=7)
        stored = await reader.scan(subject)
        assert len(stored) == 1
        assert b'"worker":"w1"' in stored[0].data
        assert "Nats-Msg-Id" not in stored[0].headers
        assert stored[0].headers["Ja-Event"] == "StepResult"
        assert stored[0].headers["Ja-Scheduled-Seq"] == "7"  # the step it answers
    finally:
        await reader.close()
        await nc.close()
