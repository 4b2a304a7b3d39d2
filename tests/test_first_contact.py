"""First contact (issue 14): `jetagent up` listens on a stable port, says where, and the
other commands find it; a taken port is explained, never silently shared.

The default port is 4222, which no test may bind: these tests set the default's source,
``JETAGENT_NATS_PORT``, to a free port of their own, exactly as a user would set it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from jetagent.config import Settings
from jetagent.embedded import free_port
from jetagent.testing import SupervisedProcess, nats_server
from tests.support.cli import JETAGENT, cli_env, run_cli

pytestmark = pytest.mark.timeout(300)  # `jetagent up` and CLI processes: slow on a loaded machine

URL = re.compile(r"embedded nats-server: (nats://127\.0\.0\.1:\d+)")


def _up(tmp_path: Path, name: str, env: dict[str, str], *args: str) -> SupervisedProcess:
    return SupervisedProcess(
        name,
        [str(JETAGENT), "up", *args],
        log_file=tmp_path / f"{name}.log",
        env=env,
        cwd=tmp_path,
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's shell: no NATS_URL, a state folder of this test's own."""
    return cli_env(
        None,
        XDG_STATE_HOME=str(tmp_path / "state"),
        JETAGENT_METRICS_PORT=str(free_port()),
        JETAGENT_GATEWAY_PORT=str(free_port()),
        **extra,
    )


def _one_line(result: object) -> str:
    stderr = getattr(result, "stderr", "")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr + getattr(result, "stdout", "")
    return lines[0]


def test_the_default_port_is_4222() -> None:
    # Read, never bound: 4222 is what the nats tools and client libraries assume.
    assert Settings.model_fields["nats_port"].default == 4222
    help_text = run_cli("up", "--help", env=cli_env(None)).stdout
    assert "4222" in help_text, help_text
    assert "--port" in help_text, help_text


def test_up_keeps_its_port_and_the_commands_find_it(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = _env(tmp_path, JETAGENT_NATS_PORT=str(port))
    expected = f"nats://127.0.0.1:{port}"
    urls, written = [], []
    for run in (1, 2):
        up = _up(tmp_path, f"up{run}", env, "--data-dir", str(data))
        with up:
            output = up.wait_for_output("jetagent is up", timeout=90)
            found = URL.search(output)
            assert found, output
            urls.append(found.group(1))
            # The URL is printed where a user sees it, and written where tools find it.
            url_file = data / "nats.url"
            written.append(url_file.read_text() if url_file.exists() else None)
            if run == 1 and written[0] is not None:
                _commands_find_it(tmp_path, env, data, expected, port)
            up.send_signal(signal.SIGINT, group=True)
            assert up.wait(60) == 0, up.tail()
        # Stopped: the URL is withdrawn.
        assert not url_file.exists()
    # ...and no command connects to a platform that is gone.
    gone = run_cli("dlq", env={**env, "JETAGENT_DATA_DIR": str(data)}, cwd=tmp_path)
    assert gone.returncode == 2
    assert "NATS_URL is not set" in _one_line(gone)
    # Two starts, one URL: an exported NATS_URL stays true.
    assert urls == [expected, expected]
    assert written == [expected + "\n", expected + "\n"]


def _commands_find_it(
    tmp_path: Path, env: dict[str, str], data: Path, expected: str, port: int
) -> None:
    # Without NATS_URL, a command finds the running `up`: through its data folder...
    by_folder = run_cli("dlq", env={**env, "JETAGENT_DATA_DIR": str(data)}, cwd=tmp_path)
    assert by_folder.returncode == 0, by_folder.stdout + by_folder.stderr
    # ...and from any other folder, through the per-user pointer.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    anywhere = run_cli("dlq", env=env, cwd=elsewhere)
    assert anywhere.returncode == 0, anywhere.stdout + anywhere.stderr
    # The top-level help says which URL the commands use now.
    help_text = run_cli("--help", env=env, cwd=elsewhere).stdout
    assert "NATS_URL" in help_text, help_text
    assert expected in help_text, help_text
    # A second `up` on the same port is told that one runs there, and where.
    second = run_cli("up", "--data-dir", str(tmp_path / "other"), env=env, cwd=tmp_path)
    assert second.returncode != 0, second.stdout
    line = _one_line(second)
    assert f"port {port}" in line, line
    assert "another `jetagent up`" in line, line
    assert str(data) in line, line
    assert "--port" in line, line


def test_a_port_held_by_a_foreign_nats_server_is_explained(tmp_path: Path) -> None:
    with nats_server(tmp_path / "theirs") as theirs:
        env = _env(tmp_path)
        result = run_cli(
            "up", "--port", str(theirs.port), "--data-dir", str(tmp_path / "data"), env=env
        )
        assert result.returncode != 0, result.stdout
        line = _one_line(result)
        # Never connected to silently: the user chooses (their server, or another port).
        assert "did not start" in line, line
        assert f"NATS_URL=nats://127.0.0.1:{theirs.port} jetagent up" in line, line
        assert "--port 0" in line, line
        assert "embedded nats-server" not in result.stdout
        assert not (tmp_path / "data" / "nats.url").exists()


def test_a_port_held_by_another_program_is_explained(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        env = _env(tmp_path, JETAGENT_NATS_PORT=str(port))
        result = run_cli("up", "--data-dir", str(tmp_path / "data"), env=env)
    assert result.returncode != 0, result.stdout
    line = _one_line(result)
    assert f"port {port}" in line, line
    assert "not a nats-server" in line, line
    assert "--port" in line, line


def test_bad_ports_get_one_clear_line(tmp_path: Path) -> None:
    env = _env(tmp_path)
    result = run_cli("up", "--port", "70000", "--data-dir", str(tmp_path / "data"), env=env)
    assert result.returncode == 2, result.stdout
    assert "--port 70000 is not a port" in _one_line(result)
    bad_env = run_cli("up", env={**env, "JETAGENT_NATS_PORT": "http"}, cwd=tmp_path)
    assert bad_env.returncode == 2
    assert "JETAGENT_NATS_PORT" in _one_line(bad_env)
    # --port is the embedded server's: with NATS_URL set, `up` starts none.
    both = run_cli("up", "--port", "0", env={**env, "NATS_URL": "nats://127.0.0.1:1"})
    assert both.returncode == 2
    assert "NATS_URL" in _one_line(both)


def test_an_announcement_counts_only_while_its_up_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jetagent import discovery

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    data = tmp_path / "data"
    (data / "nats").mkdir(parents=True)
    url = "nats://127.0.0.1:4999"
    assert discovery.announce(data, url) == []
    # A shell reads the data folder's file as it is: the URL and a newline.
    assert (data / "nats.url").read_text() == url + "\n"
    # The data folder's lock names the running `up` (here, this process).
    (data / "nats" / "LOCK").write_text(str(os.getpid()))
    found = discovery.discover(data)
    assert found is not None
    assert (found.url, found.pid) == (url, os.getpid())
    # From any other folder: through the per-user pointer.
    elsewhere = discovery.discover(tmp_path / "elsewhere")
    assert elsewhere is not None
    assert (elsewhere.url, elsewhere.data_dir) == (url, data)
    # SIGKILLed `up`: the files stay, its pid is gone; nothing is found.
    dead = _dead_pid()
    (data / "nats" / "LOCK").write_text(str(dead))
    assert discovery.discover(data) is None
    assert discovery.discover(tmp_path / "elsewhere") is None
    # A clean stop withdraws both files.
    (data / "nats" / "LOCK").write_text(str(os.getpid()))
    discovery.withdraw(data)
    assert not (data / "nats.url").exists()
    assert not discovery.user_file().exists()
    assert discovery.discover(data) is None


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
