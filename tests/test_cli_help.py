"""Every command's ``--help`` ends with examples that work, and the top-level help says
where the commands connect (issue 14, first contact).

The list of commands comes from the installed ``jetagent --help`` (a subprocess, as a
user sees it), so a new command without examples fails here; each command's own help is
rendered in-process (the same typer code, without a second's start-up per command), and
every example in it is parsed against the command's real options and arguments.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tests.support.cli import cli_env, run_cli


def _listed(text: str) -> list[str]:
    block = text.split("Commands")[1]
    return re.findall(r"^│ (\w[\w-]*) ", block, flags=re.MULTILINE)


def _commands() -> list[list[str]]:
    """What the installed ``jetagent --help`` lists, with each group's sub-commands."""
    from jetagent.cli import app

    tree: Any = typer.main.get_command(app)
    found = []
    for name in _listed(run_cli("--help", env=cli_env(None)).stdout):
        found.append([name])
        group = tree.commands[name]
        found += [[name, child] for child in getattr(group, "commands", {})]
    return found


COMMANDS = _commands()


def _help(path: list[str]) -> str:
    from jetagent.cli import app

    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def _examples(text: str) -> list[str]:
    """The command lines of the help's ``Examples:`` section (comments dropped)."""
    lines = [line.strip() for line in text.splitlines()]
    start = lines.index("Examples:") + 1
    found = []
    for line in lines[start:]:
        if not line:
            break
        found.append(line.split("   #", 1)[0].strip())
    return found


def _parse(example: str) -> tuple[list[str], Any]:
    """Parse a command line as the real ``jetagent`` would (no callback runs)."""
    from jetagent.cli import app

    words = shlex.split(example)
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words.pop(0)  # VAR=value before the command
    assert words[0] == "jetagent", example
    # typer's own click (vendored in newer typer): groups are known by their commands.
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    rest = words[1:]
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        path.append(rest[0])
        command = command.commands[rest.pop(0)]
    assert not hasattr(command, "commands") or not rest, example
    return path, command.make_context(" ".join(["jetagent", *path]), rest)


def test_the_help_lists_every_command_here() -> None:
    names = {" ".join(c) for c in COMMANDS}
    assert {"up", "submit", "watch", "dlq", "tail", "projections", "projections run"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_every_command_shows_examples_that_parse(path: list[str]) -> None:
    text = _help(path)
    assert "Examples:" in text, text
    examples = _examples(text)
    assert examples, text
    for example in examples:
        parsed, _context = _parse(example)
        # An example of this command (a group's may show its sub-commands).
        assert parsed[: len(path)] == path, (path, example)


def test_the_top_level_help_says_where_commands_connect(tmp_path: Path) -> None:
    env = cli_env(None, XDG_STATE_HOME=str(tmp_path / "state"))
    text = run_cli("--help", env=env, cwd=tmp_path).stdout
    assert "NATS_URL" in text, text
    assert ".jetagent/nats.url" in text, text
    assert "Now: NATS_URL is not set and no `jetagent up` is running" in text, text
    assert "Examples:" in text, text
    for example in _examples(text):
        _parse(example)
    # With NATS_URL set, the help says that is what the commands use.
    url = "nats://127.0.0.1:4333"
    text = run_cli("--help", env=cli_env(url), cwd=tmp_path).stdout
    assert f"Now: NATS_URL={url}" in text, text
