"""The command line against a running platform (real processes, real server)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from jetagent.config import Settings
from tests.support.platform import InProcessPlatform

ROOT = Path(__file__).resolve().parents[1]


async def _cli(
    settings: Settings, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "NATS_URL": settings.nats_url,
        "JETAGENT_PREFIX": settings.prefix,
        "JETAGENT_TENANTS": "*",
        "COLUMNS": "200",
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jetagent.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def test_submit_wait_inspect_replay(engine: InProcessPlatform) -> None:
    settings = engine.settings
    done = await _cli(
        settings, "submit", "What is 6 * 7? Then add 1 to it", "--tenant", "acme", "--wait"
    )
    assert done.returncode == 0, done.stderr
    workflow_id = done.stdout.splitlines()[0].strip()
    assert "answer: Results: 6 * 7 = 42; (42) + 1 = 43. Final answer: 43" in done.stdout
    assert "finalized" in done.stdout

    inspected = await _cli(settings, "inspect", workflow_id)
    assert inspected.returncode == 0, inspected.stderr
    assert "status finalized" in inspected.stdout
    assert "offline-planner" in inspected.stdout

    replayed = await _cli(settings, "replay", workflow_id, "--verify")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "verified:" in replayed.stdout

    missing = await _cli(settings, "inspect", "no-such-workflow")
    assert missing.returncode == 1
    assert "no workflow no-such-workflow" in missing.stderr


async def test_errors_are_clear_without_a_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jetagent.cli", "submit", "hi"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "NATS_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr
