"""Every command `jetagent --help` lists, run as the installed executable (issue 9, item 10).

Against no server, a bad URL, and a real server: each command either works or exits
non-zero with one line a person understands — never a traceback, never a silent hang.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from jetagent.config import Settings
from jetagent.embedded import free_port
from jetagent.testing import SupervisedProcess
from tests.support.cli import JETAGENT, ROOT, arun_cli, cli_env, run_cli
from tests.support.platform import InProcessPlatform

pytestmark = pytest.mark.timeout(300)  # dozens of CLI processes each: minutes on a loaded machine


def _listed_commands() -> list[list[str]]:
    """The commands and sub-commands the help lists (so a new command cannot be missed)."""
    env = cli_env(None)

    def names(*args: str) -> list[str]:
        text = run_cli(*args, "--help", env=env).stdout
        block = text.split("Commands")[1]
        return re.findall(r"^│ (\w[\w-]*) ", block, flags=re.MULTILINE)

    commands = []
    for name in names():
        if name == "projections":
            commands += [[name, sub] for sub in names(name)]
        else:
            commands.append([name])
    return commands


# The arguments each command needs to get as far as the server.
ARGS: dict[str, list[str]] = {
    "worker": ["tools"],
    "submit": ["What is 6 * 7?"],
    "watch": ["no-such-workflow", "--timeout", "5"],
    "inspect": ["no-such-workflow"],
    "replay": ["no-such-workflow"],
}
OFFLINE = {"schemas", "demo"}
"""Commands that need no server (``demo`` starts its own)."""


def _one_clear_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output
    for text in expected:
        assert text in lines[0], output


def test_the_help_lists_what_this_test_runs() -> None:
    listed = _listed_commands()
    assert ["projections", "rebuild"] in listed
    assert {c[0] for c in listed} >= {"up", "submit", "watch", "dlq", "inspect", "tail"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nats://127.0.0.1:{port}", "cannot connect to NATS at nats://127.0.0.1:"),
        ("http://127.0.0.1:{port}", "not a NATS URL"),
        ("garbage url", "not a NATS URL"),
    ],
    ids=["unreachable", "http", "garbage"],
)
async def test_every_command_without_a_server(url: str, expected: str, tmp_path: Path) -> None:
    env = cli_env(
        url.format(port=free_port()),
        JETAGENT_METRICS_PORT=str(free_port()),
        JETAGENT_DATA_DIR=str(tmp_path / "data"),
    )
    commands = [c for c in _listed_commands() if c[0] not in OFFLINE]
    # Two at a time: the box has two cores.
    gate = asyncio.Semaphore(2)

    async def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        async with gate:
            return await arun_cli(*command, *ARGS.get(command[0], []), env=env, timeout=60)

    results = await asyncio.gather(*(run(c) for c in commands))
    for command, result in zip(commands, results, strict=True):
        assert result.returncode != 0, command
        _one_clear_line(result, expected)


async def _stops_on_sigterm(args: list[str], env: dict[str, str], ready: str, log_dir: Path) -> str:
    process = SupervisedProcess(
        args[0], [str(JETAGENT), *args], log_file=log_dir / f"{args[0]}.log", env=env, cwd=ROOT
    )
    with process:
        await asyncio.to_thread(process.wait_for_output, ready, timeout=60)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 60)
        assert time.monotonic() - started < 30, "slow to stop on SIGTERM"
    output = process.output
    assert "Traceback" not in output, output
    return output


async def test_every_command_against_a_real_server(
    engine: InProcessPlatform, tmp_path: Path
) -> None:
    settings: Settings = engine.settings
    env = cli_env(settings.nats_url, settings.prefix, JETAGENT_METRICS_PORT=str(free_port()))

    provisioned = await arun_cli("provision", env=env)
    assert provisioned.returncode == 0, provisioned.stderr

    # Bad arguments: one line, not a pydantic traceback.
    empty = await arun_cli("submit", "", env=env)
    _one_clear_line(empty, "instruction")
    unknown_capability = await arun_cli("worker", "no-such-capability", env=env)
    _one_clear_line(unknown_capability, "no-such-capability")

    done = await arun_cli("submit", "What is 6 * 7?", "--wait", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    workflow_id = done.stdout.splitlines()[0].strip()
    watched = await arun_cli("watch", workflow_id, env=env)
    assert watched.returncode == 0, watched.stderr
    assert "finalized" in watched.stdout
    for command in (["inspect", workflow_id], ["replay", workflow_id, "--verify"], ["dlq"]):
        result = await arun_cli(*command, env=env)
        assert result.returncode == 0, (command, result.stdout + result.stderr)

    # An unknown id: one line, for every command that takes one.
    for command in (["inspect"], ["replay"], ["watch", "--timeout", "2"]):
        missing = await arun_cli(*command, "no-such-workflow", env=env)
        _one_clear_line(missing, "no-such-workflow")

    # watch says what it waits for, and stops on SIGTERM.
    output = await _stops_on_sigterm(
        ["watch", "never-submitted"],
        env,
        ready="waiting for workflow never-submitted",
        log_dir=tmp_path,
    )
    assert "stopped" in output

    # Services and followers stop cleanly on SIGTERM.
    await _stops_on_sigterm(["tail"], env, ready="following", log_dir=tmp_path)
    await _stops_on_sigterm(
        ["projections", "run"], env, ready="projections serving", log_dir=tmp_path
    )
    await _stops_on_sigterm(["orchestrator"], env, ready="orchestrator", log_dir=tmp_path)

    rebuilt = await arun_cli("projections", "rebuild", env=env)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "rebuilt" in rebuilt.stdout

    schemas = await arun_cli("schemas", "--out", str(tmp_path / "schemas"), env=env)
    assert schemas.returncode == 0, schemas.stderr
    stale = await arun_cli("schemas", "--check", "--out", str(tmp_path / "elsewhere"), env=env)
    _one_clear_line(stale, "stale schemas")

    # A prefix nothing was provisioned under: an empty platform, said in one line.
    bare = cli_env(settings.nats_url, "bare" + settings.prefix[:8])
    for command in (
        ["dlq"],
        ["inspect", workflow_id],
        ["submit", "hi"],
        ["tail"],
        ["list"],
        ["status"],
    ):
        result = await arun_cli(*command, env=bare)
        _one_clear_line(result, "jetagent provision")
