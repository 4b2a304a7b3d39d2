"""The client's edge: nats-py and pydantic errors arrive as ``JetagentError`` (issue 9)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from jetagent import Client, JetagentError
from jetagent.config import Settings
from jetagent.embedded import EmbeddedServer, free_port
from jetagent.errors import (
    ConfigError,
    InvalidRequestError,
    NotProvisionedError,
    UnavailableError,
    WorkflowTimeoutError,
)
from jetagent.jetstream.provision import provision
from tests.support.platform import InProcessPlatform


@pytest.mark.parametrize("url", ["http://127.0.0.1:4222", "garbage", "nats://", ""])
async def test_a_url_that_is_not_a_nats_url(url: str) -> None:
    with pytest.raises(ConfigError):
        await Client.connect(url or " ", settings=Settings(nats_url=""))


async def test_no_server() -> None:
    with pytest.raises(UnavailableError, match="cannot connect to NATS"):
        await Client.connect(f"nats://127.0.0.1:{free_port()}")


async def test_an_unprovisioned_prefix(settings: Settings) -> None:
    client = await Client.connect(settings=settings)
    try:
        with pytest.raises(NotProvisionedError, match="jetagent provision"):
            await client.submit(instruction="hi")
        with pytest.raises(NotProvisionedError):
            await client.events("anything")
        with pytest.raises(NotProvisionedError):
            await client.session("anything")
    finally:
        await client.close()


async def test_invalid_requests_and_timeouts(engine: InProcessPlatform) -> None:
    client = engine.client
    with pytest.raises(InvalidRequestError, match="instruction") as info:
        await client.submit(instruction="")
    assert isinstance(info.value, ValueError)  # what callers caught before
    with pytest.raises(WorkflowTimeoutError) as waited:
        await client.result("never-submitted", timeout=0.5)
    assert isinstance(waited.value, TimeoutError)
    assert isinstance(waited.value, JetagentError)


async def _first(stream: AsyncIterator[object]) -> object:
    async for item in stream:
        return item
    return None


def _calls(client: Client, wid: str) -> dict[str, Callable[[], Awaitable[object]]]:
    """Every public method of the client, on one workflow id."""
    return {
        "submit": lambda: client.submit(instruction="hi", tenant="acme"),
        "cancel": lambda: client.cancel(wid),
        "signal": lambda: client.signal(wid, "approval", {}),
        "approve": lambda: client.approve(wid, "1"),
        "result": lambda: client.result(wid, timeout=20),
        "events": lambda: client.events(wid),
        "step_results": lambda: client.step_results(wid),
        "session": lambda: client.session(wid),
        "fold_session": lambda: client.fold_session(wid),
        "watch": lambda: _first(client.watch(wid)),
        "stream": lambda: _first(client.stream(wid)),
    }


async def _raised(calls: dict[str, Callable[[], Awaitable[object]]]) -> dict[str, str]:
    """What each call raised (by class), run at once; a call that returns is a failure."""
    outcomes = await asyncio.gather(
        *(asyncio.wait_for(call(), 60) for call in calls.values()), return_exceptions=True
    )
    return {
        name: f"{type(out).__module__}.{type(out).__name__}"
        for name, out in zip(calls, outcomes, strict=True)
    }


async def test_a_closed_connection_is_a_jetagent_error(engine: InProcessPlatform) -> None:
    client = await Client.connect(settings=engine.settings)
    wid = await client.submit(instruction="What is 6 * 7?", tenant="acme")
    await client.nc.close()  # closed under the client (a drain, a revoked user, ...)
    raised = await _raised(_calls(client, wid))
    assert {n: k for n, k in raised.items() if not k.startswith("jetagent.")} == {}
    await client.close()


async def test_ids_that_cannot_be_subject_tokens_are_invalid_requests(
    engine: InProcessPlatform,
) -> None:
    # A workflow id goes into subjects and keys: a wildcard or a space there is the
    # caller's mistake, not an unreachable server (nor a subscription to every workflow).
    for bad in ["a b", "a.>", "*", ""]:
        calls = _calls(engine.client, bad)
        del calls["submit"]
        raised = await _raised(calls)
        wrong = {n: k for n, k in raised.items() if k != "jetagent.errors.InvalidRequestError"}
        assert wrong == {}, bad
    with pytest.raises(InvalidRequestError):
        await engine.client.signal("w1", "not a token")


async def test_a_server_stopped_mid_use_is_a_jetagent_error(
    fresh_server: EmbeddedServer, unique: str
) -> None:
    settings = Settings(nats_url=fresh_server.url, prefix=unique.lower()[:12], tenants="*")
    client = await Client.connect(settings=settings)
    try:
        await provision(client.nc, settings)
        wid = await client.submit(instruction="What is 6 * 7?", tenant="acme")
        await client.events(wid)
        fresh_server.stop()
        raised = await _raised(_calls(client, wid))
        assert {n: k for n, k in raised.items() if not k.startswith("jetagent.")} == {}
    finally:
        await client.close()
