"""A worker's own metrics: what happens in this process, as it happens.

The projection's metrics (``jetagent_provider_calls_total``, ``jetagent_steps_total``, …)
are derived from the recorded ``StepResult`` events: each call counted once, exactly,
however many times its step ran, and reproduced by a rebuild — the numbers for cost and
accounting. A worker's metrics (``jetagent_worker_*``) count what this process does while
it does it: every provider call of every run the moment it is reported (so a step retried
three times shows three calls before its result exists, and a provider failing for every
run shows every failure), the steps running now, each delivery's outcome, retries by
reason, handler latency, dead letters. They start at 0 with the process and go with it:
the numbers for live health, alerting and correlating with circuit breakers
(README "Session views, metrics, dashboards, traces").
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jetagent.errors import TransientError
from jetagent.events import CallRecord
from jetagent.metrics import LATENCY_BUCKETS, BoundedValues, preset, service_registry
from jetagent.worker._policy import (
    Acknowledge,
    Complete,
    Decision,
    Discard,
    Fail,
    RunAgain,
    WaitInRun,
)

__all__ = ["CALL_OUTCOMES", "DELIVERY_OUTCOMES", "RETRY_REASONS", "WorkerMetrics"]

DELIVERY_OUTCOMES = ("completed", "failed", "retried", "recorded_already", "discarded")
"""What became of a delivery: a result (completed or failed), a retry (``nak``), an ack
of a step that had its result, a message that was no step (``term``)."""
RETRY_REASONS = ("transient", "error", "rate_limited")
"""A ``TransientError``, an unexpected exception (both run the step again on a new
delivery), a rate limit waited out within the run."""
DEAD_LETTER_KINDS = ("failed", "poison")
CALL_OUTCOMES = ("ok", "failed", "rate_limited", "cancelled")
HANDLER_OUTCOMES = ("ok", "error")


class WorkerMetrics:
    """The metrics of one worker process serving ``capabilities``."""

    def __init__(
        self,
        capabilities: Iterable[str],
        *,
        routes: Iterable[tuple[str, str]] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``routes``: the ``(model, provider)`` pairs the capabilities may call (the
        catalog's), whose call counters start at 0 (a model's first call, its first
        failure say, then moves ``rate()`` too); others start at their first call."""
        self.registry = registry if registry is not None else service_registry("worker")
        r = self.registry
        caps = list(dict.fromkeys(capabilities))
        self.in_flight = Gauge(
            "jetagent_worker_steps_in_flight",
            "Step deliveries this worker is handling now.",
            ["capability"],
            registry=r,
        )
        self.deliveries = Counter(
            "jetagent_worker_deliveries",
            "Step deliveries handled, by what became of them.",
            ["capability", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "jetagent_worker_retries",
            "Runs of a step ended for a retry (transient, error) and rate-limit waits "
            "within a run (rate_limited).",
            ["capability", "reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            "jetagent_worker_dead_letters",
            "Step messages this worker sent to the dead-letter stream.",
            ["capability", "kind"],
            registry=r,
        )
        self.calls = Counter(
            "jetagent_worker_provider_calls",
            "Provider calls of every run as they are reported (live; the projection's "
            "jetagent_provider_calls_total counts the recorded ones, once each).",
            ["capability", "model", "provider", "outcome"],
            registry=r,
        )
        self.handler = Histogram(
            "jetagent_worker_handler_seconds",
            "How long each call of a capability handler took, by how it ended.",
            ["capability", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for cap in caps:
            preset(self.in_flight, (cap,))
            preset(self.deliveries, *((cap, outcome) for outcome in DELIVERY_OUTCOMES))
            preset(self.retries, *((cap, reason) for reason in RETRY_REASONS))
            preset(self.dead_letters, *((cap, kind) for kind in DEAD_LETTER_KINDS))
            preset(self.handler, *((cap, outcome) for outcome in HANDLER_OUTCOMES))
        self._models = BoundedValues()
        self._providers = BoundedValues()
        self._outcomes = BoundedValues(CALL_OUTCOMES, limit=0)
        self._routes: set[tuple[str, str, str]] = set()
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        for cap in caps:
            for model, provider in routes:
                self._preset_route((cap, self._models(model), self._providers(provider)))

    def _child(self, metric: Counter | Gauge | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once (each step touches several)."""
        key = (metric._name, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def started(self, capability: str) -> None:
        """A delivery of ``capability`` is being handled."""
        self._child(self.in_flight, capability).inc()

    def finished(self, capability: str) -> None:
        """A delivery of ``capability`` was handled (whatever became of it)."""
        self._child(self.in_flight, capability).dec()

    def call(self, capability: str, call: CallRecord) -> None:
        """One provider call of a run, reported now."""
        route = (capability, self._models(call.model), self._providers(call.provider))
        # Every outcome of a new route at 0: its first failure shows to increase().
        self._preset_route(route)
        self._child(self.calls, *route, self._outcomes(call.outcome)).inc()

    def _preset_route(self, route: tuple[str, str, str]) -> None:
        if route not in self._routes:
            self._routes.add(route)
            preset(self.calls, *((*route, outcome) for outcome in CALL_OUTCOMES))

    def calls_of_run(self, capability: str, calls: Sequence[CallRecord]) -> None:
        """The calls a run ends with that were not reported as they happened."""
        for call in calls:
            self.call(capability, call)

    def handled(self, capability: str, outcome: str, started: float) -> None:
        """A handler call that began at ``started`` (``time.monotonic()``) ended."""
        self._child(self.handler, capability, outcome).observe(time.monotonic() - started)

    def after_error(self, capability: str, exc: Exception, decision: object) -> None:
        """Count the retry a handler's error led to (none when the step fails)."""
        if isinstance(decision, WaitInRun):
            self._child(self.retries, capability, "rate_limited").inc()
        elif isinstance(decision, RunAgain):
            reason = "transient" if isinstance(exc, TransientError) else "error"
            self._child(self.retries, capability, reason).inc()

    def delivered(self, capability: str, decision: Decision) -> None:
        """A delivery's decision was carried out (its message acked, naked or termed)."""
        match decision:
            case Complete():
                outcome = "completed"
            case Fail(dead_letter=letter):
                outcome = "failed"
                if letter is not None:
                    self._child(self.dead_letters, capability, "failed").inc()
            case RunAgain():
                outcome = "retried"
            case Acknowledge():
                outcome = "recorded_already"
            case Discard(poison=poison):
                outcome = "discarded"
                if poison is not None:
                    self._child(self.dead_letters, capability, "poison").inc()
        self._child(self.deliveries, capability, outcome).inc()
