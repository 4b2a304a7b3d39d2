"""Running parts of the platform as an unprivileged user from tests that run as root.

The user is `nobody`; the interpreter is the system's Python (the virtualenv's lives
where other users cannot read). The repository and the virtualenv's site-packages are
used where they are when `nobody` can read them, else copied to a folder it can.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
ROOT = Path(__file__).resolve().parents[2]
SITE_PACKAGES = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
_REPO_PARTS = ("platform", "nats", "capabilities", "projections", "tests/support")
_REPO_FILES = ("tests/__init__.py",)


def _reachable(path: Path) -> bool:
    """Whether a user in no group of the owner can traverse to `path` and read it."""
    path = path.resolve()
    if not all(folder.stat().st_mode & stat.S_IXOTH for folder in [path, *path.parents]):
        return False
    return bool(path.stat().st_mode & stat.S_IROTH)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(source, target, symlinks=True, ignore=ignore)
    else:
        shutil.copy2(source, target)


@contextlib.contextmanager
def reachable_code(*, full_site_packages: bool) -> Iterator[tuple[Path, Path]]:
    """(repository root, site-packages) that `nobody` can read. Without
    `full_site_packages` a copy holds pyseccomp only (all the sandbox needs)."""
    if _reachable(ROOT) and _reachable(SITE_PACKAGES):
        yield ROOT, SITE_PACKAGES
        return
    folder = Path(tempfile.mkdtemp(prefix="jetagent-unprivileged-"))
    try:
        for part in (*_REPO_PARTS, *_REPO_FILES):
            _copy(ROOT / part, folder / "repo" / part)
        if full_site_packages:
            _copy(SITE_PACKAGES, folder / "site")
        else:
            import pyseccomp  # type: ignore[import-untyped]

            _copy(Path(pyseccomp.__file__), folder / "site" / "pyseccomp.py")
        for path, dirs, files in os.walk(folder):
            for name in [*dirs, *files]:
                entry = Path(path) / name
                if not entry.is_symlink():
                    entry.chmod(entry.stat().st_mode | 0o444 | (0o111 if name in dirs else 0))
        folder.chmod(0o755)
        yield folder / "repo", folder / "site"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
