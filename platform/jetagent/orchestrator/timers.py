"""Durable timers of the orchestrator, held by nats-server's message scheduler (ADR-51).

A timer belongs to one workflow and has a kind: ``deadline`` (its ``deadline_at``),
``inputs`` (when the cancels and signals kept for a workflow that has not started are
answered), ``admit`` (a held workflow rechecks its tenant's slots; a freed slot wakes it at
once with :meth:`Timers.wake`) or ``rate`` (throttled steps are scheduled again).

Arming publishes a schedule ``@at <due>`` on ``<prefix>.timer.at.<workflow_id>.<kind>`` in
``JA_TIMERS``; a subject holds one schedule, so arming again replaces it, and re-arming
after a redelivery is harmless. When it is
due, the server itself writes the message to ``<prefix>.timer.due.<workflow_id>.<kind>``
and removes the schedule; the ``orchestrator-timers`` consumer reads it — at once if an
orchestrator runs, or as soon as one starts: the due message is stored, not lost.

The orchestrator turns a due timer into a ``Tick`` for the workflow: the pure decisions
see that time has passed and end a workflow whose deadline passed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext

from jetagent.contract import Status
from jetagent.decoding import decode_json
from jetagent.jetstream import Message, publish
from jetagent.jetstream.headers import Header
from jetagent.subjects import Names
from jetagent.workflow import Begin, Cancel, Input, Signal, Tick, WorkflowState

__all__ = [
    "ADMIT",
    "DEADLINE",
    "INPUTS",
    "RATE",
    "DueTimer",
    "Timers",
    "due_timer",
    "timers_for",
]

log = logging.getLogger("jetagent.timers")

DEADLINE = "deadline"
INPUTS = "inputs"
ADMIT = "admit"
RATE = "rate"


class DueTimer(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a timer's message: whose timer, which kind, when it was due."""

    workflow_id: str
    kind: str
    due: datetime


class _Body(Protocol):
    @property
    def data(self) -> bytes: ...


def due_timer(msg: _Body) -> DueTimer:
    """The timer a message of ``<prefix>.timer.due.>`` stands for.

    Raises ``PoisonMessage`` for a body that is not one: anyone allowed to publish on
    the subject can, so it is read within the limits of every other input.
    """
    return decode_json(msg.data, DueTimer, what="due timer")


def timers_for(state: WorkflowState) -> dict[str, datetime]:
    """The timers a workflow in ``state`` needs, by kind (none once it has ended)."""
    if state.status.is_final:
        return {}
    timers: dict[str, datetime] = {}
    if state.deadline_at is not None:
        timers[DEADLINE] = state.deadline_at
    if state.status is Status.QUEUED and state.deferred:
        timers[INPUTS] = max(d.expires_at for d in state.deferred)
    return timers


@dataclass
class Timers:
    """Arms the timers of workflows on ``JA_TIMERS``. With ``nc``, an arming publish is
    retried through an election of the timers stream (re-arming replaces a schedule)."""

    js: JetStreamContext
    names: Names
    nc: NATS | None = None

    async def arm(self, workflow_id: str, kind: str, due: datetime) -> None:
        """Have ``kind`` fire for ``workflow_id`` at ``due`` (a past ``due`` fires at once)."""
        due = due.astimezone(UTC)
        body = msgspec.json.encode(DueTimer(workflow_id=workflow_id, kind=kind, due=due))
        # RFC 3339 with microseconds: the scheduler fires at the instant, not the second.
        at = due.isoformat(timespec="microseconds").replace("+00:00", "Z")
        subject = self.names.timer_schedule(workflow_id, kind)
        headers = {
            Header.SCHEDULE: f"@at {at}",
            Header.SCHEDULE_TARGET: self.names.timer_due(workflow_id, kind),
            Header.JA_WORKFLOW: workflow_id,
        }
        if self.nc is None:
            await self.js.publish(subject, body, headers=headers)
            return
        await publish(
            self.nc,
            Message(subject, body, headers),
            timeout=2.0,
            deadline_s=30.0,
            what=f"arm the {kind} timer of {workflow_id}",
        )

    async def wake(self, workflow_id: str, kind: str) -> None:
        """Have ``kind`` fire for ``workflow_id`` now: its due message is published
        directly (no schedule), stored in ``JA_TIMERS`` and read like any due timer."""
        due = datetime.now(UTC)
        body = msgspec.json.encode(DueTimer(workflow_id=workflow_id, kind=kind, due=due))
        await self.js.publish(
            self.names.timer_due(workflow_id, kind), body, headers={"Ja-Workflow": workflow_id}
        )

    async def arm_for(self, workflow_id: str, state: WorkflowState) -> None:
        """Arm every timer the workflow's state needs."""
        for kind, due in timers_for(state).items():
            await self.arm(workflow_id, kind, due)

    async def disarm(self, workflow_id: str, kind: str) -> None:
        """Remove a timer that is no longer needed (its workflow ended before it was due).

        Best effort: a timer left behind fires into a workflow that has ended, which
        decides nothing; removing it only keeps ``JA_TIMERS`` small."""
        subject = self.names.timer_schedule(workflow_id, kind)
        try:
            await self.js.purge_stream(self.names.timers_stream, subject=subject)
        except NatsError as exc:
            log.warning("could not remove the %s timer of %s: %s", kind, workflow_id, exc)

    async def follow(
        self, workflow_id: str, command: Input, before: Status, after: WorkflowState
    ) -> None:
        """Keep a workflow's timers in step with a decision on ``command``.

        After a request, cancel or signal, the timers its state needs are armed — before
        the input is acknowledged, so a crash in between is repaired by the redelivery
        (re-arming replaces a schedule, never doubles it). A workflow that has just ended
        before its deadline has that timer removed, and one that ended as it started (a kept
        cancel applied) its ``inputs`` timer."""
        if isinstance(command, Begin | Cancel | Signal):
            await self.arm_for(workflow_id, after)
        ended_now = after.status.is_final and not before.is_final
        if ended_now and after.deadline_at is not None and not isinstance(command, Tick):
            await self.disarm(workflow_id, DEADLINE)
        if ended_now and before is Status.QUEUED:
            # Ended as it started: a kept cancel applied. The timer that would have
            # answered it is not needed any more.
            await self.disarm(workflow_id, INPUTS)
