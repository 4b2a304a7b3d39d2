"""Cost and operations totals, derived from events: the fold behind ``projections.costs``.

:class:`MetricsState` folds events into totals — tokens, cost, calls, steps, latencies,
workflow outcomes — and is checkpointed whole, so a restart neither resets nor doubles
a total and a rebuild from sequence 0 reproduces them exactly. Label values are bounded
as they are folded (``projections.labels``: tenants and models outside the configuration
are ``other``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import msgspec

from jetagent.events import (
    Cancelled,
    Finalized,
    Held,
    RequestRejected,
    Started,
    StepCompleted,
    StepFailed,
    StepResult,
    StepScheduled,
    Terminated,
    Throttled,
    WorkflowEvent,
)
from projections.known import SEP
from projections.labels import LabelPolicy

__all__ = ["BUCKETS", "Histogram", "MetricsState"]

BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
_SEP = SEP
_MICROSECOND = timedelta(microseconds=1)
_ZERO = Decimal(0)
_ANY = LabelPolicy()


def _key(*labels: str | None) -> str:
    return _SEP.join(label or "" for label in labels)


class Histogram(msgspec.Struct):
    """Cumulative-at-render bucket counts, their sum and count.

    The sum is kept in whole microseconds (``total_us``; event times have microsecond
    resolution), so it does not depend on the order of the observations: a live service
    folds a result later than a rebuild does when the result arrives before its step's
    schedule (it waits, projections/trust.py), and a float sum would then differ in its
    last digit. ``total`` (seconds) is derived from it.
    """

    counts: list[int] = msgspec.field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    count: int = 0
    total_us: int = 0

    def __post_init__(self) -> None:
        if self.total and not self.total_us:  # saved before total_us existed
            self.total_us = round(self.total * 1e6)

    def observe(self, elapsed: timedelta) -> None:
        """Count one duration (negative ones as zero)."""
        micros = max(elapsed // _MICROSECOND, 0)
        value = micros / 1e6
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total_us += micros
        self.total = self.total_us / 1e6
        self.count += 1


class MetricsState(msgspec.Struct):
    """Every total the metrics show, as a pure function of the events applied."""

    tokens: dict[str, int] = msgspec.field(default_factory=dict)
    cost_usd: dict[str, Decimal] = msgspec.field(default_factory=dict)
    calls: dict[str, int] = msgspec.field(default_factory=dict)
    steps: dict[str, int] = msgspec.field(default_factory=dict)
    retries: dict[str, int] = msgspec.field(default_factory=dict)
    repeated_runs: dict[str, int] = msgspec.field(default_factory=dict)
    """Runs of a step that died mid-way and were run again (their calls still count)."""
    duration: dict[str, Histogram] = msgspec.field(default_factory=dict)
    turnaround: dict[str, Histogram] = msgspec.field(default_factory=dict)
    workflows: dict[str, int] = msgspec.field(default_factory=dict)
    terminations: dict[str, int] = msgspec.field(default_factory=dict)
    active: dict[str, int] = msgspec.field(default_factory=dict)
    dead_letters: dict[str, int] = msgspec.field(default_factory=dict)
    open_workflows: dict[str, str] = msgspec.field(default_factory=dict)
    """workflow id → tenant, while it runs (final events carry no tenant)."""
    open_steps: dict[str, dict[str, datetime]] = msgspec.field(default_factory=dict)
    """workflow id → step id → when it was scheduled, until it completes (keyed by
    workflow so that a workflow's end drops its steps without scanning the others)."""
    poison: dict[str, int] = msgspec.field(default_factory=dict)
    """stream → messages skipped because they are not valid events (projections.poison)."""
    admitted: dict[str, dict[str, bool]] = msgspec.field(default_factory=dict)
    """label dimension → the free values admitted so far (projections.labels)."""
    quota: dict[str, int] = msgspec.field(default_factory=dict)
    """tenant, quota, outcome (held, rejected, throttled) → decisions of tenant quotas."""
    held: dict[str, int] = msgspec.field(default_factory=dict)
    """tenant → workflows held now."""
    held_workflows: dict[str, str] = msgspec.field(default_factory=dict)
    """workflow id → tenant, while it is held."""

    def apply_workflow_event(self, event: WorkflowEvent, labels: LabelPolicy = _ANY) -> None:
        match event:
            case Held():
                label = labels.tenant(event.tenant, self.admitted)
                if event.workflow_id not in self.held_workflows:
                    self.held_workflows[event.workflow_id] = label
                    _add(self.held, label, 1)
                    _add(self.quota, _key(label, event.quota.quota, "held"), 1)
            case Throttled():
                running = self.open_workflows.get(event.workflow_id)
                if running is not None:
                    _add(self.quota, _key(running, event.quota.quota, "throttled"), 1)
            case Started():
                if (held := self.held_workflows.pop(event.workflow_id, None)) is not None:
                    _add(self.held, held, -1)
                label = labels.tenant(event.tenant, self.admitted)
                self.open_workflows[event.workflow_id] = label
                _add(self.active, label, 1)
            case StepScheduled():
                # A capability is known from its first step on: its series start at 0
                # before its first result (MetricsCollector), so increase() sees it.
                labels.free("capability", event.capability, self.admitted)
                steps = self.open_steps.get(event.workflow_id)
                if steps is None:
                    steps = self.open_steps[event.workflow_id] = {}
                steps[event.step_id] = event.at
            case StepCompleted() | StepFailed():
                steps = self.open_steps.get(event.workflow_id)
                started = steps.pop(event.step_id, None) if steps else None
                if started is not None:
                    capability = labels.free("capability", event.capability, self.admitted)
                    self.turnaround.setdefault(capability, Histogram()).observe(event.at - started)
            case Finalized() | Terminated() | Cancelled():
                tenant = self.open_workflows.pop(event.workflow_id, None)
                if tenant is not None:
                    _add(self.active, tenant, -1)
                elif (tenant := self.held_workflows.pop(event.workflow_id, None)) is not None:
                    _add(self.held, tenant, -1)  # it ended while held (cancel, deadline)
                else:
                    return  # an end without a start (impossible), or already counted
                outcome = type(event).__name__.lower()
                _add(self.workflows, _key(tenant, outcome), 1)
                if isinstance(event, Terminated):
                    reason = labels.free("reason", event.reason, self.admitted)
                    _add(self.terminations, reason, 1)
                self.open_steps.pop(event.workflow_id, None)
            case RequestRejected():
                tenant = labels.tenant(event.tenant or "unknown", self.admitted)
                _add(self.workflows, _key(tenant, "rejected"), 1)
                if event.quota is not None:
                    _add(self.quota, _key(tenant, event.quota.quota, "rejected"), 1)

    def apply_step_result(self, result: StepResult, labels: LabelPolicy = _ANY) -> None:
        # A hot path of rebuilds: label keys are formatted once per call record.
        admitted = self.admitted
        cap = labels.free("capability", result.capability, admitted)
        tenant = labels.tenant(result.tenant, admitted)
        _add(self.steps, f"{cap}{_SEP}{'ok' if result.ok else 'failed'}", 1)
        retries = max(result.deliveries - 1, 0) + max(result.attempt - 1, 0)
        if retries:
            _add(self.retries, cap, retries)
        if result.interrupted_runs:
            _add(self.repeated_runs, cap, result.interrupted_runs)
        histogram = self.duration.get(cap)
        if histogram is None:
            histogram = self.duration[cap] = Histogram()
        histogram.observe(result.finished_at - result.started_at)
        tokens, cost = self.tokens, self.cost_usd
        for call in result.calls:
            model = labels.model(call.model, admitted)
            provider = labels.free("provider", call.provider, admitted)
            outcome = labels.free("call_outcome", call.outcome, admitted)
            route = f"{cap}{_SEP}{model}{_SEP}{provider}"
            _add(self.calls, f"{route}{_SEP}{outcome}", 1)
            base = f"{route}{_SEP}{tenant}{_SEP}"
            usage = call.usage
            if usage is not None:
                _add(tokens, base + "input", max(usage.input_tokens - usage.cached_tokens, 0))
                _add(tokens, base + "cached", usage.cached_tokens)
                _add(tokens, base + "output", usage.output_tokens)
            if call.cost_usd is not None:
                key = base[: -len(_SEP)]
                cost[key] = cost.get(key, _ZERO) + call.cost_usd

    def apply_dead_letter(self, source: str, labels: LabelPolicy = _ANY) -> None:
        _add(self.dead_letters, labels.free("source", source, self.admitted), 1)

    def apply_poison(self, stream: str) -> None:
        _add(self.poison, stream, 1)

    def totals(self) -> dict[str, object]:
        """The comparable totals (what must match between a live run and a rebuild)."""
        data: dict[str, object] = msgspec.to_builtins(self)
        data.pop("open_steps")
        return data


def _add(counter: dict[str, int], key: str, amount: int) -> None:
    counter[key] = counter.get(key, 0) + amount
