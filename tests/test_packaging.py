"""Packaging (issue 14, first contact): building jetagent prints no setuptools warnings
about left-out packages, and the wheel ships the stream definitions of ``nats/``.

Both builds run on a copy of the source tree without build leftovers (``build/``,
``*.egg-info``: a stale ``SOURCES.txt`` would change what setuptools checks), as a fresh
clone's ``make setup`` does: ``pip wheel --no-deps`` and ``pip install --no-deps -e``
into an empty virtual environment of the test's own.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.cli import ROOT

LEFT_OUT = "is absent from the `packages` configuration"

DEFINITIONS = {
    "jetagent/definitions/single.conf",
    "jetagent/definitions/accounts.conf",
    "jetagent/definitions/cluster/n1.conf",
    "jetagent/definitions/consumers/consumers.json",
    "jetagent/definitions/kv/buckets.json",
    *(
        f"jetagent/definitions/streams/{path.name}"
        for path in (ROOT / "nats" / "streams").glob("*.json")
    ),
}


def _source_copy(into: Path) -> Path:
    leftovers = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
        ".jetagent", ".hypothesis",
    )  # fmt: skip
    return Path(shutil.copytree(ROOT, into, symlinks=True, ignore=leftovers))


async def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _backend_warnings(output: str) -> list[str]:
    """setuptools' warnings, but its notice that an install is editable."""
    return [
        line.strip()
        for line in output.splitlines()
        if "Warning:" in line and "Editable installation." not in line
    ]


async def test_builds_print_no_left_out_package_warnings(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "src")
    venv = tmp_path / "venv"
    made = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True
    )
    assert made.returncode == 0
    wheel, editable = await asyncio.gather(
        _pip("wheel", "--no-deps", "-w", str(tmp_path / "wheels"), str(source)),
        _pip("--python", str(venv / "bin" / "python"), "install", "--no-deps", "-e", str(source)),
    )
    for build in (wheel, editable):
        output = build.stdout + build.stderr
        assert build.returncode == 0, output
        assert output.count(LEFT_OUT) == 0, output
        assert _backend_warnings(output) == [], output

    # The wheel holds every definition `jetagent provision` reads.
    [built] = (tmp_path / "wheels").glob("jetagent-*.whl")
    names = set(zipfile.ZipFile(built).namelist())
    assert names >= DEFINITIONS, sorted(DEFINITIONS - names)
