"""The ``scaling`` suite's parts: one platform per size, and what a round at it costs.

A :class:`Point` is the platform as deployed at one number of concurrent workflows: an
orchestrator, a ``worker reasoning`` and a ``worker tools`` process, and ``projections
run`` (each its own process, so each one's memory is its own), on a prefix of its own of
the suite's nats-server, started fresh for that size. A round submits that many
workflows at once (a window of submits in flight, none waiting for another workflow to
end) and waits for every one to end, within a bound: a size the platform cannot serve in
time is recorded as such, never skipped. Meanwhile a thread samples each process's
resident memory (``VmRSS`` from /proc); afterwards each step's timeline is read back from
the streams, the CPU each process used is read from /proc, and the time until the
projection service's checkpoint reaches the streams' ends is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from nats.errors import Error as NatsError

from jetagent.embedded import free_port
from projections.checkpoints import CheckpointError, CheckpointStore
from projections.service import CHECKPOINT_KEY, Checkpoint

from ._engine_baselines import LoopRun
from ._engine_platform import EnginePlatform, RoundTimeout, Workload, engine_platform, percentile
from ._profile import process_cpu
from ._services import rss_kib

__all__ = [
    "PROCESSES",
    "WORKLOAD",
    "Point",
    "PointRound",
    "RssSampler",
    "open_point",
]

WORKLOAD = Workload(instruction="What is 3 * 4?", answer="Final answer: 12", steps=3)
"""reasoning → calculator → reasoning: the smallest offline workflow that has both
workers do work (a workflow without a tool call is one reasoning step)."""
PROCESSES = ("orchestrator", "worker reasoning", "worker tools", "projections", "nats-server")
"""The processes whose memory is reported, in report order."""
_SERVICE_NAMES = {
    "orchestrator-1": "orchestrator",
    "worker-reasoning-1": "worker reasoning",
    "worker-tools-1": "worker tools",
    "projections": "projections",
}
SUBMIT_WINDOW = 256
"""Submits in flight at once: every workflow is submitted without waiting for any to end."""


class RssSampler:
    """Peak resident memory (MiB) of some processes while it runs (a thread, 10 Hz)."""

    def __init__(self, pids: Mapping[str, int], interval: float = 0.1) -> None:
        self.pids = dict(pids)
        self.peaks: dict[str, float] = {}
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def sample(self) -> dict[str, float]:
        """Each process's resident memory now (MiB); a process gone is left out."""
        now = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError, RuntimeError):
                now[name] = rss_kib(pid) / 1024
        return now

    def _run(self) -> None:
        while True:
            for name, mib in self.sample().items():
                self.peaks[name] = max(self.peaks.get(name, 0.0), mib)
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class PointRound:
    """One round at one size."""

    workflows: int
    finished: bool
    """Every workflow ended within the bound."""
    ended: int
    steps: int
    wall_s: float
    p50_ms: float
    p99_ms: float
    peak_mib: dict[str, float]
    """Peak resident memory during the round, by process (:data:`PROCESSES`)."""
    cpu_s: dict[str, float]
    """CPU seconds each process used in the round."""
    projections_lag_s: float | None
    """The last workflow ended → the projections' checkpoint at the streams' ends."""

    @property
    def rate(self) -> float:
        return self.steps / self.wall_s if self.wall_s else 0.0


@dataclass
class Point:
    """The platform at one size, and its rounds."""

    workflows: int
    platform: EnginePlatform
    server_pid: int | None
    bound_s: float
    idle_mib: dict[str, float] = field(default_factory=dict)
    """Resident memory after start-up and a warm-up, before the first round."""
    rounds: list[PointRound] = field(default_factory=list)
    bare: list[LoopRun] = field(default_factory=list)
    opened_at: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    """Wall time at this size: start-up, warm-up, every round of every contender."""

    @property
    def pids(self) -> dict[str, int]:
        pids = {
            _SERVICE_NAMES[name]: pid
            for name, pid in self.platform.pids.items()
            if name in _SERVICE_NAMES
        }
        if self.server_pid is not None:
            pids["nats-server"] = self.server_pid
        return pids

    def run(self) -> PointRound:
        """One round: every workflow at once, within :attr:`bound_s`."""
        n = self.workflows
        cpu_before = self._cpu()
        with RssSampler(self.pids) as sampler:
            try:
                run = self.platform.concurrent(
                    n, timeout=self.bound_s, window=SUBMIT_WINDOW, timed=True
                )
                finished, ended, steps, wall = True, n, run.steps, run.wall
                totals = [t.total_ms for t in run.timings]
            except RoundTimeout as late:
                finished, ended, steps, wall = False, late.ended, late.steps, self.bound_s
                totals = []
        lag = self.projections_lag() if finished else None
        cpu_after = self._cpu()
        result = PointRound(
            workflows=n,
            finished=finished,
            ended=ended,
            steps=steps,
            wall_s=wall,
            p50_ms=percentile(totals, 0.5) if totals else math.nan,
            p99_ms=percentile(totals, 0.99) if totals else math.nan,
            peak_mib=dict(sampler.peaks),
            cpu_s={k: cpu_after[k] - cpu_before[k] for k in cpu_after if k in cpu_before},
            projections_lag_s=lag,
        )
        self.rounds.append(result)
        return result

    def _cpu(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            used = process_cpu(pid)
            if used is not None:
                out[name] = used
        return out

    def projections_lag(self, timeout: float = 120.0) -> float | None:
        """Seconds until the projections' checkpoint reaches the streams' ends
        (``None``: not within ``timeout``)."""
        return self.platform.run(_caught_up(self.platform, timeout))


async def _caught_up(platform: EnginePlatform, timeout: float) -> float | None:
    assert platform.client is not None
    js, names = platform.client.js, platform.names
    started = time.monotonic()
    targets = {}
    for stream in (names.workflows_stream, names.steps_stream):
        targets[stream] = (await js.stream_info(stream)).state.last_seq
    kv = await js.key_value(names.bucket("PROJECTIONS"))
    while time.monotonic() - started < timeout:
        with contextlib.suppress(NatsError, CheckpointError):
            value = await CheckpointStore(kv, CHECKPOINT_KEY).load()
            if value:
                positions = msgspec.json.decode(value, type=Checkpoint).positions
                if all(positions.get(s, 0) >= seq for s, seq in targets.items()):
                    return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


@contextlib.contextmanager
def open_point(
    url: str,
    log_dir: Path,
    workflows: int,
    *,
    server_pid: int | None,
    bound_s: float,
) -> Iterator[Point]:
    """A fresh platform for ``workflows`` concurrent workflows, warmed up; stopped on exit."""
    prefix = f"s{workflows}x{uuid.uuid4().hex[:6]}"
    with engine_platform(
        url,
        prefix,
        log_dir,
        warm_up=3,
        workload=WORKLOAD,
        worker_groups=(("reasoning",), ("tools",)),
    ) as platform:
        port = str(free_port())
        platform.services.start(
            "projections", "projections", "run", env={"JETAGENT_METRICS_PORT": port}
        )
        platform.concurrent(min(workflows, 50), timeout=120, window=SUBMIT_WINDOW)
        point = Point(
            workflows=workflows, platform=platform, server_pid=server_pid, bound_s=bound_s
        )
        point.projections_lag()  # started and caught up before anything is measured
        point.idle_mib = RssSampler(point.pids).sample()
        try:
            yield point
        finally:
            point.seconds = time.monotonic() - point.opened_at
