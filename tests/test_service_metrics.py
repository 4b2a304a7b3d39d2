"""Every service serves ``/metrics`` of its own (issue 14, "Metrics").

The orchestrator, each worker, the projections and the gateway each expose a registry of
their own on their own port: the process collectors (``process_*``, ``python_*``), a
``jetagent_build_info`` series naming the service, and what the service alone knows — a
worker's steps in flight and every provider call of every run as it happens, the
orchestrator's decisions, conflicts and backlog, the gateway's requests. Label sets
known at start are there at 0 before their first event, so ``increase()`` sees the first
one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from capabilities.tools.capability import tools_capability
from jetagent.config import Settings
from jetagent.embedded import free_port
from jetagent.events import StepScheduled
from jetagent.jetstream import connect
from jetagent.models import ModelCatalog
from jetagent.orchestrator import Orchestrator
from jetagent.testing import eventually, tools_registered
from jetagent.worker._runtime import Worker
from projections.costs import MetricsCollector, MetricsState
from projections.known import known_label_sets, known_routes
from projections.service import ProjectionService
from tests.support.cli import cli_env, run_cli
from tests.support.platform import service_processes
from tests.support.tools import TEST_TOOLS

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _scrape(port: int) -> Samples | None:
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(f"http://127.0.0.1:{port}/metrics")
    except httpx.HTTPError:
        return None  # not listening yet
    return _parse(response.text) if response.status_code == 200 else None


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def _registry_value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_every_service_serves_its_own_metrics(settings: Settings, tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("orchestrator", "tools", "projections", "gateway")}
    gateway_port = free_port()
    async with service_processes(settings.nats_url, settings.prefix, tmp_path) as procs:
        procs.start("orchestrator", "orchestrator", env=_port(ports["orchestrator"]))
        procs.start("tools", "worker", "tools", env=_port(ports["tools"]))
        procs.start("projections", "projections", "run", env=_port(ports["projections"]))
        procs.start(
            "gateway",
            "gateway",
            env={
                **_port(ports["gateway"]),
                "JETAGENT_GATEWAY_PORT": str(gateway_port),
                "JETAGENT_GATEWAY_TOKENS": "tok-metrics-1=default",
            },
        )
        scraped: dict[str, Samples] = {}

        async def all_serve() -> bool:
            for name, port in ports.items():
                samples = await _scrape(port)
                if samples is None:
                    return False
                scraped[name] = samples
            return True

        await eventually(all_serve, timeout=60, alive=procs.check_alive, what="every /metrics")
        # One request through the gateway, to be counted there.
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"http://127.0.0.1:{gateway_port}/healthz")).status_code == 200

        for service, samples in scraped.items():
            kind = "worker" if service == "tools" else service
            assert "process_resident_memory_bytes" in _names(samples), service
            assert "python_info" in _names(samples), service
            builds = [
                dict(labels)
                for name, labels in samples
                if name == "jetagent_build_info" and dict(labels).get("service") == kind
            ]
            assert len(builds) == 1, (service, builds)
            assert {"version", "python", "service"} <= set(builds[0]), builds
        tools = scraped["tools"]
        assert _value(tools, "jetagent_worker_steps_in_flight", capability="tools") == 0
        for outcome in ("completed", "failed", "retried"):
            labels = {"capability": "tools", "outcome": outcome}
            assert _value(tools, "jetagent_worker_deliveries_total", **labels) == 0, outcome
        assert (
            _value(tools, "jetagent_worker_dead_letters_total", capability="tools", kind="failed")
            == 0
        )
        orchestrator = scraped["orchestrator"]
        assert (
            _value(
                orchestrator,
                "jetagent_orchestrator_decisions_total",
                input="request",
                outcome="recorded",
            )
            == 0
        )
        assert "jetagent_orchestrator_conflicts_total" in _names(orchestrator)

        async def lag_polled() -> bool:
            samples = await _scrape(ports["orchestrator"]) or {}
            return (
                _value(
                    samples,
                    "jetagent_orchestrator_consumer_pending_messages",
                    consumer="orchestrator-requests",
                )
                is not None
            )

        await eventually(lag_polled, timeout=30, what="the orchestrator's consumer lag")

        async def request_counted() -> bool:
            samples = await _scrape(ports["gateway"]) or {}
            labels = {"route": "/healthz", "method": "GET", "status": "2xx"}
            return (_value(samples, "jetagent_gateway_requests_total", **labels) or 0) >= 1

        await eventually(request_counted, timeout=10, what="the gateway's request counter")


def _port(port: int) -> dict[str, str]:
    return {"JETAGENT_METRICS_PORT": str(port)}


async def test_a_step_run_three_times_counts_three_calls_in_the_worker(
    settings: Settings,
) -> None:
    """Every provider call of every run shows in the worker's own counter as it happens,
    and the projection (which counts the calls of each recorded StepResult) agrees."""
    settings = settings.model_copy(
        update={"step_max_deliver": 4, "step_retry_base_s": 0.05, "worker_concurrency": 4}
    )
    catalog = ModelCatalog.load()
    nc = await connect(settings.nats_url, name="test-worker-metrics")
    stop = asyncio.Event()
    orchestrator = Orchestrator(nc, settings, catalog=catalog)
    worker = Worker(nc, settings, [_reasoning(catalog), tools_capability(TEST_TOOLS)])
    await worker.setup()
    tasks = [asyncio.create_task(orchestrator.run(stop)), asyncio.create_task(worker.run(stop))]
    try:
        from jetagent.client import Client

        client = await Client.connect(settings.nats_url, settings=settings)
        try:
            await eventually(lambda: tools_registered(client.js, settings, "flaky_twice"))
            wid = await client.submit(
                instruction='call flaky_twice {"note": "x"}', allowed_tools=["flaky_twice"]
            )
            result = await client.result(wid, timeout=60)
            assert result.ok, result
            [step] = [r for r in await client.step_results(wid) if r.tool == "flaky_twice"]
            assert step.deliveries == 3
            assert [c.model for c in step.calls] == ["flaky-model"] * 3

            registry = worker.metrics.registry
            calls = _registry_value(
                registry,
                "jetagent_worker_provider_calls_total",
                capability="tools",
                model="flaky-model",
                provider="test",
                outcome="ok",
            )
            assert calls == 3
            retried = {"capability": "tools", "reason": "transient"}
            assert _registry_value(registry, "jetagent_worker_retries_total", **retried) == 2
            delivered = {"capability": "tools"}
            assert (
                _registry_value(
                    registry, "jetagent_worker_deliveries_total", outcome="retried", **delivered
                )
                == 2
            )
            assert (
                _registry_value(
                    registry, "jetagent_worker_deliveries_total", outcome="completed", **delivered
                )
                >= 1
            )
            assert _registry_value(registry, "jetagent_worker_steps_in_flight", **delivered) == 0
            handled = _registry_value(
                registry, "jetagent_worker_handler_seconds_count", outcome="error", **delivered
            )
            assert handled == 2

            # The record-derived total (projections) counts the same three calls.
            projections = ProjectionService(client.nc, settings, catalog=catalog)
            await projections.rebuild()
            derived = {
                key: value for key, value in projections.metrics.calls.items() if "flaky" in key
            }
            assert list(derived.values()) == [3], derived

            # The orchestrator decided on each input it recorded something for.
            decided = _registry_value(
                orchestrator.metrics.registry,
                "jetagent_orchestrator_decisions_total",
                input="request",
                outcome="recorded",
            )
            assert decided == 1
        finally:
            await client.close()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await nc.close()


def _reasoning(catalog: ModelCatalog):  # type: ignore[no-untyped-def]
    from capabilities.reasoning.capability import reasoning_capabilities

    return reasoning_capabilities(catalog)[0]


def test_known_label_sets_start_at_zero() -> None:
    """Before any event: a worker's, the orchestrator's and the projection's counters for
    every capability, outcome and reason known at start are there, at 0."""
    from jetagent.orchestrator._metrics import OrchestratorMetrics
    from jetagent.worker._metrics import WorkerMetrics

    worker = WorkerMetrics(["tools", "reasoning"]).registry
    for capability in ("tools", "reasoning"):
        for kind in ("failed", "poison"):
            labels = {"capability": capability, "kind": kind}
            assert _registry_value(worker, "jetagent_worker_dead_letters_total", **labels) == 0
        for reason in ("transient", "error", "rate_limited"):
            labels = {"capability": capability, "reason": reason}
            assert _registry_value(worker, "jetagent_worker_retries_total", **labels) == 0
        labels = {"capability": capability, "outcome": "ok"}
        assert _registry_value(worker, "jetagent_worker_handler_seconds_count", **labels) == 0

    orchestrator = OrchestratorMetrics().registry
    for kind in ("request", "step_result", "timer", "cancel", "signal"):
        for outcome in ("recorded", "unchanged"):
            labels = {"input": kind, "outcome": outcome}
            value = _registry_value(orchestrator, "jetagent_orchestrator_decisions_total", **labels)
            assert value == 0, labels
        for outcome in ("ok", "retried", "dead_lettered"):
            labels = {"input": kind, "outcome": outcome}
            value = _registry_value(orchestrator, "jetagent_orchestrator_inputs_total", **labels)
            assert value == 0, labels

    # The projection: installed capabilities at 0 before any event (a dead letter of the
    # tools worker would otherwise appear at 1, invisible to increase()).
    state = MetricsState()
    registry = CollectorRegistry()
    known = known_label_sets(tenants=frozenset({"acme"}), streams=["JA_WORKFLOWS"])
    known |= known_routes(["tools", "reasoning"], [("gpt-x", "openai")], frozenset({"acme"}))
    registry.register(
        MetricsCollector(state, _live(), known=known, capabilities=["tools", "reasoning"])
    )
    for capability in ("tools", "reasoning"):
        assert _registry_value(registry, "jetagent_dead_letters_total", source=capability) == 0
        for outcome in ("ok", "failed"):
            labels = {"capability": capability, "outcome": outcome}
            assert _registry_value(registry, "jetagent_steps_total", **labels) == 0
        assert _registry_value(registry, "jetagent_step_retries_total", capability=capability) == 0
        labels = {"capability": capability}
        assert _registry_value(registry, "jetagent_step_repeated_runs_total", **labels) == 0
        assert _registry_value(registry, "jetagent_step_duration_seconds_count", **labels) == 0
    assert _registry_value(registry, "jetagent_workflows_active", tenant="acme") == 0
    # Each catalog model's calls (its first failure), tokens and cost per tenant.
    route = {"capability": "reasoning", "model": "gpt-x", "provider": "openai"}
    for outcome in ("ok", "failed", "rate_limited", "cancelled"):
        labels = {**route, "outcome": outcome}
        assert _registry_value(registry, "jetagent_provider_calls_total", **labels) == 0
    assert _registry_value(registry, "jetagent_cost_usd_total", tenant="acme", **route) == 0
    for kind in ("input", "cached", "output"):
        labels = {**route, "tenant": "acme", "kind": kind}
        assert _registry_value(registry, "jetagent_tokens_total", **labels) == 0
    # A capability nobody installed here shows once a step of it is scheduled.
    custom = {"capability": "custom", "outcome": "ok"}
    assert _registry_value(registry, "jetagent_steps_total", **custom) is None
    state.apply_workflow_event(_scheduled("custom"))
    assert _registry_value(registry, "jetagent_steps_total", **custom) == 0


def _live():  # type: ignore[no-untyped-def]
    from projections.costs import LiveGauges

    return LiveGauges()


def _scheduled(capability: str) -> StepScheduled:
    from datetime import UTC, datetime

    from jetagent.events import Spend

    return StepScheduled(
        workflow_id="w1",
        at=datetime(2025, 1, 1, tzinfo=UTC),
        step_id="s1",
        capability=capability,
        iteration=1,
        input={},
        reservation=Spend(),
        tenant="acme",
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_metrics_port_in_use_is_a_clear_error(settings: Settings, taken_port: int) -> None:
    env = cli_env(settings.nats_url, settings.prefix, JETAGENT_METRICS_PORT=str(taken_port))
    result = run_cli("orchestrator", env=env, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"127.0.0.1:{taken_port}" in result.stderr, result.stderr
    assert "JETAGENT_METRICS_PORT" in result.stderr, result.stderr


def test_up_gives_each_service_a_metrics_port() -> None:
    from jetagent.cli._up import Platform, ServiceProcess
    from jetagent.errors import ConfigError

    services = [
        ServiceProcess("orchestrator", ["orchestrator"]),
        ServiceProcess("tools", ["worker", "tools"]),
        ServiceProcess("projections", ["projections", "run"]),
        ServiceProcess("gateway", ["gateway"]),
    ]
    # The projections keep the configured port (the documented URL); the others follow.
    ports = Platform(Settings(metrics_port=9464), services).metrics_ports()
    assert ports == {"projections": 9464, "orchestrator": 9465, "tools": 9466, "gateway": 9467}
    # 0: a free port each, all different.
    free = Platform(Settings(metrics_port=0), services).metrics_ports()
    assert len(set(free.values())) == 4
    assert 0 not in free.values()
    with pytest.raises(ConfigError, match="JETAGENT_METRICS_PORT=65534"):
        Platform(Settings(metrics_port=65534), services).metrics_ports()
