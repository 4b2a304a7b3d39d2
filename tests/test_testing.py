"""jetagent.testing, the helpers users test their capabilities with: real servers,
supervised processes that leave nothing behind, and waits with deadlines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nats.errors import Error as NatsError

import jetagent.testing
from jetagent.testing import (
    NatsConnection,
    ProcessExitedError,
    ServiceProcesses,
    SupervisedProcess,
    WaitTimeout,
    eventually,
    local_jetstream,
    nats_server,
    unique_name,
    wait_until,
)

PRINT_ENV = (
    "import os, sys, time\n"
    "print('url', os.environ['NATS_URL'], 'prefix', os.environ['JETAGENT_PREFIX'], "
    "'args', sys.argv[1:], 'extra', os.environ.get('EXTRA'), flush=True)\n"
    "time.sleep(300)\n"
)


def test_public_names_are_pinned() -> None:
    # Changing this list is an API change: do it on purpose, with a note in the README.
    assert sorted(jetagent.testing.__all__) == [
        "LocalJetStream",
        "NatsConnection",
        "ProcessExitedError",
        "ServiceProcesses",
        "SupervisedProcess",
        "WaitTimeout",
        "connect_jetstream",
        "eventually",
        "jetagent_command",
        "local_jetstream",
        "nats_cluster",
        "nats_server",
        "step_context",
        "tools_registered",
        "unique_name",
        "wait_until",
    ]
    for name in jetagent.testing.__all__:
        assert getattr(jetagent.testing, name).__doc__, f"{name} has no docstring"


def test_the_module_does_not_need_pytest() -> None:
    code = "import sys, jetagent.testing; print('pytest' in sys.modules)"
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert ran.stdout.strip() == "False", ran.stdout + ran.stderr


async def test_local_jetstream_serves_and_survives_a_kill() -> None:
    async with local_jetstream() as nats:
        stream = unique_name("S")
        await nats.js.add_stream(name=stream, subjects=[f"{stream}.>"])
        await nats.js.publish(f"{stream}.a", b"one")
        [server] = nats.servers
        server.kill()
        server.start()  # the same store and port: the message is still there
        assert await eventually(lambda: _messages(nats, stream), timeout=30) == 1
        folder = server.store_dir
    assert not server.running
    assert not folder.exists()  # the temporary store is gone with the server


async def _messages(nats: NatsConnection, stream: str) -> int:
    try:
        return (await nats.js.stream_info(stream)).state.messages
    except NatsError:  # not reconnected yet
        return 0


@pytest.mark.cluster
async def test_local_jetstream_runs_a_cluster() -> None:
    async with local_jetstream(nodes=3) as nats:
        assert len(nats.servers) == 3
        await nats.js.add_stream(name="R3", subjects=["r3.>"], num_replicas=3)
        info = await nats.js.stream_info("R3")
        assert info.cluster is not None
        assert len(info.cluster.replicas or []) == 2


def test_nats_server_in_blocking_code(tmp_path: Path) -> None:
    with nats_server(tmp_path / "n") as server:
        assert server.running
        assert server.url.startswith("nats://127.0.0.1:")
    assert not server.running


async def test_the_plugin_gives_a_connection(jetstream: NatsConnection, unique: str) -> None:
    await jetstream.js.add_stream(name=unique, subjects=[f"{unique}.>"])
    ack = await jetstream.js.publish(f"{unique}.x", b"hi")
    assert ack.stream == unique


async def test_eventually_returns_the_value_or_says_what_it_waited_for() -> None:
    calls: list[int] = []

    async def third_time() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert await eventually(third_time, interval=0.01) == 3

    async def never() -> int:
        return 0

    with pytest.raises(WaitTimeout, match=r"the answer not met within 0\.1 s"):
        await eventually(never, timeout=0.1, interval=0.01, what="the answer")


def test_wait_until_gives_up_at_once_when_alive_raises() -> None:
    def dead() -> None:
        raise ProcessExitedError("svc", 3, "boom")

    started = time.monotonic()
    with pytest.raises(ProcessExitedError, match="svc exited with status 3"):
        wait_until(lambda: False, timeout=30, alive=dead)
    assert time.monotonic() - started < 5


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_killed_process_leaves_its_children_until_it_is_closed(tmp_path: Path) -> None:
    script = "sleep 300 & echo child $!; wait"
    with SupervisedProcess("sh", ["sh", "-c", script], log_file=tmp_path / "sh.log") as sh:
        output = sh.wait_for_output("child ", timeout=30)
        child = int(output.split()[1])
        assert sh.kill() == -signal.SIGKILL
        assert _alive(child)  # a crash kills the process alone
        with pytest.raises(ProcessExitedError, match="sh exited with status -9"):
            sh.check_alive()
    # ...and closing sweeps its process group: no orphan outlives the test.
    wait_until(lambda: not _alive(child), timeout=10)


def test_wait_for_output_fails_at_once_when_the_process_exits(tmp_path: Path) -> None:
    process = SupervisedProcess(
        "quitter", [sys.executable, "-c", "print('bye')"], log_file=tmp_path / "q.log"
    )
    with process, pytest.raises(ProcessExitedError, match="bye"):
        process.wait_for_output("never printed", timeout=30)


def test_service_processes_env_logs_restarts_and_cleanup(tmp_path: Path) -> None:
    with ServiceProcesses(
        "nats://127.0.0.1:1",
        "pfx",
        tmp_path / "logs",
        env={"EXTRA": "base"},
        command=[sys.executable, "-c", PRINT_ENV],
    ) as services:
        first = services.start("svc", "worker", "tools", env={"EXTRA": "mine"})
        out = first.wait_for_output("prefix", timeout=30)
        assert "url nats://127.0.0.1:1 prefix pfx args ['worker', 'tools'] extra mine" in out
        services.check_alive()
        with pytest.raises(ValueError, match="already running"):
            services.start("svc", "worker")
        services.kill("svc")
        again = services.start("svc", "orchestrator")  # the name is free again
        again.wait_for_output("orchestrator", timeout=30)
        assert services.log("svc").count("url nats://") == 2  # one log over both runs
        assert "tools" not in again.output  # this run's output only
        restarted = services.restart("svc")
        restarted.wait_for_output("orchestrator", timeout=30)
        pids = [first.pid, again.pid]
    services.stop_all()  # idempotent
    assert not any(_alive(pid) for pid in pids)
    assert not again.running


def test_a_process_stopped_by_sigterm_reports_its_status(tmp_path: Path) -> None:
    code = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
    code += "print('up', flush=True)\ntime.sleep(300)\n"
    process = SupervisedProcess("t", [sys.executable, "-c", code], log_file=tmp_path / "t.log")
    with process:
        process.wait_for_output("up", timeout=30)
        assert process.terminate(timeout=20) == 7
    assert os.path.exists(tmp_path / "t.log")
