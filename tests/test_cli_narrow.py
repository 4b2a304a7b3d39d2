"""Narrow terminals (issue 14): at 80 and 60 columns ``inspect``, ``list``, ``replay``,
``tail``, ``dlq`` and ``status`` stay readable — no line wider than the terminal, no
table squeezed to one word per line — and ``tail`` names each event's workflow by a
short id, with a time and the tenant."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import pytest

from jetagent.contract import WorkflowRequest
from jetagent.dead_letter import dead_letter, publish_dead_letter
from jetagent.testing import SupervisedProcess
from tests.support.cli import JETAGENT, ROOT
from tests.support.known import (
    ALL,
    SIX_SEVEN,
    assert_readable,
    env_for,
    run_many,
    running_projection,
    submit_known,
    views_of,
)
from tests.support.platform import InProcessPlatform

LONG = (
    "the step's handler raised an error whose message is long enough to need several lines "
    "in a narrow terminal: connection reset by peer while reading the response body of "
    "https://provider.example.com/v1/chat/completions after 3 retries"
)


async def _dead_letters(engine: InProcessPlatform) -> None:
    """A long dead letter, as the runtime writes them, and junk someone published."""
    names = engine.settings.names
    letter = dead_letter(
        source="reasoning",
        kind="failed",
        reason=LONG,
        subject=f"{names.prefix}.wf.{SIX_SEVEN}.StepScheduled.reasoning",
        stream=names.workflows_stream,
        stream_seq=3,
        deliveries=5,
        workflow_id=SIX_SEVEN,
        error=LONG,
    )
    await publish_dead_letter(engine.client.nc, names, letter)
    await engine.client.js.publish(names.dlq("someone"), b"not json " * 40)


@pytest.mark.timeout(300)  # a dozen CLI processes: slow when the machine is loaded
async def test_narrow_terminals(engine: InProcessPlatform) -> None:
    await submit_known(engine)
    await _dead_letters(engine)
    async with running_projection(engine.settings):
        await views_of(engine, ALL)
        for width in (80, 60):
            env = env_for(engine.settings, COLUMNS=str(width))
            commands = [
                ["inspect", SIX_SEVEN],
                ["list"],
                ["replay", SIX_SEVEN, "--verify"],
                ["replay", SIX_SEVEN, "--at", "3"],
                ["dlq"],
                ["status"],
            ]
            results = await run_many(commands, env)
            for command, result in zip(commands, results, strict=True):
                assert result.returncode == 0, (command, result.stdout + result.stderr)
                assert_readable(result.stdout, width, (width, command))
                assert_readable(result.stderr, width, (width, command))
            # What matters is shown whole, not cut to "reaso…" / "offli…".
            inspected = results[0].stdout
            for whole in ("reasoning", "calculator", "offline-planner", "finalized"):
                assert whole in inspected, (width, inspected)
            assert "cafe0001" in results[1].stdout
            assert "finalized" in results[1].stdout


async def test_tail_short_ids_times_and_tenants(engine: InProcessPlatform, tmp_path: Path) -> None:
    env = env_for(engine.settings, COLUMNS="80")
    tail = SupervisedProcess(
        "tail", [str(JETAGENT), "tail"], log_file=tmp_path / "tail.log", env=env, cwd=ROOT
    )
    with tail:
        await asyncio.to_thread(tail.wait_for_output, "following", timeout=60)
        client = engine.client
        await client.submit(
            WorkflowRequest(request_id=SIX_SEVEN, instruction="What is 6 * 7?", tenant="acme")
        )
        await client.result(SIX_SEVEN, timeout=30)
        await asyncio.to_thread(tail.wait_for_output, "finalized", timeout=30)
        tail.send_signal(signal.SIGTERM)
        await asyncio.to_thread(tail.wait, 30)
    output = tail.output
    assert_readable(output, 80, "tail")
    events = [line for line in output.splitlines() if line.startswith("cafe0001")]
    assert len(events) >= 5, output  # started, 2 steps scheduled and done, finalized
    assert SIX_SEVEN not in output
    for line in events:
        # <short id> <HH:MM:SS.mmm> <tenant> <what happened>
        assert re.match(r"cafe0001 \d\d:\d\d:\d\d\.\d{3} acme ", line), line
