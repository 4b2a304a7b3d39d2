"""The jetagent Grafana dashboard, as code (grafana-foundation-sdk).

    .venv/bin/python deploy/grafana/dashboard.py           # writes dashboards/jetagent.json
    .venv/bin/python deploy/grafana/dashboard.py --check   # exits 1 if that file is stale

The metrics come from ``projections.costs`` (docs/ARCHITECTURE.md §2; README "Session
views, metrics"), scraped by Prometheus from the projections service. Grafana loads the
JSON through the file provider in ``provisioning/dashboards/jetagent.yml``; the output is
deterministic (sorted keys, fixed ids), so the checked-in file changes only when this
script does.

Template variables filter only where the metric has the label: ``$tenant`` applies to tokens,
cost and workflow counts; ``$model`` to tokens, cost and provider calls; ``$capability`` to
everything recorded per capability. Every panel's description says which apply.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from grafana_foundation_sdk.builders.bargauge import Panel as BarGauge
from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
    TimePicker,
)
from grafana_foundation_sdk.builders.dashboard import Dashboard as DashboardBuilder
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.statetimeline import Panel as StateTimeline
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import units
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueColorMode,
    BigValueGraphMode,
    BigValueTextMode,
    GraphDrawStyle,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    StackingMode,
    TooltipDisplayMode,
    VisibilityMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    Dashboard,
    DashboardCursorSync,
    DataSourceRef,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMapping,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards" / "jetagent.json"

UID = "jetagent"
DATASOURCE_UID = "prometheus"
"""The uid of the datasource in provisioning/datasources/prometheus.yml (the default)."""
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label matchers for the template variables; each is used only on metrics with that label.
TENANT = 'tenant=~"$tenant"'
CAPABILITY = 'capability=~"$capability"'
MODEL = 'model=~"$model"'

RATE = "[$__rate_interval]"
RANGE = "[$__range]"

_Panel = TypeVar("_Panel", Timeseries, Stat, BarGauge, StateTimeline)


def sel(metric: str, *matchers: str) -> str:
    """``metric{a, b}``, or the bare name without matchers."""
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def q(expr: str, legend: str = "__auto", *, instant: bool = False) -> Dataquery:
    query = Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)
    return query.instant() if instant else query.range()


def _panel(
    panel: _Panel,
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Dataquery],
    *,
    span: int,
    height: int,
) -> _Panel:
    for ref, query in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(query.ref_id(ref))
    return (
        panel.title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(span)
        .height(height)
    )


def _color(color: str) -> list[DynamicConfigValue]:
    return [DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})]


def timeseries(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Dataquery],
    *,
    span: int = 8,
    height: int = 8,
    axis_label: str = "",
    stacked: bool = False,
    bars: bool = False,
    colors: dict[str, str] | None = None,
) -> Timeseries:
    panel = (
        Timeseries()
        .min(0)
        .fill_opacity(60 if bars else 10)
        .line_width(1)
        .show_points(VisibilityMode.NEVER)
        .draw_style(GraphDrawStyle.BARS if bars else GraphDrawStyle.LINE)
        .legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
    )
    if axis_label:
        panel = panel.axis_label(axis_label)
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL))
    for name, color in sorted((colors or {}).items()):
        panel = panel.override_by_name(name, _color(color))
    return _panel(panel, title, description, unit, queries, span=span, height=height)


def stat(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Dataquery],
    *,
    thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),),
    mappings: list[ValueMapping] | None = None,
    span: int = 4,
    height: int = 4,
) -> Stat:
    steps = [Threshold(value=value, color=color) for value, color in thresholds]
    panel = (
        Stat()
        .graph_mode(BigValueGraphMode.NONE)
        .color_mode(BigValueColorMode.VALUE if mappings is None else BigValueColorMode.BACKGROUND)
        .text_mode(BigValueTextMode.AUTO if mappings is None else BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    )
    if mappings is not None:
        panel = panel.mappings(list(mappings))
    return _panel(panel, title, description, unit, queries, span=span, height=height)


def bargauge(
    title: str, description: str, unit: str, query: Dataquery, *, span: int = 8, height: int = 8
) -> BarGauge:
    panel = (
        BarGauge()
        .orientation(VizOrientation.HORIZONTAL)
        .display_mode(BarGaugeDisplayMode.BASIC)
        .min(0)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(
            ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(color="blue")])
        )
    )
    return _panel(panel, title, description, unit, [query], span=span, height=height)


def circuit_mappings() -> list[ValueMapping]:
    """jetagent_circuit_state: 0 closed, 1 open, 2 half-open."""
    return [
        ValueMap(
            options={
                "0": ValueMappingResult(text="closed", color="green", index=0),
                "1": ValueMappingResult(text="open", color="red", index=1),
                "2": ValueMappingResult(text="half-open", color="orange", index=2),
            }
        )
    ]


def quantiles(histogram: str) -> list[Dataquery]:
    bucket = sel(f"{histogram}_bucket", CAPABILITY)
    return [
        q(
            f"histogram_quantile({quantile}, sum by (capability, le) (rate({bucket}{RATE})))",
            f"{{{{capability}}}} p{name}",
        )
        for quantile, name in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))
    ]


def mean(histogram: str, legend: str) -> Dataquery:
    total = sel(f"{histogram}_sum", CAPABILITY)
    count = sel(f"{histogram}_count", CAPABILITY)
    return q(
        f"sum by (capability) (rate({total}{RATE})) / sum by (capability) (rate({count}{RATE}))",
        f"{{{{capability}}}} {legend}",
    )


def variables() -> list[DatasourceVariable | QueryVariable]:
    def labels(name: str, label: str, query: str, description: str) -> QueryVariable:
        return (
            QueryVariable(name)
            .label(label)
            .description(description)
            .datasource(DATASOURCE)
            .query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(VariableOption(selected=True, text="All", value="$__all"))
        )

    return [
        DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(VariableOption(selected=True, text="Prometheus", value=DATASOURCE_UID)),
        labels(
            "tenant",
            "Tenant",
            "label_values(jetagent_workflows_active, tenant)",
            "Filters tokens, cost and workflow panels (other metrics have no tenant label).",
        ),
        labels(
            "capability",
            "Capability",
            "label_values(jetagent_steps_total, capability)",
            "Filters every panel whose metric is recorded per capability.",
        ),
        labels(
            "model",
            "Model",
            f"label_values({sel('jetagent_provider_calls_total', CAPABILITY)}, model)",
            "Filters tokens, cost and provider-call panels (models of the chosen capabilities).",
        ),
    ]


def overview() -> list[Stat]:
    cost = sel("jetagent_cost_usd_total", TENANT, CAPABILITY, MODEL)
    tokens = sel("jetagent_tokens_total", TENANT, CAPABILITY, MODEL)
    failed = sel("jetagent_steps_total", CAPABILITY, 'outcome="failed"')
    steps = sel("jetagent_steps_total", CAPABILITY)
    return [
        stat(
            "Cost in range",
            "USD billed by providers over the selected time range (catalog prices). "
            "Filtered by $tenant, $capability and $model.",
            units.Dollars,
            [q(f"sum(increase({cost}{RANGE}))", "cost", instant=True)],
        ),
        stat(
            "Tokens in range",
            "Input, output and cached tokens billed over the selected time range. "
            "Filtered by $tenant, $capability and $model.",
            units.Short,
            [q(f"sum(increase({tokens}{RANGE}))", "tokens", instant=True)],
        ),
        stat(
            "Active workflows",
            "Workflows started and not yet finalized, terminated or cancelled. "
            "Filtered by $tenant.",
            units.Short,
            [q(f"sum({sel('jetagent_workflows_active', TENANT)})", "active", instant=True)],
        ),
        stat(
            "Step failure ratio",
            "Failed step results / all step results over the selected time range. "
            "Filtered by $capability.",
            units.PercentUnit,
            [
                q(
                    f"sum(increase({failed}{RANGE})) / sum(increase({steps}{RANGE}))",
                    "failed",
                    instant=True,
                )
            ],
            thresholds=((None, "green"), (0.01, "orange"), (0.05, "red")),
        ),
        stat(
            "Circuits not closed",
            "Provider circuit breakers that are open or half-open right now.",
            units.Short,
            [q("count(jetagent_circuit_state != 0) or vector(0)", "circuits", instant=True)],
            thresholds=((None, "green"), (1, "red")),
        ),
        stat(
            "Dead letters in range",
            "Messages sent to the dead-letter stream over the selected time range.",
            units.Short,
            [
                q(
                    f"sum(increase(jetagent_dead_letters_total{RANGE})) or vector(0)",
                    "dead letters",
                    instant=True,
                )
            ],
            thresholds=((None, "green"), (1, "red")),
        ),
    ]


def cost_panels() -> list[Timeseries | BarGauge]:
    cost = sel("jetagent_cost_usd_total", TENANT, CAPABILITY, MODEL)
    filters = "Filtered by $tenant, $capability and $model."
    rates: list[Timeseries | BarGauge] = [
        timeseries(
            f"Cost rate by {label}",
            f"USD per hour billed by providers, by {label} (rate of "
            f"jetagent_cost_usd_total times 3600). {filters}",
            units.Dollars,
            [q(f"sum by ({label}) (rate({cost}{RATE})) * 3600", f"{{{{{label}}}}}")],
            axis_label="USD / hour",
        )
        for label in ("capability", "model", "tenant")
    ]
    totals: list[Timeseries | BarGauge] = [
        bargauge(
            f"Cost by {label} in range",
            f"USD billed over the selected time range, by {label}, highest first. {filters}",
            units.Dollars,
            q(
                f"sort_desc(sum by ({label}) (increase({cost}{RANGE})))",
                f"{{{{{label}}}}}",
                instant=True,
            ),
        )
        for label in ("capability", "model", "tenant")
    ]
    return rates + totals


def token_panels() -> list[Timeseries]:
    tokens = sel("jetagent_tokens_total", TENANT, CAPABILITY, MODEL)
    filters = "Filtered by $tenant, $capability and $model."
    return [
        timeseries(
            "Tokens/s by capability",
            f"Tokens per second (input, output and cached together), by capability. {filters}",
            units.Short,
            [q(f"sum by (capability) (rate({tokens}{RATE}))", "{{capability}}")],
            axis_label="tokens/s",
        ),
        timeseries(
            "Tokens/s by model",
            f"Tokens per second (input, output and cached together), by model. {filters}",
            units.Short,
            [q(f"sum by (model) (rate({tokens}{RATE}))", "{{model}}")],
            axis_label="tokens/s",
        ),
        timeseries(
            "Tokens/s by kind",
            "Tokens per second by kind: input (not served from cache), cached input, output. "
            f"Stacked. {filters}",
            units.Short,
            [q(f"sum by (kind) (rate({tokens}{RATE}))", "{{kind}}")],
            axis_label="tokens/s",
            stacked=True,
            colors={"input": "blue", "cached": "green", "output": "purple"},
        ),
    ]


def latency_panels() -> list[Timeseries]:
    return [
        timeseries(
            "Handler duration p50/p95/p99",
            "How long the capability handler ran (jetagent_step_duration_seconds), "
            "quantiles by capability. Filtered by $capability.",
            units.Seconds,
            quantiles("jetagent_step_duration_seconds"),
            span=12,
            axis_label="seconds",
        ),
        timeseries(
            "Step turnaround p50/p95/p99",
            "From a step's scheduling to its completion, platform included "
            "(jetagent_step_turnaround_seconds), quantiles by capability. "
            "Filtered by $capability.",
            units.Seconds,
            quantiles("jetagent_step_turnaround_seconds"),
            span=12,
            axis_label="seconds",
        ),
        timeseries(
            "Mean handler duration vs turnaround",
            "Mean handler time and mean turnaround per capability; the gap is time spent "
            "in the platform (queueing, delivery, retries). Filtered by $capability.",
            units.Seconds,
            [
                mean("jetagent_step_duration_seconds", "handler"),
                mean("jetagent_step_turnaround_seconds", "turnaround"),
            ],
            span=24,
            axis_label="seconds",
        ),
    ]


def error_panels() -> list[Timeseries]:
    steps = sel("jetagent_steps_total", CAPABILITY)
    failed = sel("jetagent_steps_total", CAPABILITY, 'outcome="failed"')
    calls = sel("jetagent_provider_calls_total", CAPABILITY, MODEL)
    call_errors = sel(
        "jetagent_provider_calls_total", CAPABILITY, MODEL, 'outcome=~"failed|rate_limited"'
    )
    retries = sel("jetagent_step_retries_total", CAPABILITY)
    repeated = sel("jetagent_step_repeated_runs_total", CAPABILITY)
    return [
        timeseries(
            "Step failure ratio by capability",
            "Failed step results / all step results, by capability. Filtered by $capability.",
            units.PercentUnit,
            [
                q(
                    f"sum by (capability) (rate({failed}{RATE}))"
                    f" / sum by (capability) (rate({steps}{RATE}))",
                    "{{capability}}",
                )
            ],
        ),
        timeseries(
            "Step results/s by outcome",
            "Step results per second by capability and outcome (ok, failed). "
            "Filtered by $capability.",
            units.Short,
            [
                q(
                    f"sum by (capability, outcome) (rate({steps}{RATE}))",
                    "{{capability}} {{outcome}}",
                )
            ],
            axis_label="steps/s",
        ),
        timeseries(
            "Step retries/s by capability",
            "Redeliveries and re-attempts of steps per second, by capability, and the "
            "runs that died mid-way and ran again (their calls are still counted). "
            "Filtered by $capability.",
            units.Short,
            [
                q(f"sum by (capability) (rate({retries}{RATE}))", "{{capability}}"),
                q(
                    f"sum by (capability) (rate({repeated}{RATE}))",
                    "{{capability}} repeated runs",
                ),
            ],
            axis_label="retries/s",
        ),
        timeseries(
            "Provider calls by outcome",
            "LLM provider calls per second by outcome (ok, failed, rate_limited, cancelled; "
            "cancelled includes the losing request of a hedge). Stacked. "
            "Filtered by $capability and $model.",
            units.RequestsPerSecond,
            [q(f"sum by (outcome) (rate({calls}{RATE}))", "{{outcome}}")],
            span=12,
            stacked=True,
            colors={
                "ok": "green",
                "failed": "red",
                "rate_limited": "orange",
                "cancelled": "text",
            },
        ),
        timeseries(
            "Provider error ratio by provider",
            "(failed + rate_limited) / all provider calls, by provider; cancelled calls are "
            "not errors. Filtered by $capability and $model.",
            units.PercentUnit,
            [
                q(
                    f"sum by (provider) (rate({call_errors}{RATE}))"
                    f" / sum by (provider) (rate({calls}{RATE}))",
                    "{{provider}}",
                )
            ],
            span=12,
        ),
    ]


def circuit_panels() -> list[Stat | StateTimeline]:
    expr = "max by (provider, base_url) (jetagent_circuit_state)"
    legend = "{{provider}} {{base_url}}"
    timeline = (
        StateTimeline()
        .mappings(circuit_mappings())
        .show_value(VisibilityMode.AUTO)
        .merge_values(True)
        .row_height(0.9)
        .fill_opacity(80)
        .line_width(0)
        .legend(VizLegendOptions().show_legend(False))
        .thresholds(
            ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps([Threshold(color="green")])
        )
    )
    return [
        stat(
            "Circuit state now",
            "Current circuit-breaker state per provider endpoint: closed (calls flow), "
            "open (calls fail fast), half-open (probing).",
            units.NoUnit,
            [q(expr, legend, instant=True)],
            mappings=circuit_mappings(),
            span=8,
            height=8,
        ),
        _panel(
            timeline,
            "Circuit state over time",
            "Circuit-breaker state per provider endpoint over time: closed, open, half-open.",
            units.NoUnit,
            [q(expr, legend)],
            span=16,
            height=8,
        ),
    ]


def workflow_panels() -> list[Timeseries | BarGauge]:
    workflows = sel("jetagent_workflows_total", TENANT)
    return [
        timeseries(
            "Workflow outcomes per minute",
            "Workflows ended per minute by outcome: finalized, terminated (a cap or a "
            "failure), cancelled, rejected (never started). Stacked. Filtered by $tenant.",
            units.Short,
            [q(f"sum by (outcome) (rate({workflows}{RATE})) * 60", "{{outcome}}")],
            span=12,
            axis_label="workflows / min",
            stacked=True,
            bars=True,
            colors={
                "finalized": "green",
                "terminated": "red",
                "cancelled": "text",
                "rejected": "orange",
            },
        ),
        bargauge(
            "Termination reasons in range",
            "Terminated workflows over the selected time range by reason (token_cap, "
            "cost_cap, max_iterations, deadline, step_failed, invalid_output). "
            "Not filtered by tenant: the metric has no tenant label.",
            units.Short,
            q(
                "sort_desc(sum by (reason) "
                f"(increase(jetagent_workflow_terminations_total{RANGE})))",
                "{{reason}}",
                instant=True,
            ),
            span=12,
        ),
        timeseries(
            "Active workflows by tenant",
            "Workflows started and not yet ended, by tenant. Filtered by $tenant.",
            units.Short,
            [q(f"sum by (tenant) ({sel('jetagent_workflows_active', TENANT)})", "{{tenant}}")],
            span=12,
            axis_label="workflows",
        ),
        timeseries(
            "Dead letters per minute by source",
            "Messages sent to the dead-letter stream per minute, by source.",
            units.Short,
            [
                q(
                    f"sum by (source) (rate(jetagent_dead_letters_total{RATE})) * 60",
                    "{{source}}",
                )
            ],
            span=12,
            axis_label="messages / min",
            bars=True,
        ),
    ]


def lag_panels() -> list[Timeseries]:
    return [
        timeseries(
            "Consumer pending messages",
            "Messages in the stream not yet delivered to each consumer (JetStream "
            "num_pending): the backlog a capability's workers have yet to pick up.",
            units.Short,
            [
                q(
                    "sum by (stream, consumer) (jetagent_consumer_pending_messages)",
                    "{{stream}} / {{consumer}}",
                )
            ],
            span=12,
            axis_label="messages",
        ),
        timeseries(
            "Consumer ack-pending messages",
            "Messages delivered to each consumer but not yet acknowledged: work in "
            "progress, or stuck when it stays high.",
            units.Short,
            [
                q(
                    "sum by (stream, consumer) (jetagent_consumer_ack_pending_messages)",
                    "{{stream}} / {{consumer}}",
                )
            ],
            span=12,
            axis_label="messages",
        ),
        timeseries(
            "Projection lag",
            "Events in each stream that the projections have not applied yet.",
            units.Short,
            [q("max by (stream) (jetagent_projection_lag_events)", "{{stream}}")],
            span=12,
            axis_label="events",
        ),
        timeseries(
            "Projection throughput",
            "Events applied per second by the projections, per stream (derivative of the "
            "last applied stream sequence).",
            units.Short,
            [
                q(
                    f"max by (stream) (deriv(jetagent_projection_applied_sequence{RATE}))",
                    "{{stream}}",
                )
            ],
            span=12,
            axis_label="events/s",
        ),
    ]


def build_dashboard() -> Dashboard:
    """The dashboard model, with panel ids numbered in layout order."""
    builder = (
        DashboardBuilder("jetagent")
        .uid(UID)
        .description(
            "Cost, tokens, step latency, errors, circuit breakers, backlog and workflow "
            "outcomes of jetagent (metrics of projections.costs)."
        )
        .tags(["jetagent", "generated"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .timepicker(TimePicker().refresh_intervals(["10s", "30s", "1m", "5m", "15m", "1h"]))
        .annotation(
            AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .variables(list(variables()))
    )
    sections: list[tuple[str, Sequence[Timeseries | Stat | BarGauge | StateTimeline]]] = [
        ("Overview", overview()),
        ("Cost", cost_panels()),
        ("Tokens", token_panels()),
        ("Step latency", latency_panels()),
        ("Errors and retries", error_panels()),
        ("Circuit breakers", circuit_panels()),
        ("Workflows", workflow_panels()),
        ("Backlog and lag", lag_panels()),
    ]
    for title, panels in sections:
        builder = builder.with_row(Row(title))
        for panel in panels:
            builder = builder.with_panel(panel)
    dashboard = builder.build()
    for number, built in enumerate(dashboard.panels or [], start=1):
        built.id_val = number
    return dashboard


def render() -> str:
    """The dashboard as JSON text: sorted keys, two-space indent, a final newline."""
    encoder = JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False)
    return encoder.encode(build_dashboard()) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the checked-in dashboards/jetagent.json differs from the generated JSON",
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is stale: run `python deploy/grafana/dashboard.py`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text, encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
