"""Suite ``projections``: rebuild rate, memory with live sessions, ``/metrics`` scrapes.

The histories are written by the real platform (``bench._history``: orchestrator and
worker processes fed by ``jetagent.client.Client``), not synthesised, so what the
projection reads is exactly what a deployment writes; writing the 100,000-event history
takes about half a minute on this machine, once per suite.

- **rebuild**: ``ProjectionService(nc, settings).rebuild()`` in this process (on uvloop,
  with the connection ``jetagent.store.connect`` makes, as ``jetagent projections
  rebuild`` runs it), next to the raw JetStream read of the same streams in the same run.
- **memory**: ``jetagent projections run`` as a process of its own, started from an
  empty checkpoint on a prefix with 10,000 running workflows; its ``VmRSS`` once it
  has caught up, next to the same process on a prefix with no events.
- **/metrics**: GETs against those two processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from jetagent.contract import Status
from jetagent.events import decode_events, decode_step_result
from jetagent.jetstream.provision import provision
from projections.checkpoints import PART_BYTES
from projections.service import ProjectionService

from ._harness import Benchmark, Contenders, Env, Round, Suite, Target
from ._projections_setup import (
    Prefix,
    ProjectionProcess,
    history,
    history_events,
    idle,
    live,
    live_sessions_count,
    loop,
    new_live_settings,
    projection_process,
    write_live_sessions,
)
from ._report import code_state
from ._services import Loop

__all__ = ["SUITE"]

REBUILD = "ProjectionService.rebuild()"
RAW = "ordered consumers, counting"
DECODE = "ordered consumers + decode"
LIVE = "projections run, live sessions"
FOLLOWED = "projections run, following them start"
IDLE = "projections run, 0 sessions"
REBUILD_TARGET = 100_000.0
SETTLE_S = 2.5
"""After catching up, the process is left alone this long before it is measured (its
live gauges refresh every 2 s)."""
SCRAPES = 200


# ------------------------------------------------------------------ rebuild


def _check_rebuild(service: ProjectionService, prefix: Prefix) -> None:
    views = service.views
    if len(views) != prefix.workflows:
        raise RuntimeError(f"rebuild made {len(views)} views of {prefix.workflows} workflows")
    unfinished = [v.workflow_id for v in views.values() if v.status is not Status.FINALIZED]
    if unfinished:
        raise RuntimeError(f"{len(unfinished)} rebuilt views are not finalized")


def _rebuild_round(on: Loop, prefix: Prefix) -> Round:
    def run() -> float:
        service = ProjectionService(on.nc, prefix.settings)
        started = time.perf_counter()
        on.run(service.rebuild())
        elapsed = time.perf_counter() - started
        _check_rebuild(service, prefix)
        return prefix.counts.events / elapsed

    return run


async def _read_streams(on: Loop, prefix: Prefix, *, decode: bool) -> None:
    """Read every message of the prefix's three streams with ordered consumers, as the
    projection does (all three at once), counting them (and decoding, if asked)."""
    names = prefix.settings.names
    streams = {
        names.workflows_stream: names.all_workflows,
        names.steps_stream: names.all_step_results,
        names.dlq_stream: names.all_dead_letters,
    }
    left = prefix.counts.messages
    done = asyncio.Event()
    subs = []

    def callback(stream: str) -> object:
        workflows, steps = names.workflows_stream, names.steps_stream

        async def on_message(msg: Msg) -> None:
            nonlocal left
            if decode:
                if stream == workflows:
                    decode_events(msg.data)
                elif stream == steps:
                    decode_step_result(msg.data)
            left -= 1
            if left <= 0:
                done.set()

        return on_message

    for stream, subject in streams.items():
        subs.append(
            await on.js.subscribe(
                subject,
                stream=stream,
                ordered_consumer=True,
                cb=callback(stream),  # type: ignore[arg-type]
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
        )
    try:
        await asyncio.wait_for(done.wait(), 300)
    finally:
        for sub in subs:
            await sub.unsubscribe()


def _read_round(on: Loop, prefix: Prefix, *, decode: bool) -> Round:
    def run() -> float:
        started = time.perf_counter()
        on.run(_read_streams(on, prefix, decode=decode))
        return prefix.counts.events / (time.perf_counter() - started)

    return run


@contextlib.contextmanager
def _rebuild_contenders(env: Env) -> Iterator[Contenders]:
    on, prefix = loop(env), history(env)
    yield {
        REBUILD: _rebuild_round(on, prefix),
        RAW: _read_round(on, prefix, decode=False),
        DECODE: _read_round(on, prefix, decode=True),
    }


# ------------------------------------------------------------------- memory


@dataclass
class _Observed:
    """What rounds saw that a median cannot show, for the appendix."""

    caught_up_s: list[float] = field(default_factory=list)
    checkpoint_bytes: int = 0
    idle_rss: list[float] = field(default_factory=list)
    live_rss: list[float] = field(default_factory=list)
    followed_rss: list[float] = field(default_factory=list)
    scrape_body: bytes = b""
    idle_body: bytes = b""


@contextlib.contextmanager
def _observed_cm() -> Iterator[_Observed]:
    yield _Observed()


def _observed(env: Env) -> _Observed:
    return env.shared("projections:observed", _observed_cm)


def _memory_round(env: Env, prefix: Prefix, name: str) -> Round:
    observed = _observed(env)

    def run() -> float:
        with projection_process(env, prefix.settings, name) as process:
            time.sleep(SETTLE_S)
            rss = process.rss_mib()
            if prefix.workflows:
                observed.caught_up_s.append(process.caught_up_s)
                observed.checkpoint_bytes = process.checkpoint_bytes
                observed.live_rss.append(rss)
            else:
                observed.idle_rss.append(rss)
        return rss

    return run


@contextlib.contextmanager
def _memory_contenders(env: Env) -> Iterator[Contenders]:
    yield {
        LIVE: _memory_round(env, live(env), "projections-live"),
        IDLE: _memory_round(env, idle(env), "projections-idle"),
    }


def _followed_round(env: Env) -> Round:
    observed = _observed(env)

    def run() -> float:
        settings = new_live_settings(env)
        on = loop(env)
        on.run(provision(on.nc, settings))
        with projection_process(env, settings, "projections-follow") as process:
            write_live_sessions(env, settings)
            process.wait_caught_up()
            time.sleep(SETTLE_S)
            rss = process.rss_mib()
        observed.followed_rss.append(rss)
        return rss

    return run


@contextlib.contextmanager
def _followed_contenders(env: Env) -> Iterator[Contenders]:
    yield {
        FOLLOWED: _followed_round(env),
        IDLE: _memory_round(env, idle(env), "projections-idle"),
    }


# ------------------------------------------------------------------ /metrics


@dataclass(frozen=True)
class _Pair:
    live: ProjectionProcess
    idle: ProjectionProcess


@contextlib.contextmanager
def _pair_cm(env: Env) -> Iterator[_Pair]:
    with (
        projection_process(env, live(env).settings, "projections-scrape-live") as live_process,
        projection_process(env, idle(env).settings, "projections-scrape-idle") as idle_process,
    ):
        time.sleep(SETTLE_S)
        observed = _observed(env)
        observed.scrape_body = live_process.scrape()
        observed.idle_body = idle_process.scrape()
        yield _Pair(live=live_process, idle=idle_process)


def _pair(env: Env) -> _Pair:
    return env.shared("projections:scrape", lambda: _pair_cm(env))


def _scrape_round(process: ProjectionProcess, n: int) -> Round:
    def run() -> float:
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            process.scrape()
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)

    return run


def _size_round(process: ProjectionProcess) -> Round:
    def run() -> float:
        return float(len(process.scrape()))

    return run


@contextlib.contextmanager
def _scrape_contenders(env: Env) -> Iterator[Contenders]:
    pair = _pair(env)
    n = env.size(SCRAPES, 20)
    yield {LIVE: _scrape_round(pair.live, n), IDLE: _scrape_round(pair.idle, n)}


@contextlib.contextmanager
def _size_contenders(env: Env) -> Iterator[Contenders]:
    pair = _pair(env)
    yield {LIVE: _size_round(pair.live), IDLE: _size_round(pair.idle)}


# ----------------------------------------------------------------- appendix


def _samples(body: bytes) -> int:
    return sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))


def _appendix(env: Env) -> str:
    h, lv = history(env), live(env)
    c = h.counts
    observed = _observed(env)
    lines = [
        "### What was measured on",
        "",
        code_state("projections", "platform", "capabilities"),
        "",
        f"- **History** (rebuild): {h.workflows:,} finished workflows written by the "
        f"platform in {h.seconds:.0f} s: **{c.events:,} events** in {c.messages:,} "
        f"messages — `JA_WORKFLOWS` {c.workflow_messages:,} messages holding "
        f"{c.workflow_events:,} events (one decision per message), `JA_STEPS` "
        f"{c.step_results:,} `StepResult`s, `JA_DLQ` {c.dead_letters}; "
        f"{c.payload_bytes / 2**20:.1f} MiB of message bodies, a reasoning "
        f"`StepScheduled` message {c.reasoning_scheduled_bytes:,} bytes (median).",
        f"- **Live sessions** (memory, /metrics): {lv.workflows:,} running workflows "
        f"written in {lv.seconds:.0f} s: {lv.counts.events:,} events in "
        f"{lv.counts.messages:,} messages; each session has its first reasoning step "
        "completed (usage and cost recorded) and its calculator step scheduled.",
    ]
    if observed.caught_up_s:
        caught = statistics.median(observed.caught_up_s)
        lines.append(
            f"- `jetagent projections run` from an empty checkpoint took {caught:.1f} s "
            f"(median of {len(observed.caught_up_s)}) from its start to a checkpoint at "
            f"the end of the live prefix's streams: {lv.counts.events / caught:,.0f} "
            "events/s, start-up included."
        )
    if observed.checkpoint_bytes:
        size = observed.checkpoint_bytes
        per = size / max(lv.workflows, 1)
        lines.append(
            f"- The service's checkpoint (stream positions and every metric total, "
            f"including each running workflow's tenant and open steps) was {size:,} bytes "
            f"with {lv.workflows:,} live sessions, {per:.0f} bytes per session, rewritten "
            f"at every checkpoint (each second while events arrive); above "
            f"{PART_BYTES // 1024} KiB it is written in parts (`projections/checkpoints.py`)."
        )
    if observed.idle_rss:
        idle_rss = statistics.median(observed.idle_rss)
        for label, values in (
            ("caught up from an empty checkpoint", observed.live_rss),
            ("following them as they started", observed.followed_rss),
        ):
            if values:
                per = (statistics.median(values) - idle_rss) * 1024 / max(lv.workflows, 1)
                lines.append(
                    f"- RSS per live session, {label}: {per:.1f} KiB "
                    "((RSS with them - RSS idle) / sessions)."
                )
    if observed.scrape_body:
        body = observed.scrape_body
        lines.append(
            f"- `/metrics` with the live sessions: {len(body):,} bytes, {_samples(body):,} "
            f"samples; gzip-compressed (as Prometheus asks for it) "
            f"{len(gzip.compress(body)):,} bytes. Idle: {len(observed.idle_body):,} bytes, "
            f"{_samples(observed.idle_body)} samples."
        )
    return "\n".join(lines)


# -------------------------------------------------------------------- suite


def _benchmarks(env: Env) -> list[Benchmark]:
    events = history_events(env)
    sessions = live_sessions_count(env)
    return [
        Benchmark(
            name=f"rebuild, {events // 1000}k-event history",
            unit="events/s",
            better="higher",
            subject=REBUILD,
            baselines=(RAW, DECODE),
            contenders=_rebuild_contenders,
            target=Target(">=", value=REBUILD_TARGET),
            note="**events**/s, not messages/s: every contender's rate is the history's "
            "events (each event of a multi-event `JA_WORKFLOWS` message counted, plus each "
            "`StepResult`) over its wall time; the messages are listed in the appendix. "
            f"{REBUILD}: a fresh `ProjectionService` replays the three streams from "
            "sequence 0 into session views and metric totals, writes every view to "
            "`JA_SESSIONS` and its checkpoint (the whole `rebuild()`, provisioning check "
            f"included). {RAW}: one ordered consumer per stream on the same connection, a "
            f"callback counting messages until all have arrived: the read floor. {DECODE}: "
            "the same plus `decode_events` / `decode_step_result` of every message (no "
            "folding).",
        ),
        Benchmark(
            name=f"memory, {sessions // 1000}k live sessions, caught up",
            unit="MiB RSS",
            better="lower",
            subject=LIVE,
            baselines=(IDLE,),
            contenders=_memory_contenders,
            rounds=3,
            words=("smaller", "larger"),
            note="`VmRSS` of a `jetagent projections run` process (a fresh one each round, "
            "started from an empty checkpoint and view bucket) "
            f"{SETTLE_S:g} s after it has caught up with {sessions:,} running workflows; "
            f"{IDLE}: the same command on a prefix with no events, {SETTLE_S:g} s after "
            "`/metrics` first answered.",
        ),
        Benchmark(
            name=f"memory, {sessions // 1000}k live sessions, followed live",
            unit="MiB RSS",
            better="lower",
            subject=FOLLOWED,
            baselines=(IDLE,),
            contenders=_followed_contenders,
            rounds=3,
            words=("smaller", "larger"),
            note="the same measurement, but the process is started first, on a new empty "
            f"prefix, and follows the {sessions:,} workflows as the platform starts them "
            "(about 10 s, as in a deployment), instead of catching up with all of them at "
            "once; a fresh prefix and process each round.",
        ),
        Benchmark(
            name="/metrics scrape",
            unit="ms",
            better="lower",
            subject=LIVE,
            baselines=(IDLE,),
            contenders=_scrape_contenders,
            note=f"median of {env.size(SCRAPES, 20)} sequential `GET /metrics` (httpx, "
            "keep-alive, no compression) per round against the two processes above, "
            "started once and left idle.",
        ),
        Benchmark(
            name="/metrics size",
            unit="bytes",
            better="lower",
            subject=LIVE,
            baselines=(IDLE,),
            contenders=_size_contenders,
            rounds=1,
            words=("smaller", "larger"),
            note="the body of one `GET /metrics` (Prometheus text format, uncompressed).",
        ),
    ]


SUITE = Suite(
    name="projections",
    title="projection rebuild rate, memory with live sessions, /metrics",
    description=(
        "Histories written by the real platform (orchestrator and worker processes fed "
        "by `jetagent.client.Client`, `bench/_history.py`), so the projection reads "
        "exactly what a deployment writes: one decision per `JA_WORKFLOWS` message "
        "(`[StepCompleted, StepScheduled]`, ... under the subject of its last event), "
        "each reasoning `StepScheduled` carrying the conversation so far in "
        "`input.messages` and the tool specs. Each request has an agent system prompt "
        "(~1.2 KB), one earlier exchange and two facts as session context, one of 20 "
        "tenants and one of two offline models, and runs the `engine` suite's 7-step "
        "calculation (reasoning ⇄ calculator) with its own numbers. Synthesising the "
        "events with `jetagent.events` would be quicker, but the platform writes the "
        "100k-event history in about half a minute, and then nothing about its shape, "
        "sizes or timestamps is assumed. The rebuild runs in this process on uvloop "
        "(as the CLI does); the service for memory and `/metrics` runs as "
        "`jetagent projections run` processes."
    ),
    benchmarks=_benchmarks,
    appendix=_appendix,
)
