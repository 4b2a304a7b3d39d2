"""Live gauges: what the projection reads from the server, not derives from events.

Consumer backlogs (pending and unacknowledged, per durable consumer), the projection's
lag and applied position per stream, and the circuit-breaker states the workers report in
``JA_REGISTRY``. Read every two seconds by the projection service; rendered with the
totals by ``projections.costs.MetricsCollector``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import msgspec
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from jetagent.subjects import Names

__all__ = ["LiveGauges", "circuit_states", "consumer_backlog"]


class LiveGauges(msgspec.Struct):
    """Gauges read from the server, not derived from events."""

    pending: dict[str, int] = msgspec.field(default_factory=dict)
    ack_pending: dict[str, int] = msgspec.field(default_factory=dict)
    circuits: dict[str, int] = msgspec.field(default_factory=dict)
    lag: dict[str, int] = msgspec.field(default_factory=dict)
    applied: dict[str, int] = msgspec.field(default_factory=dict)


async def consumer_backlog(
    js: JetStreamContext, streams: Iterable[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """(pending, ack pending) of every durable consumer of ``streams``, keyed
    ``<stream>\\x1f<consumer>``; a stream that cannot be read is left out."""
    pending: dict[str, int] = {}
    ack_pending: dict[str, int] = {}
    for stream in streams:
        with contextlib.suppress(NatsError, NotFoundError):
            for info in await js.consumers_info(stream):
                if info.config.durable_name:
                    key = f"{stream}\x1f{info.config.durable_name}"
                    pending[key] = info.num_pending or 0
                    ack_pending[key] = info.num_ack_pending or 0
    return pending, ack_pending


async def circuit_states(js: JetStreamContext, names: Names) -> dict[str, int]:
    """The worst state each provider endpoint's breaker is in across the workers that
    reported in the last minute, keyed ``<provider>\\x1f<base_url>``."""
    circuits: dict[str, int] = {}
    bucket = names.bucket("REGISTRY")
    # The status keys are read from the bucket's stream (one request that lists the
    # subjects), not with ``kv.keys(filters=…)``: in nats-py 2.16 that raises
    # NoKeysError when nothing matches and logs a warning on every call.
    prefix = f"$KV.{bucket}."
    try:
        registry = await js.key_value(bucket)
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + "status.>")
    except (NatsError, NotFoundError, BucketNotFoundError):
        return circuits
    keys = [subject[len(prefix) :] for subject in info.state.subjects or {}]
    now = time.time()
    for key in keys:
        # A report that cannot be read (a foreign or old writer) is left out.
        with contextlib.suppress(
            KeyNotFoundError,
            NotFoundError,
            msgspec.DecodeError,
            KeyError,
            TypeError,
            ValueError,
        ):
            report = msgspec.json.decode((await registry.get(key)).value or b"{}")
            if now - float(report.get("at", 0)) > 60:
                continue  # a worker that stopped reporting
            for breaker in report.get("circuits", []):
                label = f"{breaker['provider']}\x1f{breaker['base_url']}"
                circuits[label] = max(circuits.get(label, 0), int(breaker["state_value"]))
    return circuits
