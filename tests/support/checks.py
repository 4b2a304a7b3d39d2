"""Checks that can fail: what was scheduled against what ran and what was recorded.

- :func:`assert_one_result_per_step`: the step ids of every ``StepScheduled`` of the
  workflows and the step ids of the ``StepResult``s in ``JA_STEPS`` are the same, one
  result each (a missing result and a doubled one both fail).
- :func:`assert_no_decision_recorded_twice`: every decision carries its cause
  (``Ja-Causation: <stream>:<seq>``); the messages of one decision are consecutive, so a
  cause that appears in two separate runs of messages, or one run that folds its input
  twice, is a decision recorded twice. (Step ids are unique by construction, so counting
  them could never fail.)
"""

from __future__ import annotations

from collections import Counter

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.events import (
    ApprovalResolved,
    Cancelled,
    Finalized,
    Started,
    StepCompleted,
    StepFailed,
    StepScheduled,
    Terminated,
    decode_events,
    decode_step_result,
)
from jetagent.jetstream import DirectGetter, Record

__all__ = ["assert_no_decision_recorded_twice", "assert_one_result_per_step", "ended_once"]

_FOLDS = (Started, StepCompleted, StepFailed, ApprovalResolved)
"""Events that fold a decision's input: at most one per decision."""


async def assert_one_result_per_step(
    client: Client, settings: Settings, workflow_ids: list[str]
) -> int:
    """Exactly one StepResult for each scheduled step, none missing, none extra.

    Returns the number of steps checked (so a caller can see the check was not vacuous).
    """
    names = settings.names
    results = DirectGetter(client.nc, names.steps_stream, timeout=5)
    await results.open()
    try:
        checked = 0
        for wid in workflow_ids:
            events = await client.events(wid)
            scheduled = Counter(e.step_id for e in events if isinstance(e, StepScheduled))
            records = await _scan(results, names.step_results(wid))
            recorded = Counter(decode_step_result(r.data).step_id for r in records)
            assert recorded == scheduled, (wid, dict(scheduled), dict(recorded))
            assert set(recorded.values()) <= {1}, (wid, dict(recorded))
            checked += len(scheduled)
        return checked
    finally:
        await results.close()


async def assert_no_decision_recorded_twice(
    client: Client, settings: Settings, workflow_id: str
) -> None:
    """Each cause is decided once: one run of consecutive messages, one folded input."""
    names = settings.names
    reader = DirectGetter(client.nc, names.workflows_stream, timeout=5)
    await reader.open()
    try:
        records = await _scan(reader, names.workflow(workflow_id))
    finally:
        await reader.close()
    runs: list[tuple[str, list[object]]] = []
    for record in records:
        cause = record.headers.get("Ja-Causation", "")
        events = decode_events(record.data)
        if runs and cause and runs[-1][0] == cause:
            runs[-1][1].extend(events)
        else:
            runs.append((cause, list(events)))
    causes = Counter(cause for cause, _ in runs if cause)
    twice = {cause: n for cause, n in causes.items() if n > 1}
    assert not twice, f"{workflow_id}: decisions recorded again for causes {twice}"
    for cause, events in runs:
        folds = [type(e).__name__ for e in events if isinstance(e, _FOLDS)]
        assert len(folds) <= 1, f"{workflow_id}: cause {cause} folded twice: {folds}"
    assert ended_once([e for _, events in runs for e in events]), workflow_id


async def _scan(reader: DirectGetter, subjects: str) -> list[Record]:
    """Everything the stream's leader has under ``subjects`` (a replica may be behind)."""
    newest = await reader.leader_last(subjects)
    return await reader.scan(subjects, need=newest.seq if newest is not None else 0)


def ended_once(events: list[object]) -> bool:
    """One ``Started`` and one final event."""
    kinds = Counter(type(e).__name__ for e in events)
    finals = sum(kinds[cls.__name__] for cls in (Finalized, Terminated, Cancelled))
    return kinds[Started.__name__] == 1 and finals == 1
