"""The repository layout keeps working as docs/ARCHITECTURE.md §2 requires."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_platform_folder_is_not_a_package() -> None:
    # A platform/__init__.py would shadow the standard library's module.
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_import_platform_from_repository_root_is_the_standard_library() -> None:
    # Run from the root, where the folder `platform/` is on sys.path first.
    code = "import platform, sys; print(platform.__file__); print(platform.python_version())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert not out[0].startswith(str(ROOT)), out[0]
    assert out[1] == ".".join(map(str, sys.version_info[:3]))


def test_import_nats_from_repository_root_is_nats_py() -> None:
    # The top-level nats/ folder holds configs; it must not shadow the nats-py client.
    code = "import nats.aio.client, sys; print(nats.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert "site-packages" in out, out


def test_stream_definitions_ship_with_the_package() -> None:
    from importlib import resources

    streams = resources.files("jetagent").joinpath("definitions", "streams")
    assert streams.joinpath("eventstore.json").is_file()


def test_every_package_is_distributed() -> None:
    # A non-editable install ships only the packages pyproject lists.
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for init in [
        *ROOT.glob("platform/**/__init__.py"),
        *ROOT.glob("capabilities/**/__init__.py"),
        *ROOT.glob("projections/**/__init__.py"),
    ]:
        parts = init.parent.relative_to(ROOT).parts
        found.add(".".join(parts[1:] if parts[0] == "platform" else parts))
    assert found == listed
