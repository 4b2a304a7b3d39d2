"""Cost and operations metrics, derived from events (``projections.costs``).

:class:`MetricsCollector` renders the totals (:class:`~projections.totals.MetricsState`,
folded from the events and checkpointed whole) plus the live gauges (consumer backlog,
circuit states, projection lag: ``projections.live``) for prometheus-client. Labels are
bounded: capability, model, provider, tenant, kind, outcome, reason, stream, consumer —
never a workflow or request id — and their values are bounded too (``projections.labels``:
tenants and models outside the configuration are ``other``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from decimal import Decimal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from projections.known import SEP, derived_label_sets, known_label_sets
from projections.live import LiveGauges
from projections.totals import BUCKETS, Histogram, MetricsState

__all__ = [
    "BUCKETS",
    "Histogram",
    "LiveGauges",
    "MetricsCollector",
    "MetricsState",
    "known_label_sets",
]


def _split(key: str) -> list[str]:
    return key.split(SEP)


class MetricsCollector(Collector):
    """Renders a :class:`MetricsState` and :class:`LiveGauges` for prometheus-client."""

    def __init__(
        self,
        state: MetricsState,
        live: LiveGauges,
        *,
        known: dict[str, list[str]] | None = None,
        capabilities: Sequence[str] = (),
    ) -> None:
        self.state = state
        self.live = live
        self.known = known or {}
        """metric name → label sets (joined keys) shown at 0 before their first event,
        so that ``increase()`` sees the first one (a series that appears at 1 has no
        earlier sample to increase from)."""
        self.capabilities = tuple(capabilities)
        """Capabilities shown at 0 from the start (the installed ones); the others from
        their first scheduled step on."""

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        s, live = self.state, self.live
        known = dict(self.known)
        for name, keys in derived_label_sets(s, self.capabilities).items():
            known[name] = [*known.get(name, ()), *keys]
        caps = known["capabilities"]
        yield _counter(
            "jetagent_tokens",
            "Tokens billed by providers.",
            ["capability", "model", "provider", "tenant", "kind"],
            s.tokens,
            known["jetagent_tokens"],
        )
        yield _counter(
            "jetagent_cost_usd",
            "USD billed by providers (catalog prices).",
            ["capability", "model", "provider", "tenant"],
            s.cost_usd,
            known.get("jetagent_cost_usd"),
        )
        yield _counter(
            "jetagent_provider_calls",
            "Provider calls by outcome.",
            ["capability", "model", "provider", "outcome"],
            s.calls,
            known["jetagent_provider_calls"],
        )
        yield _counter(
            "jetagent_steps",
            "Step results by outcome.",
            ["capability", "outcome"],
            s.steps,
            known["jetagent_steps"],
        )
        yield _counter(
            "jetagent_step_retries",
            "Redeliveries and re-attempts of steps.",
            ["capability"],
            s.retries,
            caps,
        )
        yield _counter(
            "jetagent_step_repeated_runs",
            "Runs of steps that died mid-way (worker lost) and ran again elsewhere.",
            ["capability"],
            s.repeated_runs,
            caps,
        )
        yield _histogram(
            "jetagent_step_duration_seconds", "How long capability handlers ran.", s.duration, caps
        )
        yield _histogram(
            "jetagent_step_turnaround_seconds",
            "From a step's scheduling to its completion, platform included.",
            s.turnaround,
            caps,
        )
        yield _counter(
            "jetagent_workflows",
            "Workflows that ended, by outcome.",
            ["tenant", "outcome"],
            s.workflows,
            known.get("jetagent_workflows"),
        )
        yield _counter(
            "jetagent_workflow_terminations",
            "Terminated workflows by reason.",
            ["reason"],
            s.terminations,
            known.get("jetagent_workflow_terminations"),
        )
        yield _gauge(
            "jetagent_workflows_active",
            "Workflows running now.",
            ["tenant"],
            s.active,
            known.get("jetagent_workflows_active"),
        )
        yield _gauge(
            "jetagent_workflows_held",
            "Requests held by their tenant's concurrency quota now.",
            ["tenant"],
            s.held,
            known.get("jetagent_workflows_held"),
        )
        yield _counter(
            "jetagent_quota_decisions",
            "Requests held or rejected, and decisions throttled, by tenant quotas.",
            ["tenant", "quota", "outcome"],
            s.quota,
            known.get("jetagent_quota_decisions"),
        )
        yield _counter(
            "jetagent_dead_letters",
            "Messages sent to the dead-letter stream.",
            ["source"],
            s.dead_letters,
            known["jetagent_dead_letters"],
        )
        yield _counter(
            "jetagent_projection_poison_messages",
            "Stored messages the projections skipped: not valid events (see `jetagent dlq`).",
            ["stream"],
            s.poison,
            known.get("jetagent_projection_poison_messages"),
        )
        yield _gauge(
            "jetagent_consumer_pending_messages",
            "Messages not yet delivered to a consumer.",
            ["stream", "consumer"],
            live.pending,
        )
        yield _gauge(
            "jetagent_consumer_ack_pending_messages",
            "Messages delivered but not yet acknowledged.",
            ["stream", "consumer"],
            live.ack_pending,
        )
        yield _gauge(
            "jetagent_circuit_state",
            "Circuit breaker state (0 closed, 1 open, 2 half-open).",
            ["provider", "base_url"],
            live.circuits,
        )
        yield _gauge(
            "jetagent_projection_lag_events", "Events not yet projected.", ["stream"], live.lag
        )
        yield _gauge(
            "jetagent_projection_applied_sequence",
            "Last stream sequence projected.",
            ["stream"],
            live.applied,
        )


def _counter(
    name: str,
    doc: str,
    labels: list[str],
    values: dict[str, int] | dict[str, Decimal],
    known: Sequence[str] | None = None,
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    shown: dict[str, float] = dict.fromkeys(known or (), 0.0)
    shown.update((key, float(value)) for key, value in values.items())
    for key, value in sorted(shown.items()):
        family.add_metric(_split(key), value)
    return family


def _gauge(
    name: str,
    doc: str,
    labels: list[str],
    values: dict[str, int],
    known: Sequence[str] | None = None,
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    shown: dict[str, int] = dict.fromkeys(known or (), 0)
    shown.update(values)
    for key, value in sorted(shown.items()):
        family.add_metric(_split(key), float(value))
    return family


def _histogram(
    name: str, doc: str, values: dict[str, Histogram], known: Sequence[str] = ()
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["capability"])
    shown = {capability: Histogram() for capability in known}
    shown.update(values)
    for capability, histogram in sorted(shown.items()):
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, BUCKETS), "+Inf"], histogram.counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        family.add_metric([capability], buckets, histogram.total)
    return family
