"""What the store benchmarks build on: recorders on fresh streams and SQLite files,
a raw nats-py connection, stored events, and timing loops.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import nats
from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteFactory
from eventsourcing.utils import Environment
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig

from jetagent.jetstream._loop import shared_loop
from jetagent.store import NatsFactory

from ._harness import Env
from ._profile import watch_loop
from ._services import Loop

__all__ = [
    "PAYLOAD",
    "TOPIC",
    "RawNats",
    "events_of",
    "latency_us",
    "nats_factory",
    "raw_nats",
    "sqlite_factory",
    "watch_store_loop",
]


TOPIC = "bench.store:Order.Placed"
PAYLOAD = (
    b'{"customer":"c-1042","sku":"SKU-88172","quantity":3,"unit_price":"19.99",'
    b'"currency":"EUR","placed_at":"2025-11-25T15:47:12.123456+00:00",'
    b'"channel":"web","note":"leave at the door","lines":[{"sku":"SKU-88172","qty":3},'
    b'{"sku":"SKU-1009","qty":1}],"tags":["gift","priority"],"version":1}'
)
"""A realistic ~300-byte event state."""


def events_of(
    originator_id: uuid.UUID, versions: Sequence[int], state: bytes = PAYLOAD
) -> list[StoredEvent]:
    """Stored events of one aggregate with the given versions."""
    return [
        StoredEvent(originator_id=originator_id, originator_version=v, topic=TOPIC, state=state)
        for v in versions
    ]


def new_stream() -> str:
    return "BENCH_" + uuid.uuid4().hex[:12]


def watch_store_loop() -> None:
    """Start the sync store's event-loop thread now and have cProfile follow it.

    The store does its work on that thread; it must be watched before a profiled
    round starts, and the first factory would start it only inside the round.
    """
    watch_loop(shared_loop().loop)


@contextmanager
def nats_factory(env: Env) -> Iterator[NatsFactory]:
    """A jetagent.store factory on a fresh stream of the suite's server."""
    factory = NatsFactory(
        Environment(name="Bench", env={"NATS_URL": env.nats_url, "NATS_STREAM": new_stream()})
    )
    # cProfile must follow the store's work onto its event-loop thread.
    watch_loop(factory.loop.loop)
    try:
        yield factory
    finally:
        factory.close()


@contextmanager
def sqlite_factory(env: Env) -> Iterator[SQLiteFactory]:
    """The eventsourcing library's SQLite factory on a fresh temp file (WAL, as it sets)."""
    path = env.path("events.db")
    factory = SQLiteFactory(Environment(name="Bench", env={"SQLITE_DBNAME": f"file:{path}"}))
    try:
        yield factory
    finally:
        factory.close()


async def _plain_connect(url: str, name: str) -> NATS:
    return await nats.connect(url, name=name)


class RawNats(Loop):
    """A plain nats-py connection on a plain asyncio event loop that this object owns.

    Its coroutines run on the calling thread (``run``), with no thread hop: the floor
    that any store built on nats-py pays.
    """

    def __init__(self, url: str) -> None:
        super().__init__(
            url, "bench-raw", loop_factory=asyncio.new_event_loop, connector=_plain_connect
        )

    def add_stream(self) -> tuple[str, str]:
        """A fresh file-backed stream like the store's; returns ``(name, subject root)``."""
        name = new_stream()
        root = name.lower()
        config = StreamConfig(
            name=name,
            subjects=[f"{root}.>"],
            storage=StorageType.FILE,
            duplicate_window=120.0,
            allow_direct=True,
        )
        self.run(self.js.add_stream(config))
        return name, root


@contextmanager
def raw_nats(env: Env) -> Iterator[RawNats]:
    raw = RawNats(env.nats_url)
    try:
        yield raw
    finally:
        raw.close()


def latency_us(op: Callable[[], object], n: int, *, warmup: int = 10) -> float:
    """Median wall time of ``op`` in µs over ``n`` calls (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        op()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        op()
        samples.append(clock() - t0)
    return statistics.median(samples) / 1000


async def async_latency_us(
    op: Callable[[], Coroutine[Any, Any, object]], n: int, *, warmup: int = 10
) -> float:
    """:func:`latency_us` for a coroutine function, timed inside the event loop."""
    for _ in range(warmup):
        await op()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        await op()
        samples.append(clock() - t0)
    return statistics.median(samples) / 1000
