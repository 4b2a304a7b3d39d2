"""Smoke runs of ``python -m bench engine --against COMMIT``'s parts, small.

Building a commit (``pip install -e`` into a fresh virtualenv) takes minutes, so it is
not run here; what is: a platform whose services are started the way another commit's
are (this tree's ``bench/_engine_service.py`` run as a file with ``-P``, from another
folder), the comparison appendix over it and this tree's platform, how a commit is
named, and that only suites able to measure other commits accept ``--against``. No
timing is asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.__main__ import app
from bench._against import resolve
from bench._engine_analysis import Sizes
from bench._engine_platform import engine_platform
from bench._engine_versus import versus_commits
from bench._services import ROOT, ServiceCode
from jetagent.embedded import EmbeddedServer


def test_a_commit_is_named_old_when_it_is_an_ancestor_of_head() -> None:
    sha, short, older = resolve("HEAD")
    assert len(sha) == 40
    assert sha.startswith(short)
    assert not older
    parent = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "HEAD~1"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if parent.returncode != 0:
        pytest.skip("a shallow clone: HEAD has no parent here")
    assert resolve("HEAD~1")[2]


def test_against_is_refused_for_a_suite_that_cannot_measure_other_commits() -> None:
    result = CliRunner().invoke(app, ["store", "--against", "HEAD", "--no-write"])
    assert result.exit_code != 0
    assert "engine" in result.output


@pytest.mark.timeout(180)
def test_services_started_as_another_commits_are_compared_with_this_trees(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    # As bench._against starts a commit's services, with this interpreter and tree.
    script = ROOT / "bench" / "_engine_service.py"
    other = ServiceCode(
        command=(sys.executable, "-P", str(script)), cwd=tmp_path, label="other", env={}
    )
    logs, profiles = tmp_path / "logs", tmp_path / "profiles"
    with (
        engine_platform(nats_server.url, "this", logs, warm_up=1, profile_dir=profiles) as this,
        engine_platform(
            nats_server.url, "other", logs, warm_up=1, code=other, profile_dir=profiles
        ) as that,
    ):
        assert that.services.command == list(other.command)
        text = versus_commits(
            ("this tree", this),
            {"other": that},
            nats_server.pid,
            Sizes(timeline=2, profiled=1, concurrent=4),
            repeats=1,
            idle_s=0.2,
        )
    assert "*this tree*, *other*" in text
    assert "| orchestrator |" in text
    assert "| worker |" in text
    assert "whole step, p50" in text
    # Both sides' services were profiled: their own code is named.
    assert text.count("jetagent code by cumulative time") == 8
    assert "messages per step" in text
