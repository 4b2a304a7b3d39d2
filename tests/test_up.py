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
    gateway_port = free_port()
    env.update(JETAGENT_METRICS_PORT=str(free_port()), COLUMNS="200", PYTHONUNBUFFERED="1")
    env.update(
        JETAGENT_GATEWAY_PORT=str(gateway_port), JETAGENT_GATEWAY_TOKENS="tok-up-12345=default"
    )
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
        services = ("orchestrator", "reasoning", "tools", "summarize", "memory", "projections")
        for service in (*services, "gateway"):
            assert f"started {service}" in output, output
        # The gateway is listed with its URL, and answers there.
        assert f"gateway: http://127.0.0.1:{gateway_port}" in output, output
        assert _healthy(f"http://127.0.0.1:{gateway_port}/healthz"), output
        # Ctrl-C: the terminal sends SIGINT to the foreground process group.
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, rest
    assert "nats-server stopped" in rest


def _healthy(url: str, timeout: float = 30.0) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False
