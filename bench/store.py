"""Suite ``store``: jetagent.store's recorders against the library's SQLite recorders.

Writes are measured here; reads (one aggregate, the notification log) in
``_store_reads``. Every benchmark builds its own streams (and SQLite files), so the
numbers do not depend on what ran before.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from eventsourcing.persistence import (
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
    StoredEvent,
    Tracking,
)

from ._fixtures import (
    PAYLOAD,
    async_latency_us,
    events_of,
    latency_us,
    nats_factory,
    raw_nats,
    sqlite_factory,
    watch_store_loop,
)
from ._harness import Benchmark, Contenders, Env, Round, Suite, Target
from ._store_reads import notification_read, one_aggregate_load

__all__ = ["SUITE"]

SUBJECT = "jetagent.store"
SQLITE = "SQLite (file)"
RAW_PUBLISH = "nats-py js.publish"

AnyFactory = InfrastructureFactory[Any]
Factories = Callable[[Env], AbstractContextManager[AnyFactory]]
_FACTORIES: dict[str, Factories] = {SUBJECT: nats_factory, SQLITE: sqlite_factory}


def _app_recorder(factory: AnyFactory) -> ApplicationRecorder:
    return factory.application_recorder()


def _process_recorder(factory: AnyFactory) -> ProcessRecorder:
    return factory.process_recorder()


def _latency_round(
    env: Env,
    make_factory: Factories,
    workload: Callable[[ApplicationRecorder], Callable[[], object]],
    *,
    n: int,
    recorder: Callable[[AnyFactory], ApplicationRecorder] = _app_recorder,
) -> Round:
    """A round: a fresh store, then the median latency (µs) of ``n`` calls of ``workload``."""

    def run() -> float:
        with make_factory(env) as factory:
            op = workload(recorder(factory))
            return latency_us(op, n)

    return run


# ----------------------------------------------------------- single-event insert


def _single_insert(recorder: ApplicationRecorder) -> Callable[[], object]:
    def op() -> object:
        return recorder.insert_events(events_of(uuid.uuid4(), [1]))

    return op


@contextmanager
def _single_contenders(env: Env) -> Iterator[Contenders]:
    n = env.size(400, 50)
    with raw_nats(env) as raw:

        def raw_round() -> float:
            _, root = raw.add_stream()
            js = raw.js

            async def op() -> object:
                return await js.publish(f"{root}.e.{uuid.uuid4()}", PAYLOAD)

            return raw.run(async_latency_us(op, n))

        yield {
            **{
                name: _latency_round(env, make, _single_insert, n=n)
                for name, make in _FACTORIES.items()
            },
            RAW_PUBLISH: raw_round,
        }


# ------------------------------------------------------------- 50-event batch


def _batch_insert(recorder: ApplicationRecorder) -> Callable[[], object]:
    versions = range(1, 51)

    def op() -> object:
        return recorder.insert_events(events_of(uuid.uuid4(), versions))

    return op


@contextmanager
def _batch_contenders(env: Env) -> Iterator[Contenders]:
    n = env.size(60, 10)
    yield {name: _latency_round(env, make, _batch_insert, n=n) for name, make in _FACTORIES.items()}


# ------------------------------------------------------- concurrent insert rate

THREADS = 4
EVENTS_PER_JOB = 50


def _concurrent_round(env: Env, make_factory: Factories, jobs: int) -> Round:
    """Like the library's ``test_concurrent_throughput``: 4 threads, 50-event batches."""

    def run() -> float:
        with make_factory(env) as factory, ThreadPoolExecutor(THREADS) as pool:
            recorder = factory.application_recorder()
            batches = [events_of(uuid.uuid4(), range(EVENTS_PER_JOB)) for _ in range(jobs)]
            warmup = [events_of(uuid.uuid4(), range(EVENTS_PER_JOB)) for _ in range(THREADS)]
            _all(pool, recorder, warmup)
            started = time.perf_counter()
            _all(pool, recorder, batches)
            elapsed = time.perf_counter() - started
        return jobs * EVENTS_PER_JOB / elapsed

    return run


def _all(
    pool: ThreadPoolExecutor, recorder: ApplicationRecorder, batches: Sequence[list[StoredEvent]]
) -> None:
    for future in [pool.submit(recorder.insert_events, batch) for batch in batches]:
        future.result()


@contextmanager
def _concurrent_contenders(env: Env) -> Iterator[Contenders]:
    jobs = env.size(160, 12)
    yield {name: _concurrent_round(env, make, jobs) for name, make in _FACTORIES.items()}


# ---------------------------------------------------------- insert with tracking


def _tracked_insert(recorder: ApplicationRecorder) -> Callable[[], object]:
    assert isinstance(recorder, ProcessRecorder)
    upstream = iter(range(1, 1_000_000))

    def op() -> object:
        return recorder.insert_events(
            events_of(uuid.uuid4(), [1]), tracking=Tracking("upstream", next(upstream))
        )

    return op


@contextmanager
def _tracking_contenders(env: Env) -> Iterator[Contenders]:
    n = env.size(300, 40)
    yield {
        name: _latency_round(env, make, _tracked_insert, n=n, recorder=_process_recorder)
        for name, make in _FACTORIES.items()
    }


def _benchmarks(env: Env) -> list[Benchmark]:
    watch_store_loop()
    return [
        Benchmark(
            name="single-event insert",
            unit="µs",
            better="lower",
            subject=SUBJECT,
            baselines=(SQLITE, RAW_PUBLISH),
            contenders=_single_contenders,
            target=Target("<", baseline=SQLITE),
            note=f"`insert_events([one event])`, a new aggregate each call; median of "
            f"{env.size(400, 50)} calls per round, a fresh stream / database per round. "
            f"{RAW_PUBLISH}: `await js.publish` of the same 300-byte payload, timed inside "
            "its own event loop (no thread hop, no concurrency check): the client's floor.",
        ),
        Benchmark(
            name="50-event batch insert",
            unit="µs",
            better="lower",
            subject=SUBJECT,
            baselines=(SQLITE,),
            contenders=_batch_contenders,
            note="`insert_events` of versions 1..50 of a new aggregate (one atomic batch); "
            f"median of {env.size(60, 10)} calls per round.",
        ),
        Benchmark(
            name="concurrent insert, 4 threads",
            unit="events/s",
            better="higher",
            subject=SUBJECT,
            baselines=(SQLITE,),
            contenders=_concurrent_contenders,
            target=Target(">=", baseline=SQLITE),
            note=f"as the library's `test_concurrent_throughput`: {env.size(160, 12)} jobs of "
            f"{EVENTS_PER_JOB}-event batches on {THREADS} threads sharing one recorder, "
            "after a warm-up job per thread.",
        ),
        Benchmark(
            name="insert with tracking",
            unit="µs",
            better="lower",
            subject=SUBJECT,
            baselines=(SQLITE,),
            contenders=_tracking_contenders,
            target=Target("<", value=500.0),
            note="process recorder: one event + `Tracking('upstream', n)`, n increasing; "
            f"median of {env.size(300, 40)} calls per round.",
        ),
        one_aggregate_load(env, subject=SUBJECT, sqlite=SQLITE),
        notification_read(env, subject=SUBJECT, sqlite=SQLITE),
    ]


SUITE = Suite(
    name="store",
    title="event store (jetagent.store) vs the library's SQLite recorders",
    description=(
        "The eventsourcing recorder API of `jetagent.store` (sync recorders over its "
        "private event-loop thread) on a local nats-server (file storage, default "
        "`sync_interval`), next to `eventsourcing.sqlite` on a temp file (WAL mode, as "
        "the library sets it) and, where it helps, plain nats-py on the same server."
    ),
    benchmarks=_benchmarks,
)
