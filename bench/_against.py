"""Another commit of jetagent, built so its services can run next to this tree's: ``--against``.

``python -m bench engine --against 9aab558`` measures the engine of commit ``9aab558`` as
one more contender of the suite, on the same nats-server, fed by the same client, its
rounds interleaved with the current tree's. :func:`build_commit` makes what that needs,
once per commit, in ``.bench-cache/<sha>/`` at the repository root (git-ignored):

- ``tree/``: the commit's files, exported with ``git archive`` (not ``git worktree add``:
  nothing is registered in the repository, and removing the folder is all it takes to
  forget it);
- ``venv/``: a virtualenv with that tree installed editable (``pip install -e``), so its
  ``jetagent``, ``capabilities`` and ``projections`` are the commit's own, whatever the
  module layout was then;
- ``.built``: written last; a folder without it (an interrupted build) is built again.

The commit's services are started by this tree's ``bench/_engine_service.py`` run as a
file by the commit's interpreter with ``-P`` (no script or working folder on
``sys.path``, so nothing of this tree shadows the commit's packages): it uses only the
standard library until it imports the commit's CLI, and keeps the profiling signals, so
``--profile engine`` profiles the commit's services too.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ._services import ROOT, ServiceCode

__all__ = ["CACHE", "CommitBuild", "build_commit"]

CACHE = ROOT / ".bench-cache"
"""Where commits are built (git-ignored)."""
_STAMP = ".built"
_SERVICE_SCRIPT = Path(__file__).resolve().parent / "_engine_service.py"


@dataclass(frozen=True)
class CommitBuild:
    """One commit's tree and virtualenv, ready to run its services."""

    ref: str
    """The commit as it was asked for (``9aab558``, ``main~3``)."""
    sha: str
    short: str
    older: bool
    """An ancestor of this tree's ``HEAD`` (the usual case: the commit before a change)."""
    tree: Path
    python: Path

    @property
    def label(self) -> str:
        """The contender's name in the report: ``old commit 9aab558``."""
        return f"{'old commit' if self.older else 'commit'} {self.short}"

    @property
    def code(self) -> ServiceCode:
        """How to start this commit's ``jetagent`` CLI as a profilable service."""
        return ServiceCode(
            command=(str(self.python), "-P", str(_SERVICE_SCRIPT)),
            cwd=self.tree,
            label=self.label,
            env={"PYTHONPATH": ""},  # a PYTHONPATH to this tree would shadow the commit's
        )


def _git(*args: str, binary: bool = False) -> bytes:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {out.stderr.decode(errors='replace').strip()}")
    return out.stdout


def resolve(ref: str) -> tuple[str, str, bool]:
    """The full sha of ``ref``, its short form, and whether it is an ancestor of HEAD."""
    sha = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    short = _git("rev-parse", "--short", sha).decode().strip()
    ancestor = subprocess.run(
        ["git", "merge-base", "--is-ancestor", sha, "HEAD"], cwd=ROOT, timeout=60, check=False
    )
    return sha, short, ancestor.returncode == 0 and sha != _head()


def _head() -> str:
    return _git("rev-parse", "HEAD").decode().strip()


def build_commit(ref: str, cache: Path = CACHE) -> CommitBuild:
    """``ref``'s tree and virtualenv in ``cache`` (made now unless a previous run made them)."""
    sha, short, older = resolve(ref)
    home = cache / sha[:12]
    build = CommitBuild(
        ref=ref,
        sha=sha,
        short=short,
        older=older,
        tree=home / "tree",
        python=home / "venv" / "bin" / "python",
    )
    stamp = home / _STAMP
    if stamp.exists() and stamp.read_text().strip() == sha:
        return build
    shutil.rmtree(home, ignore_errors=True)
    build.tree.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", sha))) as archive:
        archive.extractall(build.tree, filter="data")
    _run([sys.executable, "-m", "venv", str(home / "venv")], "creating its virtualenv")
    pip = [str(build.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, "-e", str(build.tree)], "installing it (pip install -e)")
    # The commit's CLI must import from its own tree, not from this one.
    probe = "import jetagent, capabilities; print(jetagent.__file__, capabilities.__file__)"
    where = _run([str(build.python), "-P", "-c", probe], "importing it", cwd=home)
    if any(not Path(p).is_relative_to(build.tree) for p in where.split()):
        raise RuntimeError(f"commit {short}: its virtualenv imports {where}, not its own tree")
    stamp.write_text(sha + "\n")
    return build


def _run(command: list[str], what: str, cwd: Path | None = None) -> str:
    out = subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(command)}):\n{out.stderr[-3000:]}")
    return out.stdout.strip()
