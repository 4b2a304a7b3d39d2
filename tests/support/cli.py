"""Run the installed ``jetagent`` executable as a user does: a subprocess, real env."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from jetagent.testing import jetagent_command

ROOT = Path(__file__).resolve().parents[2]
JETAGENT = Path(jetagent_command(installed=True)[0])
"""The console script pip installed next to the interpreter (.venv/bin/jetagent)."""


def cli_env(nats_url: str | None, prefix: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: ``NATS_URL`` only if given."""
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL" and not k.startswith("JETAGENT_")}
    # JETAGENT_NATS_PORT=0: a `jetagent up` of a test never binds NATS's default 4222;
    # services started this way serve /metrics on a free port (tests run side by side).
    env.update(
        COLUMNS="200",
        JETAGENT_TENANTS="*",
        PYTHONUNBUFFERED="1",
        JETAGENT_NATS_PORT="0",
        JETAGENT_METRICS_PORT="0",
    )
    if nats_url is not None:
        env["NATS_URL"] = nats_url
    if prefix is not None:
        env["JETAGENT_PREFIX"] = prefix
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JETAGENT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def arun_cli(
    *args: str, env: dict[str, str], timeout: float = 60, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, *args, env=env, timeout=timeout, cwd=cwd)
