"""An orchestrator replica's own metrics: inputs, decisions, conflicts, backlog.

What this replica does as it does it (``jetagent_orchestrator_*``), beside the
projection's record-derived totals: each input (request, cancel, signal, step result,
timer) handled and how it ended (acked, left for a retry, dead-lettered) with its
latency, what each decision recorded, concurrency conflicts with other replicas, and
the backlog of the orchestrator's consumers, read from the server every few seconds
(README "Session views, metrics, dashboards, traces").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jetagent.metrics import LATENCY_BUCKETS, preset, service_registry
from jetagent.subjects import family
from jetagent.workflow import Begin, Cancel, FoldResult, Input, Signal, Tick

__all__ = ["INPUT_KINDS", "InputMeasure", "OrchestratorMetrics"]

log = logging.getLogger("jetagent.orchestrator")

INPUT_KINDS = ("request", "cancel", "signal", "step_result", "timer")
_KIND_OF_SUBJECT = {"request": "request", "cancel": "cancel", "signal": "signal"}
_KIND_OF_SUBJECT |= {"step": "step_result", "timer": "timer"}
_KIND_OF_INPUT: dict[type, str] = {
    Begin: "request",
    Cancel: "cancel",
    Signal: "signal",
    FoldResult: "step_result",
    Tick: "timer",
}
DECISION_OUTCOMES = ("recorded", "unchanged", "rejected")
"""Events appended; nothing to record (a redelivery, a stale input); a request refused."""
INPUT_OUTCOMES = ("ok", "retried", "dead_lettered")
LAG_INTERVAL_S = 5.0


@dataclass
class InputMeasure:
    """One input being handled: set :attr:`outcome` if it does not end ``ok``."""

    metrics: OrchestratorMetrics
    kind: str
    started: float = field(default_factory=time.monotonic)
    outcome: str = "ok"

    def done(self) -> None:
        """The input was acked, left for a retry or dead-lettered (:attr:`outcome`)."""
        metrics = self.metrics
        metrics.in_flight.dec()
        metrics.inputs.labels(self.kind, self.outcome).inc()
        metrics.latency.labels(self.kind).observe(time.monotonic() - self.started)


class OrchestratorMetrics:
    """The metrics of one orchestrator replica."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else service_registry("orchestrator")
        r = self.registry
        self.inputs = Counter(
            "jetagent_orchestrator_inputs",
            "Inputs handled, by kind and how they ended (acked, left for a retry, dead-lettered).",
            ["input", "outcome"],
            registry=r,
        )
        self.decisions = Counter(
            "jetagent_orchestrator_decisions",
            "Decisions by input kind and what they recorded (recorded: events appended; "
            "unchanged: nothing to do; rejected: a request refused).",
            ["input", "outcome"],
            registry=r,
        )
        self.conflicts = Counter(
            "jetagent_orchestrator_conflicts",
            "Appends refused because another replica wrote the workflow first (then "
            "caught up and decided again).",
            ["input"],
            registry=r,
        )
        self.latency = Histogram(
            "jetagent_orchestrator_input_seconds",
            "From an input's delivery to its ack (or nak), by kind.",
            ["input"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "jetagent_orchestrator_inputs_in_flight",
            "Inputs this replica is handling now (at most JETAGENT_ORCHESTRATOR_CONCURRENCY).",
            registry=r,
        )
        self.pending = Gauge(
            "jetagent_orchestrator_consumer_pending_messages",
            "Messages not yet delivered to each orchestrator consumer (polled every 5 s).",
            ["consumer"],
            registry=r,
        )
        self.ack_pending = Gauge(
            "jetagent_orchestrator_consumer_ack_pending_messages",
            "Messages delivered to each orchestrator consumer and not yet acknowledged.",
            ["consumer"],
            registry=r,
        )
        for kind in INPUT_KINDS:
            preset(self.inputs, *((kind, outcome) for outcome in INPUT_OUTCOMES))
            preset(self.decisions, *((kind, outcome) for outcome in DECISION_OUTCOMES))
            preset(self.conflicts, (kind,))
            preset(self.latency, (kind,))

    def input(self, subject: str) -> InputMeasure:
        """Start measuring the input delivered on ``subject``; call ``done()`` at its end."""
        kind = _KIND_OF_SUBJECT.get(family(subject), "other")
        self.in_flight.inc()
        return InputMeasure(self, kind)

    def decided(self, command: Input, events: int) -> None:
        """A decision on ``command`` appended ``events`` events."""
        outcome = "recorded" if events else "unchanged"
        self.decisions.labels(_KIND_OF_INPUT.get(type(command), "other"), outcome).inc()

    def rejected(self) -> None:
        """A request was refused (a ``RequestRejected`` decided)."""
        self.decisions.labels("request", "rejected").inc()

    def conflict(self, command: Input) -> None:
        """Another replica appended to the workflow first while deciding ``command``."""
        self.conflicts.labels(_KIND_OF_INPUT.get(type(command), "other")).inc()

    async def follow_consumers(
        self, js: JetStreamContext, consumers: Sequence[tuple[str, str]], stop: asyncio.Event
    ) -> None:
        """Read each ``(stream, consumer)``'s backlog every few seconds until ``stop``: one
        small request each; a server that does not answer leaves the last values."""
        while not stop.is_set():
            for stream, consumer in consumers:
                try:
                    info = await js.consumer_info(stream, consumer)
                except (NatsError, NotFoundError, TimeoutError) as exc:
                    log.debug("consumer lag of %s not read: %s", consumer, exc)
                    continue
                except Exception:  # a gauge must never stop the orchestrator
                    log.exception("consumer lag of %s not read", consumer)
                    continue
                self.pending.labels(consumer).set(info.num_pending or 0)
                self.ack_pending.labels(consumer).set(info.num_ack_pending or 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=LAG_INTERVAL_S)
