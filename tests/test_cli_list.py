"""``jetagent list``: find workflows by status, tenant, capability, time and cost (issue 14).

Known workflows of two tenants (tests/support/known.py), the installed executable as a
subprocess, the projection service live in the test's loop.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from jetagent.contract import Status
from tests.support.known import (
    ALL,
    CANCELLED,
    HELLO,
    SIX_SEVEN,
    TOKEN_CAP,
    costs,
    env_for,
    expected_statuses,
    one_error_line,
    run_many,
    running_projection,
    submit_known,
    views_of,
)
from tests.support.platform import InProcessPlatform


def _ids(stdout: str) -> list[str]:
    document = json.loads(stdout)
    return [item["workflow_id"] for item in document["workflows"]]


@pytest.mark.timeout(300)  # a score of CLI processes: slow when the machine is loaded
async def test_list_filters_json_and_the_projection_note(engine: InProcessPlatform) -> None:
    await submit_known(engine)
    env = env_for(engine.settings)

    # No projection has run: no session views yet. Said so, not a silent empty list.
    (before,) = await run_many([["list"]], env)
    assert before.returncode == 0, before.stdout + before.stderr
    assert "projection" in before.stderr, before.stderr
    assert "jetagent projections run" in before.stderr, before.stderr

    async with running_projection(engine.settings):
        views = await views_of(engine, ALL)
        assert {wid: v.status for wid, v in views.items()} == expected_statuses()
        cost = costs(views)
        paid = sorted(wid for wid in ALL if cost[wid] > 0)
        assert paid == sorted([SIX_SEVEN, HELLO])  # the others spent nothing
        threshold = min(cost[wid] for wid in paid) / 2
        third = views[HELLO].created_at
        assert third is not None
        since_third = (third - timedelta(milliseconds=1)).isoformat()

        commands = {
            "all": ["list", "--json"],
            "table": ["list"],
            "finalized": ["list", "--status", "finalized", "--json"],
            "ended badly": ["list", "--status", "terminated", "--status", "cancelled", "--json"],
            "beta": ["list", "--tenant", "beta", "--json"],
            "tools": ["list", "--capability", "tools", "--json"],
            "since third": ["list", "--since", since_third, "--json"],
            "until 2000": ["list", "--until", "2000-01-01", "--json"],
            "until an hour ago": ["list", "--until", "60m", "--json"],
            "paid": ["list", "--cost-above", str(threshold), "--json"],
            "two": ["list", "--limit", "2", "--json"],
            "ids": ["list", "--tenant", "acme", "--ids"],
        }
        results = dict(zip(commands, await run_many(list(commands.values()), env), strict=True))
        for name, result in results.items():
            assert result.returncode == 0, (name, result.stdout + result.stderr)

        # Newest first; every field documented in the README.
        document = json.loads(results["all"].stdout)
        assert _ids(results["all"].stdout) == list(reversed(ALL))
        assert document["count"] == 4
        assert document["matched"] == 4
        assert document["projection"]["running"] is True
        first = document["workflows"][0]
        assert set(first) >= {
            "workflow_id", "short_id", "tenant", "status", "created_at", "updated_at",
            "ended_at", "capabilities", "steps", "tokens", "cost_usd", "instruction",
            "reason",
        }  # fmt: skip
        assert first["created_at"].endswith("+00:00")
        by_id = {item["workflow_id"]: item for item in document["workflows"]}
        assert by_id[SIX_SEVEN]["capabilities"] == ["reasoning", "tools"]
        assert by_id[SIX_SEVEN]["cost_usd"] == str(cost[SIX_SEVEN])
        assert by_id[SIX_SEVEN]["short_id"] == "cafe0001"

        assert _ids(results["finalized"].stdout) == [HELLO, SIX_SEVEN]
        assert _ids(results["ended badly"].stdout) == [CANCELLED, TOKEN_CAP]
        assert _ids(results["beta"].stdout) == [CANCELLED, HELLO]
        assert _ids(results["tools"].stdout) == [SIX_SEVEN]
        assert _ids(results["since third"].stdout) == [CANCELLED, HELLO]
        assert _ids(results["until 2000"].stdout) == []
        assert _ids(results["until an hour ago"].stdout) == []
        assert _ids(results["paid"].stdout) == [HELLO, SIX_SEVEN]
        two = json.loads(results["two"].stdout)
        assert _ids(results["two"].stdout) == [CANCELLED, HELLO]
        assert two["matched"] == 4
        assert two["count"] == 2
        assert two["truncated"] is True
        assert results["ids"].stdout.split() == [TOKEN_CAP, SIX_SEVEN]

        # The table: short ids, statuses, tenants; the rest is in --json.
        table = results["table"].stdout
        for wid in ALL:
            assert wid[:8] in table, table
            assert wid not in table, table
        for status in ("finalized", "terminated", "cancelled"):
            assert status in table
        assert "beta" in table
        assert "acme" in table

        # Bad filters: one line each, naming what is wrong.
        bad = await run_many(
            [
                ["list", "--since", "yesterdayish"],
                ["list", "--status", "sideways"],
                ["list", "--cost-above", "cheap"],
            ],
            env,
        )
        one_error_line(bad[0], "yesterdayish")
        one_error_line(bad[1], "sideways")
        one_error_line(bad[2], "cheap")

    # The projection service stopped: the views are listed, with a note that they may be
    # stale.
    (after,) = await run_many([["list", "--json"]], env)
    assert after.returncode == 0, after.stderr
    document = json.loads(after.stdout)
    assert _ids(after.stdout) == list(reversed(ALL))
    assert document["projection"]["running"] is False
    assert "not running" in after.stderr, after.stderr
    assert {item["status"] for item in document["workflows"]} == {
        s.value for s in (Status.FINALIZED, Status.TERMINATED, Status.CANCELLED)
    }
