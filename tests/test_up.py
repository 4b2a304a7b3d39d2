"""`jetagent up`: the whole platform as processes; Ctrl-C stops everything cleanly."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from jetagent.embedded import free_port
from jetagent.testing import SupervisedProcess, jetagent_command

ROOT = Path(__file__).resolve().parents[1]


def test_up_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    gateway_port = free_port()
    env.update(JETAGENT_METRICS_PORT="0", COLUMNS="200", PYTHONUNBUFFERED="1")
    env.update(
        JETAGENT_GATEWAY_PORT=str(gateway_port), JETAGENT_GATEWAY_TOKENS="tok-up-12345=default"
    )
    process = SupervisedProcess(
        "up",
        [*jetagent_command(), "up", "--data-dir", str(tmp_path / "data")],
        log_file=tmp_path / "up.log",
        env=env,
        cwd=ROOT,
    )
    with process:
        output = process.wait_for_output("jetagent is up", timeout=60)
        assert "jetagent is up" in output, output
        assert "embedded nats-server: nats://127.0.0.1:" in output
        services = ("orchestrator", "reasoning", "tools", "summarize", "memory", "projections")
        for service in (*services, "gateway"):
            assert f"started {service}" in output, output
        # The gateway is listed with its URL, and answers there.
        assert f"gateway: http://127.0.0.1:{gateway_port}" in output, output
        assert _healthy(f"http://127.0.0.1:{gateway_port}/healthz"), output
        # Ctrl-C: the terminal sends SIGINT to the foreground process group.
        process.send_signal(signal.SIGINT, group=True)
        process.wait(60)
        rest = process.output[len(output) :]
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


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper has stopped running)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "zombie" not in state and "(dead)" not in state


def _described(pid: int) -> str:
    """A process by its pid, state and command line (what a test failure should name)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return f"{pid} {state.split(':', 1)[1].strip()} {command}"


def _servers_on(folder: Path) -> list[int]:
    """nats-server processes whose configuration lives in ``folder``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            cmdline
            and cmdline[0].endswith(b"nats-server")
            and str(folder).encode() in b" ".join(cmdline)
        ) and _alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def test_a_second_up_is_refused_and_a_killed_up_leaves_no_children(tmp_path: Path) -> None:
    """Issue 9, item 10: `up` locks its data folder; SIGKILL of `up` kills its children."""
    from tests.support.cli import JETAGENT, cli_env, run_cli

    data = tmp_path / "data"
    env = cli_env(None, JETAGENT_METRICS_PORT="0", JETAGENT_GATEWAY_PORT=str(free_port()))
    env.pop("JETAGENT_TENANTS")
    process = SupervisedProcess(
        "up",
        [str(JETAGENT), "up", "--data-dir", str(data)],
        log_file=tmp_path / "up.log",
        env=env,
        cwd=ROOT,
    )
    children: set[int] = set()
    try:
        process.start()
        lines = process.wait_for_output("jetagent is up", timeout=90).splitlines(keepends=True)
        assert "jetagent is up" in "".join(lines), "".join(lines)
        children = _children(process.pid)
        assert len(children) == 8, children  # nats-server and seven services (gateway too)
        assert len(_servers_on(data)) == 1

        # A second `up` on the same folder: refused in one line, no second server.
        second = run_cli("up", "--data-dir", str(data), env=env, timeout=60)
        assert second.returncode != 0, second.stdout
        assert f"is in use by process {process.pid}" in second.stderr, second.stderr
        assert [line for line in second.stderr.splitlines() if line.strip()] == [
            second.stderr.strip()
        ]
        assert "Traceback" not in second.stdout + second.stderr
        assert "embedded nats-server" not in second.stdout
        assert len(_servers_on(data)) == 1

        # SIGKILL of `up` alone (not its group): no cleanup code runs, yet every child
        # goes (the kernel's parent-death signal).
        process.kill()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(child) for child in children):
            time.sleep(0.1)
        assert not [_described(child) for child in children if _alive(child)]
        assert _servers_on(data) == []
        # Its announcement is left behind (no cleanup ran) and is not believed: a
        # command without NATS_URL says no `up` runs instead of dialling a dead port.
        assert (data / "nats.url").exists()
        stale = run_cli("dlq", env={**env, "JETAGENT_DATA_DIR": str(data)}, timeout=60)
        assert stale.returncode == 2, stale.stdout
        assert "no `jetagent up` is running" in stale.stderr, stale.stderr
    finally:
        process.close()
        for child in children:
            if _alive(child):
                os.kill(child, signal.SIGKILL)
