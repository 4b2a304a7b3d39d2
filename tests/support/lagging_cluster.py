"""A 3-node cluster with a follower that is behind: a real replica that answers stale.

Node 3's replication arrives late. Every route between the nodes goes straight from
node to node, except those into node 3: node 3 advertises a proxy's port as its cluster
address and routes only to that proxy (so it never dials the others itself), and the
proxy holds back by ``delay`` the bytes of the system account's route into node 3.
nats-server 2.10+ pins the system account to a route of its own (its first INFO says
``"route_account":"$SYS"``), and that route carries the Raft traffic: node 3 applies
every stream's writes ``delay`` late. The other routes — client traffic, direct-get
requests, consumer deliveries — stay fast, so node 3 serves direct gets promptly from a
store that is behind, as a replica with a slow disk, or one catching up after a restart,
does (docs/ARCHITECTURE.md §5.8).

Only loopback; every port is free-picked; the stores live in a folder of the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from jetagent.embedded import EmbeddedCluster, EmbeddedServer, free_port

__all__ = ["LaggingCluster"]

_SYSTEM_ROUTE = b'"route_account":"$SYS"'
_LOOPBACK = "127.0.0.1"


@dataclass
class _AdvertisingServer(EmbeddedServer):
    """A cluster member that tells its peers to reach it at another port (the proxy)."""

    advertise_port: int | None = None

    def config_text(self) -> str:
        text = super().config_text()
        if self.advertise_port is None:
            return text
        return text.replace(
            "  routes: [", f'  advertise: "{_LOOPBACK}:{self.advertise_port}"\n  routes: ['
        )


class _Delayed:
    """Writes what it is given to ``writer`` in order, each chunk ``delay`` after it came."""

    def __init__(self, writer: asyncio.StreamWriter, delay: float) -> None:
        self._writer = writer
        self._delay = delay
        self._queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    def put(self, data: bytes | None) -> None:
        self._queue.put_nowait((time.monotonic(), data))

    async def _run(self) -> None:
        try:
            while True:
                at, data = await self._queue.get()
                if data is None:
                    return
                wait = at + self._delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._writer.write(data)
                await self._writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._writer.close()


@dataclass
class LaggingCluster:
    """Three nodes; node 3 (``lagging``) applies replicated writes ``delay`` s late."""

    store_dir: Path
    delay: float = 0.2
    servers: list[EmbeddedServer] = field(default_factory=list, init=False)
    system_routes_delayed: int = field(default=0, init=False)
    """Connections into node 3 that the proxy found to be system-account routes."""
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _server: asyncio.Server | None = field(default=None, init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated."""
        return ",".join(s.url for s in self.servers)

    @property
    def lagging(self) -> EmbeddedServer:
        """The node whose replication arrives late."""
        return self.servers[2]

    def start(self) -> LaggingCluster:
        cluster_ports = [free_port() for _ in range(3)]
        proxy_port = free_port()
        self._start_proxy(proxy_port, cluster_ports[2])
        for i in range(3):
            # Nodes 1 and 2 dial each other and node 3's proxy; node 3 dials only its own
            # proxy (a route to itself, dropped; JetStream needs a configured route).
            routes = [cluster_ports[1 - i], proxy_port] if i < 2 else [proxy_port]
            self.servers.append(
                _AdvertisingServer(
                    store_dir=self.store_dir / f"n{i + 1}",
                    server_name=f"lag-n{i + 1}",
                    cluster_name="lagging",
                    cluster_port=cluster_ports[i],
                    routes=routes,
                    advertise_port=proxy_port if i == 2 else None,
                )
            )
        try:
            for server in self.servers:
                server.start()
            cluster = EmbeddedCluster(self.store_dir)
            cluster.servers = self.servers
            cluster.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_proxy(self, listen: int, target: int) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def serve() -> asyncio.Server:
            return await asyncio.start_server(self._connection(target), _LOOPBACK, listen)

        self._server = loop.run_until_complete(serve())
        self._thread = threading.Thread(target=loop.run_forever, name="lag-proxy", daemon=True)
        self._thread.start()

    def _connection(self, target: int):  # type: ignore[no-untyped-def]
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                node_reader, node_writer = await asyncio.open_connection(_LOOPBACK, target)
            except OSError:
                writer.close()
                return
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await asyncio.gather(
                    self._into_node(reader, node_writer),
                    _copy(node_reader, writer),
                    return_exceptions=True,
                )
            finally:
                self._tasks.discard(task)

        return handle

    async def _into_node(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The dialing peer's bytes into node 3: the handshake at once, then the rest of a
        system-account route ``delay`` late, of any other route at once."""
        head = b""
        delayed: _Delayed | None = None
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if delayed is None:
                    head += data
                    # The dialer's CONNECT and INFO lines say which route this is.
                    if _SYSTEM_ROUTE in head or head.count(b"\r\n") >= 2 or len(head) > 16384:
                        writer.write(head)
                        await writer.drain()
                        system = _SYSTEM_ROUTE in head
                        self.system_routes_delayed += system
                        delayed = _Delayed(writer, self.delay if system else 0.0)
                    continue
                delayed.put(data)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if delayed is not None:
                delayed.put(None)
                with contextlib.suppress(Exception):
                    await delayed.task
            else:
                writer.close()

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        loop = self._loop
        if loop is not None and self._thread is not None:

            async def close() -> None:
                if self._server is not None:
                    self._server.close()
                tasks = list(self._tasks)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(5)
            loop.close()
            self._loop = None

    def __enter__(self) -> LaggingCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
