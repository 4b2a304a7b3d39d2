"""pytest fixtures on real nats-servers: add ``pytest_plugins = ["jetagent.testing.pytest_plugin"]``
to your top-level ``conftest.py``.

==================  ========  ===================================================
fixture             scope     what it gives
==================  ========  ===================================================
``nats_server``     session   an :class:`~jetagent.embedded.EmbeddedServer` shared
                              by the session's tests (keep apart with ``unique``)
``nats_url``        test      its ``nats://`` URL
``fresh_server``    test      a server of the test's own, to stop, kill or restart
``nats_cluster``    test      a 3-node :class:`~jetagent.embedded.EmbeddedCluster`
``unique``          test      a name no other test uses (:func:`unique_name`)
``jetstream``       test      a :class:`NatsConnection` (``nc``, ``js``) to
                              ``nats_server`` (async; needs ``pytest-asyncio``)
==================  ========  ===================================================

Every server listens on a free loopback port and keeps its store under pytest's
``tmp_path``. This is the only module of :mod:`jetagent.testing` that imports pytest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jetagent.embedded import EmbeddedCluster, EmbeddedServer
from jetagent.testing._server import NatsConnection, connect_jetstream, unique_name

try:  # async fixtures need pytest-asyncio's decorator in its strict mode
    import pytest_asyncio

    _async_fixture = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - without pytest-asyncio there is no async test
    _async_fixture = pytest.fixture  # type: ignore[assignment]

__all__ = ["fresh_server", "jetstream", "nats_cluster", "nats_server", "nats_url", "unique"]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One JetStream server for the session; tests keep apart by unique names."""
    with EmbeddedServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def nats_url(nats_server: EmbeddedServer) -> str:
    """The session server's ``nats://`` URL."""
    return nats_server.url


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server of this test's own, for tests that stop, kill or restart it."""
    with EmbeddedServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """A 3-node JetStream cluster on loopback."""
    with EmbeddedCluster(tmp_path / "cluster") as running:
        yield running


@pytest.fixture
def unique() -> str:
    """A short unique name for streams, subjects and consumers of one test."""
    return unique_name()


@_async_fixture
async def jetstream(nats_url: str) -> AsyncIterator[NatsConnection]:
    """A client connected to the session server, and its JetStream context."""
    async with connect_jetstream(nats_url) as connection:
        yield connection
