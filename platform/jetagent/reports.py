"""What running services say about themselves, for ``jetagent status`` and ``list``.

Each report is a small KV value its service rewrites every few seconds (README "Command
line"):

- ``worker.<capability>.<worker>`` in ``JA_REGISTRY``: a worker serving a capability —
  its consumer and concurrency, the jetagent version, host and pid. Deleted when the
  worker stops; a worker that died leaves a report that stops being refreshed.
- ``status.<capability>.<worker>`` in ``JA_REGISTRY``: what a capability reports of
  itself (circuit breakers, the dedicated tools a pool serves — read by the tool
  registry too), with the same version, host and pid.
- ``status`` in ``JA_PROJECTIONS``: the projection service — the stream positions of its
  last checkpoint (what the session views hold), version, host, pid; marked stopped
  when it stops.

A report is current while it is younger than :data:`FRESH_S` by the reader's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from jetagent.jetstream import DirectGetter
from jetagent.subjects import Names

__all__ = [
    "FRESH_S",
    "PROJECTION_KEY",
    "REPORT_EVERY_S",
    "ProjectionReport",
    "ProjectionStatus",
    "WorkerReport",
    "age",
    "identity",
    "jetagent_version",
    "keep_reporting",
    "projection_status",
    "read_projection_report",
    "read_reports",
    "worker_key",
]

log = logging.getLogger("jetagent.reports")

REPORT_EVERY_S = 5.0
"""How often a service rewrites its report."""
FRESH_S = 20.0
"""A report older than this is a service that stopped reporting (four missed reports)."""
PROJECTION_KEY = "status"
"""The projection service's report in ``JA_PROJECTIONS`` (its checkpoint is ``projection``)."""


@cache
def jetagent_version() -> str:
    """The installed jetagent's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jetagent")
    except PackageNotFoundError:
        return "unknown"


def identity() -> dict[str, Any]:
    """What every report carries: the jetagent version, host and pid of its process."""
    return {"version": jetagent_version(), "host": socket.gethostname(), "pid": os.getpid()}


def worker_key(capability: str, worker_id: str) -> str:
    """The key of a worker's report for one capability (ids made subject-safe)."""
    return f"worker.{capability}.{re.sub(r'[^A-Za-z0-9_-]', '-', worker_id)}"


class WorkerReport(msgspec.Struct, kw_only=True):
    """A worker serving one capability."""

    capability: str
    worker: str
    consumer: str
    concurrency: int
    version: str
    host: str
    pid: int
    started_at: float
    """When the worker started (seconds since the epoch, the worker's clock)."""
    at: float
    """When this report was written (the worker's clock)."""


class ProjectionReport(msgspec.Struct, kw_only=True):
    """The projection service."""

    positions: dict[str, int]
    """Stream → last sequence applied to the session views at the last checkpoint."""
    version: str
    host: str
    pid: int
    started_at: float
    at: float
    stopped: bool = False
    """It stopped cleanly (at ``at``)."""


async def keep_reporting(
    js: JetStreamContext,
    bucket: str,
    reports: Callable[[], Mapping[str, object]],
    stop: asyncio.Event,
    *,
    every: float = REPORT_EVERY_S,
    last: Callable[[], Mapping[str, object]] | None = None,
) -> None:
    """Write ``reports()`` (key → report) to ``bucket`` every ``every`` seconds until
    ``stop``; then write ``last()`` if given, else delete the keys written. A failed
    write is logged and retried at the next turn, never fatal to the service."""
    written: set[str] = set()
    kv = None
    while True:
        stopping = stop.is_set()
        try:
            kv = kv or await js.key_value(bucket)
            if stopping and last is None:
                for key in written:
                    await kv.delete(key)
            else:
                for key, report in (last() if stopping and last else reports()).items():
                    await kv.put(key, msgspec.json.encode(report))
                    written.add(key)
        except (NatsError, TimeoutError, BucketNotFoundError, NotFoundError) as exc:
            log.warning("could not write the status report to %s: %s", bucket, exc)
        if stopping:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


async def read_reports(nc: NATS, bucket: str, key_filter: str) -> dict[str, bytes]:
    """Key → value of every report in ``bucket`` whose key matches ``key_filter`` (one
    batched read of the bucket's stream). Empty when the bucket does not exist."""
    stream = f"KV_{bucket}"
    try:
        await nc.jetstream().stream_info(stream)
    except (NotFoundError, BucketNotFoundError):
        return {}
    reader = DirectGetter(nc, stream, timeout=5.0)
    await reader.open()
    try:
        records = await reader.scan(f"$KV.{bucket}.{key_filter}")
    finally:
        await reader.close()
    prefix = f"$KV.{bucket}."
    return {
        record.subject[len(prefix) :]: record.data
        for record in records
        if record.data and record.headers.get("KV-Operation") not in ("DEL", "PURGE")
    }


async def read_projection_report(nc: NATS, names: Names) -> ProjectionReport | None:
    """The projection service's report; None if it never wrote one (or it is unreadable)."""
    try:
        kv = await nc.jetstream().key_value(names.bucket("PROJECTIONS"))
        entry = await kv.get(PROJECTION_KEY)
        return msgspec.json.decode(entry.value or b"", type=ProjectionReport)
    except (BucketNotFoundError, KeyNotFoundError, NotFoundError):
        return None
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def age(at: float, now: float | None = None) -> float:
    """Seconds since ``at`` (never negative: clocks differ a little)."""
    return max((time.time() if now is None else now) - at, 0.0)


@dataclass
class ProjectionStatus:
    """Whether the projection service runs, and how far behind the streams its views are."""

    report: ProjectionReport | None
    running: bool
    why: str
    """Why it is not running ("it has never reported", "it stopped at …"); "" if it runs."""
    lag: dict[str, int]
    """Stream → messages stored that the session views do not hold yet."""

    def note(self) -> str | None:
        """One sentence for a person when the views cannot be trusted to be current."""
        if self.running:
            return None
        behind = self.lag.get(next(iter(self.lag), ""), 0) if self.lag else 0
        stale = f"; the session views are {behind:,} events behind" if behind else ""
        return (
            f"the projection service is not running ({self.why}){stale}: session views may "
            "be missing or stale — start it with `jetagent projections run` "
            "(`jetagent up` does)"
        )


async def projection_status(nc: NATS, names: Names) -> ProjectionStatus:
    """The projection service's state, from its report and the streams' last sequences."""
    from datetime import UTC, datetime

    report = await read_projection_report(nc, names)
    last: dict[str, int] = {}
    js = nc.jetstream()
    for stream in (names.workflows_stream, names.steps_stream, names.dlq_stream):
        with contextlib.suppress(NotFoundError):
            last[stream] = (await js.stream_info(stream)).state.last_seq
    positions = report.positions if report is not None else {}
    lag = {stream: max(seq - positions.get(stream, 0), 0) for stream, seq in last.items()}
    if report is None:
        return ProjectionStatus(None, False, "it has never reported", lag)
    when = datetime.fromtimestamp(report.at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if report.stopped:
        return ProjectionStatus(report, False, f"it stopped at {when}", lag)
    if age(report.at) > FRESH_S:
        return ProjectionStatus(
            report, False, f"no report since {when}: stopped or unreachable", lag
        )
    return ProjectionStatus(report, True, "", lag)
