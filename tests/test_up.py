"""`jetagent up`: the whole platform as processes; Ctrl-C stops everything cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jetagent.embedded import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_up_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env.update(JETAGENT_METRICS_PORT=str(free_port()), COLUMNS="200", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "jetagent.cli", "up", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "jetagent is up" in line:
                break
        output = "".join(lines)
        assert "jetagent is up" in output, output
        assert "embedded nats-server: nats://127.0.0.1:" in output
        for service in ("orchestrator", "reasoning", "tools", "summarize", "memory", "projections"):
            assert f"started {service}" in output, output
        # Ctrl-C: the terminal sends SIGINT to the foreground process group.
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, rest
    assert "nats-server stopped" in rest
