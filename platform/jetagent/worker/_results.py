"""Where a step's outcome is written: its one ``StepResult``, and its dead letter.

A step's result goes to ``<prefix>.step.<capability>.<workflow_id>.<step_id>`` once:
the publish expects the subject's last sequence to be 0 (write-once by subject), through
the JetStream layer's write path (:func:`jetagent.jetstream._writes.write_once`), which
retries through a server restart or an election until its deadline. It carries no
``Nats-Msg-Id``: anyone allowed to publish results may set any id, and a forged message
with this result's id would have the real one dropped as a duplicate. So a lost ack is
resolved by the subject itself: if the step has a result (this write's earlier try, or
another replica's), the step is recorded, which is all a worker needs to know.

The result carries the workflows stream's sequence of the ``StepScheduled`` it answers
(``Ja-Scheduled-Seq``), so the orchestrator reads the workflow at least that far before
it judges the result (docs/ARCHITECTURE.md §5.8). "Has this step a result?" is answered
"no" only by the stream's leader: a replica that is behind would have the step run again.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from jetagent import telemetry
from jetagent.dead_letter import DeadLetterKind, dead_letter_of, publish_dead_letter
from jetagent.events import StepResult, encode
from jetagent.jetstream import DirectGetter
from jetagent.jetstream._writes import Message, write_once
from jetagent.jetstream.headers import Header
from jetagent.subjects import Names

__all__ = ["StepRecords"]

_RESULT_TIMEOUT_S = 2.0
"""How long one try of a result's publish waits for its ack."""
_RESULT_PUBLISH_S = 30.0
"""How long a finished step keeps trying to record its result (a server restart, a
cluster election) before its message is left to be redelivered."""


class StepRecords:
    """Writes the results and dead letters of one worker's steps, and reads whether a
    step has its result."""

    def __init__(self, nc: NATS, js: JetStreamContext, names: Names, results: DirectGetter):
        self._nc = nc
        self._js = js
        self._names = names
        self._results = results

    async def recorded(self, subject: str) -> bool:
        """Whether the step whose result goes to ``subject`` has one (a replica's "no" is
        asked of the leader)."""
        return await self._results.confirmed_last(subject) is not None

    async def record(
        self,
        subject: str,
        result: StepResult,
        *,
        scheduled_seq: int,
        parent: dict[str, str] | None = None,
    ) -> None:
        """Write ``result`` unless the step has one already (then there is nothing to do:
        this run's earlier try landed, or another replica finished the step).
        ``scheduled_seq``: the workflows stream's sequence of the step's ``StepScheduled``."""
        headers = telemetry.inject(
            {
                Header.JA_EVENT: "StepResult",
                Header.JA_WORKFLOW: result.workflow_id,
                Header.JA_SCHEDULED_SEQ: str(scheduled_seq),
                # The orchestrator takes results round robin across tenants by it.
                Header.JA_TENANT: result.tenant,
            },
            parent=parent,
        )
        # False: the subject holds a result already (this write's earlier try whose ack
        # was lost, or another replica's): the step is recorded either way.
        await write_once(
            self._nc,
            Message(subject, encode(result), headers),
            timeout=_RESULT_TIMEOUT_S,
            deadline_s=_RESULT_PUBLISH_S,
            what=f"record the result of step {result.workflow_id}/{result.step_id}",
        )

    async def dead_letter(
        self,
        msg: Msg,
        *,
        source: str,
        error: str,
        kind: DeadLetterKind = "failed",
        workflow_id: str | None = None,
    ) -> None:
        """Dead-letter a step's message; ``error`` is the whole text (a short traceback,
        say), its last line the letter's reason."""
        reason = error.strip().splitlines()[-1] if error.strip() else "failed"
        letter = dead_letter_of(
            msg, source=source, kind=kind, reason=reason, error=error, workflow_id=workflow_id
        )
        await publish_dead_letter(self._nc, self._names, letter)
