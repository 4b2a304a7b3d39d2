"""Store reads: one aggregate from an interleaved stream, and the notification log."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from eventsourcing.persistence import ApplicationRecorder
from nats.aio.msg import Msg

from ._fixtures import RawNats, events_of, latency_us, nats_factory, raw_nats, sqlite_factory
from ._harness import Benchmark, Contenders, Env, Round, Target

__all__ = ["notification_read", "one_aggregate_load"]

RAW_ORDERED = "nats-py ordered consumer"
VERSIONS = 100
PAGE = 1000


# ------------------------------------------------------------ one aggregate


def _interleave(recorder: ApplicationRecorder, aggregates: list[uuid.UUID]) -> None:
    """Version 1 of every aggregate, then version 2 of every aggregate, ..."""
    for version in range(1, VERSIONS + 1):
        batch = [e for a in aggregates for e in events_of(a, [version])]
        for i in range(0, len(batch), PAGE):
            recorder.insert_events(batch[i : i + PAGE])


def _load_round(recorder: ApplicationRecorder, aggregates: list[uuid.UUID], reads: int) -> Round:
    cycle = itertools.cycle(aggregates)
    first = recorder.select_events(aggregates[0])
    if len(first) != VERSIONS:
        raise RuntimeError(f"loaded {len(first)} events of an aggregate, wanted {VERSIONS}")

    def run() -> float:
        return latency_us(lambda: recorder.select_events(next(cycle)), reads, warmup=2) / 1000

    return run


def one_aggregate_load(env: Env, *, subject: str, sqlite: str) -> Benchmark:
    count = env.size(200, 50)
    reads = env.size(40, 10)

    @contextmanager
    def contenders(env: Env) -> Iterator[Contenders]:
        aggregates = [uuid.uuid4() for _ in range(count)]
        with nats_factory(env) as nf, sqlite_factory(env) as sf:
            rounds = {}
            for name, factory in ((subject, nf), (sqlite, sf)):
                recorder = factory.application_recorder()
                _interleave(recorder, aggregates)
                rounds[name] = _load_round(recorder, aggregates, reads)
            yield rounds

    return Benchmark(
        name=f"load one {VERSIONS}-event aggregate",
        unit="ms",
        better="lower",
        subject=subject,
        baselines=(sqlite,),
        contenders=contenders,
        target=Target("<", value=5.0),
        note=f"`select_events(originator_id)` of one of {count} aggregates whose events are "
        f"interleaved in a {count * VERSIONS:,}-event stream (version 1 of each, then "
        f"version 2, ...); median of {reads} reads per round.",
    )


# ------------------------------------------------------------ notification log


def _fill(recorder: ApplicationRecorder, total: int) -> None:
    per_batch = PAGE // VERSIONS
    for _ in range(total // PAGE):
        batch = [e for _ in range(per_batch) for e in events_of(uuid.uuid4(), range(1, 101))]
        recorder.insert_events(batch)


def _read_all(recorder: ApplicationRecorder) -> int:
    count, start = 0, 1
    while True:
        page = recorder.select_notifications(start, limit=PAGE)
        count += len(page)
        if len(page) < PAGE:
            return count
        start = page[-1].id + 1


def _page_round(recorder: ApplicationRecorder, total: int) -> Round:
    def run() -> float:
        started = time.perf_counter()
        count = _read_all(recorder)
        elapsed = time.perf_counter() - started
        if count != total:
            raise RuntimeError(f"read {count} notifications, wanted {total}")
        return count / elapsed

    return run


def _ordered_round(raw: RawNats, stream: str, subject: str, total: int) -> Round:
    async def read() -> float:
        done = asyncio.get_running_loop().create_future()
        count = 0

        async def on_msg(msg: Msg) -> None:
            nonlocal count
            count += 1
            if count == total and not done.done():
                done.set_result(None)

        started = time.perf_counter()
        sub = await raw.js.subscribe(subject, stream=stream, ordered_consumer=True, cb=on_msg)
        try:
            await asyncio.wait_for(done, 300)
            return total / (time.perf_counter() - started)
        finally:
            await sub.unsubscribe()

    return lambda: raw.run(read())


def notification_read(env: Env, *, subject: str, sqlite: str) -> Benchmark:
    total = env.size(100_000, 20_000)

    @contextmanager
    def contenders(env: Env) -> Iterator[Contenders]:
        with ExitStack() as stack:
            nf = stack.enter_context(nats_factory(env))
            sf = stack.enter_context(sqlite_factory(env))
            raw = stack.enter_context(raw_nats(env))
            rounds = {}
            for name, factory in ((subject, nf), (sqlite, sf)):
                recorder = factory.application_recorder()
                _fill(recorder, total)
                rounds[name] = _page_round(recorder, total)
            settings = nf.settings
            rounds[RAW_ORDERED] = _ordered_round(raw, settings.stream, f"{settings.root}.>", total)
            yield rounds

    return Benchmark(
        name="notification read",
        unit="notifications/s",
        better="higher",
        subject=subject,
        baselines=(sqlite, RAW_ORDERED),
        contenders=contenders,
        target=Target(">=", value=50_000.0),
        rounds=3,
        note=f"`select_notifications(start, limit={PAGE})` paging through a {total:,}-event "
        f"stream from the start. {RAW_ORDERED}: `js.subscribe(ordered_consumer=True)` with "
        "a counting callback on the same stream (no decoding into notifications).",
    )
