"""The README's code blocks run as written (issue 14, first contact).

Every fenced block of README.md is one of:

- **run**: ``sh``/``bash``/``shell`` blocks through ``bash -eo pipefail``, ``python``
  blocks with this interpreter (the project's virtual environment), in README order,
  against one ``jetagent up`` the test starts (on a free port; the blocks find it as a
  user's shell does: no ``NATS_URL``, the installed ``jetagent`` on ``PATH``, the
  folder where ``up`` runs as their working folder);
- **parsed**: ``toml``, ``json``, ``yaml`` (configuration a reader copies);
- **text**: ``text`` blocks (diagrams), nothing to run;
- **marked** by an HTML comment on the line before the fence:
  ``<!-- not-run: REASON -->`` (what it needs that a test cannot have: Docker, a fixed
  port, the test suite itself) or ``<!-- output: SOURCE -->`` (a sample of a command's
  output, compared with the real output of SOURCE in shape: the same lines, numbers and
  ids aside).

A block that is none of these fails the test, so a new block is run or says why not.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from jetagent.config import Settings
from jetagent.embedded import free_port
from jetagent.testing import SupervisedProcess, connect_jetstream, eventually, tools_registered
from tests.support.cli import JETAGENT, ROOT

README = ROOT / "README.md"
SHELL = {"sh", "bash", "shell"}
PYTHON = {"python"}
DATA = {"toml", "json", "yaml"}
TEXT = {"text"}
OUTPUT_SOURCES = {"make demo"}
"""Commands whose output a sample may show (the test knows how to run each)."""

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+)(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not-run|output):\s*(?P<text>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    line: int  # of the opening fence, 1-based
    info: str  # the info string's first word ("" if none)
    code: str
    marker: str | None  # "not-run" or "output"
    marker_text: str

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({self.info or 'no language'})"


def blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    found = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        info = (opening["info"].strip().split() or [""])[0]
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
        marker, marker_text = None, ""
        before = i - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before >= 0 and (match := _MARKER.match(lines[before])):
            marker, marker_text = match["kind"], match["text"]
        found.append(Block(i + 1, info, "\n".join(body) + "\n", marker, marker_text))
        i = end + 1
    return found


BLOCKS = blocks(README.read_text())
RUN = [b for b in BLOCKS if b.marker is None and b.info in SHELL | PYTHON]


def test_every_block_is_run_parsed_or_marked() -> None:
    unclear = [
        b.where for b in BLOCKS if b.marker is None and b.info not in SHELL | PYTHON | DATA | TEXT
    ]
    assert not unclear, (
        f"blocks with no language this test knows, and no marker: {unclear} "
        f"(use {sorted(SHELL | PYTHON | DATA | TEXT)}, or <!-- not-run: why --> / "
        "<!-- output: command --> on the line before)"
    )
    # A marker says why: what the block needs that a test cannot have.
    for block in BLOCKS:
        if block.marker == "not-run":
            assert len(block.marker_text.split()) >= 3, f"{block.where}: say why it is not run"
        if block.marker == "output":
            assert block.marker_text in OUTPUT_SOURCES, (
                f"{block.where}: no way to run {block.marker_text!r} (known: {OUTPUT_SOURCES})"
            )
    assert len(RUN) >= 4, [b.where for b in RUN]


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.marker is None and b.info in DATA], ids=lambda b: b.where
)
def test_configuration_blocks_parse(block: Block) -> None:
    if block.info == "toml":
        tomllib.loads(block.code)
    elif block.info == "json":
        json.loads(block.code)
    else:
        yaml.safe_load(block.code)


def _user_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell after `. .venv/bin/activate`: no NATS_URL, default settings."""
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL" and not k.startswith("JETAGENT_")}
    env["PATH"] = f"{JETAGENT.parent}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "120"
    # A block that starts a server of its own never takes NATS's 4222 (a user's, maybe).
    env["JETAGENT_NATS_PORT"] = "0"
    return env


def _run(block: Block, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = folder / f"readme-{block.line}.{'py' if block.info in PYTHON else 'sh'}"
    script.write_text(block.code)
    argv = (
        [sys.executable, str(script)]
        if block.info in PYTHON
        else ["bash", "-eo", "pipefail", str(script)]
    )
    return subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=120)


async def test_the_blocks_run_as_written(tmp_path: Path) -> None:
    project = tmp_path / "project"  # where the user runs `jetagent up`, and the blocks
    project.mkdir()
    env = _user_env(tmp_path)
    up_env = {
        **env,
        "JETAGENT_METRICS_PORT": str(free_port()),
        "JETAGENT_GATEWAY_PORT": str(free_port()),
    }
    up = SupervisedProcess(
        "up",
        # --port 0: the README's 4222 may be a user's; the blocks find the URL as users do.
        [str(JETAGENT), "up", "--port", "0"],
        log_file=tmp_path / "up.log",
        env=up_env,
        cwd=project,
    )
    with up:
        import asyncio

        output = await asyncio.to_thread(up.wait_for_output, "jetagent is up", timeout=120)
        url = re.search(r"NATS_URL=(nats://\S+)", output)
        assert url, output
        async with connect_jetstream(url[1]) as nats:
            await eventually(
                lambda: tools_registered(nats.js, Settings(nats_url=url[1]), "calculator"),
                timeout=60,
                alive=up.check_alive,
                what="the tools worker",
            )
        failures = []
        for block in RUN:
            started = time.monotonic()
            result = await asyncio.to_thread(_run, block, project, env)
            print(f"{block.where}: {time.monotonic() - started:.1f} s")  # shown with -s
            if result.returncode != 0:
                failures.append(
                    f"{block.where} exited {result.returncode}:\n{block.code}\n"
                    f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
                )
        up.send_signal(signal.SIGINT, group=True)
        await asyncio.to_thread(up.wait, 60)
    assert not failures, "\n\n".join(failures)


_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PATH = re.compile(r"/\S*jetagent-demo-\S+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def shape(line: str) -> str:
    """A line with its ids, temporary paths and numbers replaced, spaces collapsed."""
    line = _PATH.sub("PATH", _ID.sub("ID", line))
    return " ".join(_NUMBER.sub("N", line).split())


def matches_in_shape(sample: str, output: str) -> list[str]:
    """What of ``sample`` is missing from ``output`` in shape (empty: it matches). Each
    sample line must be an output line; lines of one workflow (the first word) in the
    same order; ``...`` elides."""
    produced = [shape(line) for line in output.splitlines() if line.strip()]
    missing = []
    position: dict[str, int] = {}
    for raw in sample.splitlines():
        if not raw.strip() or raw.strip() == "...":
            continue
        wanted = shape(raw)
        label = wanted.split()[0]
        start = position.get(label, 0)
        at = next((i for i in range(start, len(produced)) if produced[i] == wanted), None)
        if at is None:
            earlier = wanted in produced[:start]
            missing.append(f"{raw!r}" + (" (out of order)" if earlier else ""))
        else:
            position[label] = at + 1
    return missing


def test_the_shape_comparison_can_fail() -> None:
    output = "a   1.0 ms step 1 done: 395 (3 tokens)\na   2.5 ms finalized\nb x"
    assert (
        matches_in_shape("a 9.9 ms step 7 done: 1 (0 tokens)\n...\na 1 ms finalized", output) == []
    )
    assert matches_in_shape("a 1 ms finalized\na 1.0 ms step 1 done: 3 (3 tokens)", output)
    assert matches_in_shape("a 1 ms cancelled", output)


def test_the_demo_output_matches_the_readme_sample(tmp_path: Path) -> None:
    [sample] = [b for b in BLOCKS if b.marker == "output" and b.marker_text == "make demo"]
    # `up`'s port taken (a user's server, a running `up`): the demo takes a free one.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**_user_env(tmp_path), "JETAGENT_NATS_PORT": str(taken.getsockname()[1])}
        # `make demo` runs `python -m jetagent.cli.demo`, which is `jetagent demo`.
        demo = subprocess.run(
            [str(JETAGENT), "demo"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    missing = matches_in_shape(sample.code, demo.stdout)
    assert not missing, (
        f"{sample.where}: the demo no longer prints these lines (numbers and ids aside):\n"
        + "\n".join(missing)
        + f"\n--- the demo printed:\n{demo.stdout}"
    )
