"""Where a step's outcome is written: its one ``StepResult``, and its dead letter.

A step's result goes to ``<prefix>.step.<capability>.<workflow_id>.<step_id>`` once:
the publish expects the subject's last sequence to be 0 (write-once by subject), through
the JetStream layer's write path (:func:`jetagent.jetstream._writes.write`), which
retries through a server restart or an election until its deadline. It carries no
``Nats-Msg-Id``: anyone allowed to publish results may set any id, and a forged message
with this result's id would have the real one dropped as a duplicate. So a lost ack is
resolved by the subject itself: if the step has a result (this write's earlier try, or
another replica's), the step is recorded, which is all a worker needs to know.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from jetagent import telemetry
from jetagent.dead_letter import DeadLetterKind, dead_letter_of, publish_dead_letter
from jetagent.errors import TransientError
from jetagent.events import StepResult, encode
from jetagent.jetstream import DirectGetter, StoreUnavailableError
from jetagent.jetstream._writes import WRONG_LAST_SEQUENCE, Message, PubAck, write
from jetagent.subjects import Names

__all__ = ["StepRecords"]

_EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
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
        """Whether the step whose result goes to ``subject`` has one."""
        return await self._results.last(subject) is not None

    async def record(
        self, subject: str, result: StepResult, *, parent: dict[str, str] | None = None
    ) -> None:
        """Write ``result`` unless the step has one already (then there is nothing to do:
        this run's earlier try landed, or another replica finished the step)."""
        headers = telemetry.inject(
            {
                _EXPECTED_LAST_SUBJECT_SEQUENCE: "0",
                "Ja-Event": "StepResult",
                "Ja-Workflow": result.workflow_id,
                # The orchestrator takes results round robin across tenants by it.
                "Ja-Tenant": result.tenant,
            },
            parent=parent,
        )

        async def landed() -> bool | None:
            try:
                return True if await self.recorded(subject) else None
            except StoreUnavailableError:
                return None

        outcome = await write(
            self._nc,
            [Message(subject, encode(result), headers)],
            timeout=_RESULT_TIMEOUT_S,
            deadline_s=_RESULT_PUBLISH_S,
            landed=landed,
            what=f"record the result of step {result.workflow_id}/{result.step_id}",
        )
        if not isinstance(outcome, PubAck) or outcome.error is None:
            return
        if outcome.error.err_code != WRONG_LAST_SEQUENCE:  # else: the step has its result
            raise TransientError(f"could not record the step result: {outcome.error.description}")

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
        await publish_dead_letter(self._js, self._names, letter)
