"""The client's edge: nats-py and pydantic errors arrive as ``JetagentError`` (issue 9)."""

from __future__ import annotations

import pytest

from jetagent import Client, JetagentError
from jetagent.config import Settings
from jetagent.embedded import free_port
from jetagent.errors import (
    ConfigError,
    InvalidRequestError,
    NotProvisionedError,
    UnavailableError,
    WorkflowTimeoutError,
)
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
