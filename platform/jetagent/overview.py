"""The platform at a glance (``jetagent status``): streams, durable consumers and their
backlog, the workers connected per capability, the projection service's lag, circuit
breakers. Read from the server (stream and consumer info) and from the reports services
write about themselves (:mod:`jetagent.reports`); nothing here changes anything.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from jetagent._translate import nats_errors
from jetagent.errors import NotProvisionedError
from jetagent.reports import FRESH_S, WorkerReport, age, projection_status, read_reports
from jetagent.subjects import Names

__all__ = [
    "CapabilityState",
    "CircuitState",
    "ConsumerState",
    "Overview",
    "PeerState",
    "ProjectionState",
    "StreamState",
    "WorkerState",
    "overview",
]

GONE_KEPT_S = 3600.0
"""Workers that stopped reporting are listed as gone for this long, then forgotten."""


class PeerState(msgspec.Struct, kw_only=True):
    """A replica of a stream in a cluster."""

    name: str
    current: bool
    lag: int = 0
    """Operations the replica is behind the leader."""
    offline: bool = False


class StreamState(msgspec.Struct, kw_only=True):
    """One of the platform's streams."""

    name: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumers: int
    replicas: int
    leader: str | None = None
    """The server leading it (a single node names itself)."""
    peers: list[PeerState] = msgspec.field(default_factory=list)


class ConsumerState(msgspec.Struct, kw_only=True):
    """A durable consumer and its backlog."""

    stream: str
    name: str
    pending: int
    """Messages not yet delivered."""
    ack_pending: int
    """Delivered, not yet acknowledged (being worked on, or lost with a worker)."""
    redelivered: int
    """Delivered more than once and not yet acknowledged."""
    waiting: int
    """Pull requests waiting: a sign of connected consumers."""
    last_active: str | None = None
    """When a message was last delivered (ISO 8601, UTC)."""


class WorkerState(msgspec.Struct, kw_only=True):
    """A worker process serving a capability, as it reported itself."""

    capability: str
    worker: str
    version: str
    host: str
    pid: int
    consumer: str
    concurrency: int
    started_at: str
    last_report_s: float
    """Seconds since its last report."""


class CapabilityState(msgspec.Struct, kw_only=True):
    """A capability: its consumer's backlog and the workers serving it."""

    name: str
    consumer: ConsumerState | None
    workers: list[WorkerState]
    """Reporting now."""
    gone: list[WorkerState]
    """Stopped reporting within the last hour (died, or unreachable)."""


class CircuitState(msgspec.Struct, kw_only=True):
    """A provider's circuit breaker in one worker."""

    worker: str
    provider: str
    base_url: str
    state: str
    consecutive_failures: int = 0
    retry_in_s: float | None = None
    models: list[str] = msgspec.field(default_factory=list)


class ProjectionState(msgspec.Struct, kw_only=True):
    """The projection service and how far behind the streams its session views are."""

    running: bool
    why: str
    reported_at: str | None
    version: str | None
    host: str | None
    pid: int | None
    positions: dict[str, int]
    lag: dict[str, int]


class Overview(msgspec.Struct, kw_only=True):
    """Everything ``jetagent status`` shows (its ``--json`` document)."""

    prefix: str
    server: dict[str, str]
    jetagent_version: str
    """The version of jetagent that made this overview."""
    streams: list[StreamState]
    missing_streams: list[str]
    consumers: list[ConsumerState]
    capabilities: list[CapabilityState]
    projection: ProjectionState
    circuits: list[CircuitState]


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def _epoch(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _streams(names: Names) -> list[str]:
    return [
        names.requests_stream,
        names.workflows_stream,
        names.steps_stream,
        names.calls_stream,
        names.timers_stream,
        names.dlq_stream,
    ]


async def overview(nc: NATS, names: Names, *, capabilities: Iterable[str] = ()) -> Overview:
    """Read the platform's state; ``capabilities``: the ones expected to have workers
    (the installed entry points), listed even before any of their workers started."""
    from jetagent.reports import jetagent_version

    js = nc.jetstream()
    streams: list[StreamState] = []
    missing: list[str] = []
    consumers: list[ConsumerState] = []
    with nats_errors(prefix=names.prefix):
        for name in _streams(names):
            try:
                info = await js.stream_info(name)
            except NotFoundError:
                missing.append(name)
                continue
            cluster = info.cluster
            streams.append(
                StreamState(
                    name=name,
                    messages=info.state.messages,
                    bytes=info.state.bytes,
                    first_seq=info.state.first_seq,
                    last_seq=info.state.last_seq,
                    consumers=info.state.consumer_count,
                    replicas=info.config.num_replicas or 1,
                    leader=cluster.leader if cluster else None,
                    peers=[
                        PeerState(
                            name=p.name or "?",
                            current=bool(p.current),
                            lag=p.lag or 0,
                            offline=bool(p.offline),
                        )
                        for p in (cluster.replicas or [] if cluster else [])
                    ],
                )
            )
            for consumer in await js.consumers_info(name):
                if not consumer.config.durable_name:
                    continue  # ordered consumers of watchers and followers come and go
                delivered = consumer.delivered
                consumers.append(
                    ConsumerState(
                        stream=name,
                        name=consumer.name,
                        pending=consumer.num_pending or 0,
                        ack_pending=consumer.num_ack_pending or 0,
                        redelivered=consumer.num_redelivered or 0,
                        waiting=consumer.num_waiting or 0,
                        last_active=_iso(delivered.last_active if delivered else None),
                    )
                )
        if not streams:  # nothing here at all: the one-line answer every command gives
            raise NotProvisionedError(
                f"the platform is not provisioned under the prefix {names.prefix!r}: run "
                "`jetagent provision` (or `jetagent up`), or set JETAGENT_PREFIX"
            )
        registry = names.bucket("REGISTRY")
        workers = await _workers(nc, registry)
        circuits = await _circuits(nc, registry)
        projection = await projection_status(nc, names)
    # The INFO the server sent on connect (nats-py keeps it, without a public name).
    server: dict[str, object] = getattr(nc, "_server_info", None) or {}
    report = projection.report
    return Overview(
        prefix=names.prefix,
        server={
            "name": str(server.get("server_name", "")),
            "version": str(server.get("version", "")),
            "cluster": str(server.get("cluster", "")),
        },
        jetagent_version=jetagent_version(),
        streams=streams,
        missing_streams=missing,
        consumers=consumers,
        capabilities=_capabilities(names, consumers, workers, capabilities),
        projection=ProjectionState(
            running=projection.running,
            why=projection.why,
            reported_at=_epoch(report.at) if report else None,
            version=report.version if report else None,
            host=report.host if report else None,
            pid=report.pid if report else None,
            positions=report.positions if report else {},
            lag=projection.lag,
        ),
        circuits=circuits,
    )


async def _workers(nc: NATS, bucket: str) -> list[WorkerState]:
    found = []
    now = time.time()
    for value in (await read_reports(nc, bucket, "worker.>")).values():
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            report = msgspec.json.decode(value, type=WorkerReport)
            seen = age(report.at, now)
            if seen > GONE_KEPT_S:
                continue
            found.append(
                WorkerState(
                    capability=report.capability,
                    worker=report.worker,
                    version=report.version,
                    host=report.host,
                    pid=report.pid,
                    consumer=report.consumer,
                    concurrency=report.concurrency,
                    started_at=_epoch(report.started_at),
                    last_report_s=round(seen, 1),
                )
            )
    return sorted(found, key=lambda w: (w.capability, w.worker))


async def _circuits(nc: NATS, bucket: str) -> list[CircuitState]:
    found = []
    now = time.time()
    for value in (await read_reports(nc, bucket, "status.>")).values():
        with contextlib.suppress(msgspec.DecodeError, TypeError, ValueError, KeyError):
            report = msgspec.json.decode(value)
            if not isinstance(report, dict) or age(float(report.get("at", 0)), now) > FRESH_S:
                continue  # a worker that stopped reporting: its breakers are not current
            for breaker in report.get("circuits") or []:
                found.append(
                    CircuitState(
                        worker=str(report.get("worker", "?")),
                        provider=str(breaker["provider"]),
                        base_url=str(breaker.get("base_url", "")),
                        state=str(breaker["state"]),
                        consecutive_failures=int(breaker.get("consecutive_failures", 0)),
                        retry_in_s=breaker.get("retry_in_s"),
                        models=[str(m) for m in breaker.get("models") or []],
                    )
                )
    return sorted(found, key=lambda c: (c.provider, c.base_url, c.worker))


def _capabilities(
    names: Names,
    consumers: list[ConsumerState],
    workers: list[WorkerState],
    expected: Iterable[str],
) -> list[CapabilityState]:
    by_consumer = {c.name: c for c in consumers if c.stream == names.workflows_stream}
    # Each capability consumer: named by a worker that serves it, or cap-<capability>.
    served = {w.consumer: w.capability for w in workers}
    keys: dict[str, str] = {}  # consumer → capability
    for name in by_consumer:
        if name in served or name.startswith("cap-"):
            keys[name] = served.get(name, name.removeprefix("cap-"))
    for worker in workers:
        keys.setdefault(worker.consumer, worker.capability)
    for name in expected:
        if name not in keys.values():
            keys[f"cap-{name}"] = name
    out = []
    for consumer, capability in keys.items():
        mine = [w for w in workers if w.consumer == consumer]
        out.append(
            CapabilityState(
                name=capability,
                consumer=by_consumer.get(consumer),
                workers=[w for w in mine if w.last_report_s <= FRESH_S],
                gone=[w for w in mine if w.last_report_s > FRESH_S],
            )
        )
    return sorted(out, key=lambda c: (c.name, c.consumer.name if c.consumer else ""))
