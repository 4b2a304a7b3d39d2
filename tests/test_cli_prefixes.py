"""Unique id prefixes, accepted by every command that takes a workflow id (issue 14).

A unique prefix resolves; an ambiguous one is refused naming the candidates; an unknown
one gets the usual "no workflow" line. The installed executable, a real server.
"""

from __future__ import annotations

import json

import pytest

from tests.support.known import (
    CANCELLED,
    HELLO,
    SIX_SEVEN,
    TOKEN_CAP,
    env_for,
    one_error_line,
    run_many,
    submit_known,
)
from tests.support.platform import InProcessPlatform

COMMANDS = {
    "inspect": ["inspect"],
    "replay": ["replay"],
    "replay --json": ["replay", "--json"],
    "replay --at": ["replay", "--at", "1"],
    "watch": ["watch", "--timeout", "2"],
}
"""Every command that takes a workflow id, with the options that change its reading."""
UNKNOWN = ["inspect", "replay --json", "watch"]
"""An unknown id takes the same path in every command; these cover its three answers."""


@pytest.mark.timeout(300)  # a dozen CLI processes: slow when the machine is loaded
async def test_prefixes_for_every_command(engine: InProcessPlatform) -> None:
    await submit_known(engine)
    env = env_for(engine.settings)

    unique = await run_many([[*args, "cafe0001"] for args in COMMANDS.values()], env)
    for name, result in zip(COMMANDS, unique, strict=True):
        assert result.returncode == 0, (name, result.stdout + result.stderr)
        assert SIX_SEVEN in result.stdout, (name, result.stdout)

    # Two workflows start with cafe000: refused, both named, nothing else done.
    ambiguous = await run_many([[*args, "cafe000"] for args in COMMANDS.values()], env)
    for name, result in zip(COMMANDS, ambiguous, strict=True):
        line = one_error_line(result, "cafe000", SIX_SEVEN, TOKEN_CAP)
        assert "ambiguous" in line, (name, line)
        assert HELLO not in line, (name, line)
        assert result.stdout == "", (name, result.stdout)

    # Nothing starts with dead: the usual line (watch waits for it to start, then gives up).
    unknown = await run_many([[*COMMANDS[name], "dead"] for name in UNKNOWN], env)
    for name, result in zip(UNKNOWN, unknown, strict=True):
        if name == "watch":
            one_error_line(result, "workflow dead did not start")
        else:
            one_error_line(result, "no workflow dead")

    # A whole id is taken as it is, even one that another id could start with.
    (exact,) = await run_many([["inspect", "--json", CANCELLED]], env)
    assert json.loads(exact.stdout)["workflow_id"] == CANCELLED


async def test_the_client_resolves_prefixes(engine: InProcessPlatform) -> None:
    from jetagent.errors import AmbiguousWorkflowIdError, WorkflowNotFoundError

    await submit_known(engine)
    client = engine.client
    assert await client.resolve("cafe0001") == SIX_SEVEN
    assert await client.resolve(HELLO) == HELLO
    with pytest.raises(AmbiguousWorkflowIdError) as ambiguous:
        await client.resolve("cafe000")
    assert ambiguous.value.prefix == "cafe000"
    assert ambiguous.value.candidates == [SIX_SEVEN, TOKEN_CAP]
    with pytest.raises(WorkflowNotFoundError) as unknown:
        await client.resolve("dead")
    assert unknown.value.workflow_id == "dead"
