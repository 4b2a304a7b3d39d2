"""``jetagent replay --json`` and ``--at SEQ`` (issue 14): a machine-readable timeline with
stream sequences and dates, and the folded state at any point of it."""

from __future__ import annotations

import json
from datetime import datetime

import msgspec
import pytest

from jetagent.events import decode_events
from jetagent.jetstream import DirectGetter
from jetagent.workflow import WorkflowState, evolve
from tests.support.known import SIX_SEVEN, env_for, one_error_line, run_many, submit_known
from tests.support.platform import InProcessPlatform


async def _stored(engine: InProcessPlatform, workflow_id: str) -> list[tuple[int, str, object]]:
    """(stream sequence, event type, event) of every stored event of the workflow."""
    names = engine.settings.names
    reader = DirectGetter(engine.client.nc, names.workflows_stream, timeout=5)
    await reader.open()
    try:
        records = await reader.scan(names.workflow(workflow_id))
    finally:
        await reader.close()
    return [
        (record.seq, type(event).__name__, event)
        for record in records
        for event in decode_events(record.data)
    ]


def _fold_until(stored: list[tuple[int, str, object]], seq: int) -> WorkflowState:
    state = WorkflowState()
    for at, _, event in stored:
        if at <= seq:
            state = evolve(state, event)  # type: ignore[arg-type]
    return state


@pytest.mark.timeout(300)  # a dozen CLI processes: slow when the machine is loaded
async def test_replay_json_and_the_state_at_a_sequence(engine: InProcessPlatform) -> None:
    await submit_known(engine)
    env = env_for(engine.settings)
    stored = await _stored(engine, SIX_SEVEN)
    seqs = sorted({seq for seq, _, _ in stored})
    assert len(seqs) >= 4  # started, steps scheduled and done, finalized
    points = [seqs[0], seqs[len(seqs) // 2], seqs[-1]]

    commands = [
        ["replay", SIX_SEVEN, "--json"],
        ["replay", SIX_SEVEN, "--json", "--verify"],
        ["replay", SIX_SEVEN],
        *(["replay", SIX_SEVEN, "--at", str(seq), "--json"] for seq in points),
        ["replay", SIX_SEVEN, "--at", str(points[1])],
        ["replay", SIX_SEVEN, "--at", "0"],
        ["replay", SIX_SEVEN, "--at", "-3"],
    ]
    results = await run_many(commands, env)
    for command, result in zip(commands[:-2], results, strict=False):
        assert result.returncode == 0, (command, result.stdout + result.stderr)

    # The timeline: every stored event, with its sequence, a date with its zone, its type.
    timeline = json.loads(results[0].stdout)
    assert timeline["workflow_id"] == SIX_SEVEN
    assert timeline["verified"] is None
    events = timeline["events"]
    assert [(e["seq"], e["type"]) for e in events] == [(seq, kind) for seq, kind, _ in stored]
    for entry in events:
        at = datetime.fromisoformat(entry["at"])
        assert at.tzinfo is not None, entry
        assert at.year >= 2024, entry
        assert entry["subject"].startswith(f"{engine.settings.prefix}.wf.{SIX_SEVEN}.")
        assert entry["summary"]
        assert entry["verification"] == "not verified"
    verified = json.loads(results[1].stdout)
    assert verified["verified"] is True
    assert verified["mismatches"] == []
    assert {e["verification"] for e in verified["events"]} == {"same"}
    assert all(isinstance(e["decision"], int) for e in verified["events"])

    # The readable timeline shows the sequences and the date too.
    day = datetime.fromisoformat(events[0]["at"]).strftime("%Y-%m-%d")
    text = results[2].stdout
    assert day in text, text
    for seq in seqs:
        assert f"#{seq} " in text, text

    # --at: the pure fold of the events up to that sequence, in JSON and readable.
    for seq, result in zip(points, results[3:6], strict=True):
        document = json.loads(result.stdout)
        assert document["at_seq"] == seq
        expected = _fold_until(stored, seq)
        assert document["state"] == json.loads(msgspec.json.encode(expected)), seq
        assert document["events_folded"] == sum(1 for s, _, _ in stored if s <= seq)
    final = json.loads(results[5].stdout)["state"]
    assert final["status"] == "finalized"
    assert final["final_output"]
    readable = results[6].stdout
    assert f"status {_fold_until(stored, points[1]).status.value}" in readable, readable
    assert f"state at #{points[1]}" in readable, readable
    one_error_line(results[7], "before", f"#{seqs[0]}")
    one_error_line(results[8], "--at")
