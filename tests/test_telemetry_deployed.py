"""Traces and logs of the services as deployed: each its own ``jetagent`` process,
exporting spans by OTLP/HTTP to a collector (a real receiver on loopback) and logging
JSON lines (README "Traces", "Logs").

One platform serves the module: an orchestrator and the tools worker started with
``--log-format json``, the reasoning worker with ``JETAGENT_LOG_FORMAT=json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import trace

from jetagent import RequestRejectedError
from jetagent.client import Client
from jetagent.config import Settings
from jetagent.embedded import EmbeddedServer
from jetagent.testing import ServiceProcesses, eventually, tools_registered, unique_name
from tests.fakes.otlp import OtlpHttpReceiver, ReceivedSpan
from tests.support.platform import service_processes
from tests.support.tracing import attributes, host_tracing

SERVICES = {
    # name: (arguments, extra environment)
    "orchestrator": (["--log-format", "json", "orchestrator"], {}),
    "tools": (["--log-format", "json", "worker", "tools"], {}),
    "reasoning": (["worker", "reasoning"], {"JETAGENT_LOG_FORMAT": "json"}),
}
SERVICE_NAMES = {
    "orchestrator": "jetagent-orchestrator",
    "tools": "jetagent-worker-tools",
    "reasoning": "jetagent-worker-reasoning",
}


@dataclass
class Deployed:
    settings: Settings
    services: ServiceProcesses
    collector: OtlpHttpReceiver


@pytest.fixture(scope="module")
def deployed(
    nats_server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    settings = Settings(nats_url=nats_server.url, prefix=unique_name("tel").lower()[:12])
    env = {
        # Spans leave in batches every 100 ms instead of 5 s, so the test waits less.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "JETAGENT_STEP_RETRY_BASE_S": "0.05",
    }
    for stray in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SDK_DISABLED"):
        env[stray] = ""  # whatever the machine running the tests sets
    with OtlpHttpReceiver() as collector:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.endpoint
        log_dir = tmp_path_factory.mktemp("services")
        with service_processes(settings.nats_url, settings.prefix, log_dir, env) as services:
            for name, (args, extra) in SERVICES.items():
                services.start(name, *args, env=extra)
            yield Deployed(settings, services, collector)


@pytest.fixture
async def client(deployed: Deployed) -> AsyncIterator[Client]:
    settings = deployed.settings
    client = await Client.connect(settings.nats_url, settings=settings)
    try:
        await eventually(
            lambda: tools_registered(client.js, settings, "calculator", "stumbling"),
            timeout=60,
            alive=deployed.services.check_alive,
        )
        yield client
    finally:
        await client.close()


async def test_one_trace_from_the_callers_span_through_every_service(
    deployed: Deployed, client: Client
) -> None:
    # The caller is an application with OpenTelemetry of its own (W3C propagation, the
    # default): its span, then jetagent's submit, in its own pipeline.
    with host_tracing(service="checkout") as exported:
        with trace.get_tracer("checkout").start_as_current_span("checkout order 17") as mine:
            wid = await client.submit(
                instruction="What is 6 * 7? Then add 1 to the result", tenant="acme"
            )
        assert (await client.result(wid, timeout=60)).ok
        steps = await client.step_results(wid)
    trace_id = f"{mine.get_span_context().trace_id:032x}"

    def complete(spans: list[ReceivedSpan]) -> bool:
        # Every decision (the request's and one per step result) and every step.
        of_trace = [s for s in spans if s.trace_id == trace_id]
        decisions = [s for s in of_trace if s.name == "jetagent orchestrate step"]
        runs = [s for s in of_trace if s.name.startswith("jetagent step ")]
        return len(decisions) == len(runs) == len(steps) and any(
            s.name == "jetagent orchestrate request" for s in of_trace
        )

    received = deployed.collector.wait_for(complete, timeout=30)
    theirs = [s for s in received if s.trace_id == trace_id]
    # The caller's two spans are in the same trace, the submit under the caller's span.
    local = exported.get_finished_spans()
    assert {f"{s.context.trace_id:032x}" for s in local} == {trace_id}
    [submit] = [s for s in local if s.name == "jetagent submit"]
    assert attributes(submit)["jetagent.workflow_id"] == wid
    # Every span the services exported for this workflow is in the caller's trace, and
    # hangs off another span of it.
    of_workflow = [s for s in received if s.attributes.get("jetagent.workflow_id") == wid]
    assert {s.trace_id for s in of_workflow} == {trace_id}
    known = {s.span_id for s in theirs} | {f"{s.context.span_id:016x}" for s in local}
    for span in theirs:
        assert span.parent_span_id in known, span.name
        assert span.attributes["jetagent.workflow_id"] == wid, span.name
        assert span.attributes["jetagent.tenant"] == "acme", span.name
    # Each service names itself, a worker by its capability.
    for span in theirs:
        if span.name.startswith("jetagent orchestrate "):
            assert span.service == "jetagent-orchestrator", span
        elif span.name.startswith("jetagent step "):
            capability = span.attributes["jetagent.capability"]
            assert span.service == f"jetagent-worker-{capability}", span
        else:
            assert span.name == "chat offline-planner", span
            assert span.service == "jetagent-worker-reasoning", span
        assert span.resource.get("service.version"), span.resource
    assert {s.service for s in theirs} == {
        "jetagent-orchestrator",
        "jetagent-worker-reasoning",
        "jetagent-worker-tools",
    }


# -- JSON logs --------------------------------------------------------------------------


def json_lines(services: ServiceProcesses, name: str) -> list[dict[str, Any]]:
    """Every line the service printed, each parsed as a JSON object (any other line fails)."""
    lines = []
    for number, line in enumerate(services.log(name).splitlines(), 1):
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{name} line {number} is not JSON: {line!r}") from None
        assert isinstance(parsed, dict), line
        for field in ("timestamp", "level", "logger", "message"):
            assert field in parsed, f"{name} line {number} has no {field}: {line}"
        assert parsed["service"] == SERVICE_NAMES[name], line
        lines.append(parsed)
    return lines


async def test_json_log_lines_parse_and_carry_the_ids(deployed: Deployed, client: Client) -> None:
    # A step that fails twice for now (the tools worker logs each retry), and a request
    # the orchestrator rejects (it logs the rejection).
    wid = await client.submit(
        instruction='call stumbling {"fails": 2, "retry_after": 0.05}',
        tenant="acme",
        allowed_tools=["stumbling"],
    )
    assert (await client.result(wid, timeout=60)).ok
    rejected = await client.submit(
        instruction="anything", tenant="acme", allowed_tools=["no_such_tool"]
    )
    with pytest.raises(RequestRejectedError):
        await client.result(rejected, timeout=30)
    [step] = [r for r in await client.step_results(wid) if r.tool == "stumbling"]

    async def retries_logged() -> list[dict[str, Any]]:
        lines = json_lines(deployed.services, "tools")
        return [line for line in lines if "again in" in line["message"]]

    retries = await eventually(retries_logged, timeout=10)
    assert len(retries) == 2
    for line in retries:
        assert line["level"] == "INFO"
        assert line["logger"] == "jetagent.worker"
        assert line["workflow_id"] == wid
        assert line["step_id"] == step.step_id
        assert (line["capability"], line["tool"], line["tenant"]) == ("tools", "stumbling", "acme")
        assert re.search(r"again in 0\.05 s$", line["message"]), line["message"]
    # Each line names the trace and span of the step's run: logs and traces join on them.
    runs = deployed.collector.wait_for(lambda spans: len(_runs_of(spans, wid)) == 3, timeout=30)
    assert {(line["trace_id"], line["span_id"]) for line in retries} < {
        (s.trace_id, s.span_id) for s in _runs_of(runs, wid)
    }

    async def rejection_logged() -> list[dict[str, Any]]:
        lines = json_lines(deployed.services, "orchestrator")
        return [line for line in lines if line.get("workflow_id") == rejected]

    [rejection] = await eventually(rejection_logged, timeout=10)
    assert rejection["message"].startswith(f"rejected request {rejected}")
    assert rejection["tenant"] == "acme"
    # The reasoning worker (JSON by its environment variable) logs JSON only, too.
    reasoning = json_lines(deployed.services, "reasoning")
    assert any("serving reasoning" in line["message"] for line in reasoning)


def _runs_of(spans: list[ReceivedSpan], wid: str) -> list[ReceivedSpan]:
    """The spans of the runs of the tools steps of workflow ``wid``."""
    return [
        s
        for s in spans
        if s.name == "jetagent step tools" and s.attributes.get("jetagent.workflow_id") == wid
    ]
