"""jetagent traces the way a library should: with the host application's global tracer
provider and propagator, so the application's trace runs through the whole workflow —
client, orchestrator decisions, worker steps, model calls — and every span carries the
workflow's ids (README "Traces"). The services here run in the test's process (their own
processes export by OTLP: tests/test_telemetry_deployed.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from opentelemetry import trace

from jetagent import telemetry
from jetagent.cli import _telemetry
from jetagent.config import Settings
from tests.support.platform import InProcessPlatform
from tests.support.tracing import (
    HOST_HEADER,
    HostPropagator,
    attributes,
    host_tracing,
    reset_global_provider,
)


async def test_a_host_applications_trace_runs_through_the_whole_workflow(
    settings: Settings,
) -> None:
    # The host application configured OpenTelemetry itself, with a propagator of its own.
    with host_tracing(propagator=HostPropagator()) as exported:
        platform = await InProcessPlatform(settings).start()
        try:
            exported.clear()  # setup noise
            with trace.get_tracer("host-app").start_as_current_span("host handles an order"):
                wid = await platform.client.submit(
                    instruction="What is 6 * 7? Then add 1 to the result", tenant="acme"
                )
            assert (await platform.client.result(wid, timeout=20)).ok
            headers = await _headers_of(platform, settings, wid)
            steps = await platform.client.step_results(wid)
        finally:
            await platform.stop()  # every span has ended once the services stopped
        spans = exported.get_finished_spans()

    host = next(s for s in spans if s.name == "host handles an order")
    ours = [s for s in spans if s is not host]
    # One trace, from the host's span through every span of the workflow.
    assert {s.context.trace_id for s in spans} == {host.context.trace_id}
    ids = {s.context.span_id for s in spans}
    for span in ours:
        assert span.parent is not None, span.name
        assert span.parent.span_id in ids, span.name
    submit = next(s for s in ours if s.name == "jetagent submit")
    assert submit.parent is not None
    assert submit.parent.span_id == host.context.span_id
    # The workflow's decisions, steps and model calls are all there.
    names = [s.name for s in ours]
    assert names.count("jetagent orchestrate request") == 1
    assert names.count("jetagent orchestrate step") == len(steps) >= 3
    assert {"jetagent step reasoning", "jetagent step tools"} <= set(names)
    assert names.count("jetagent step reasoning") + names.count("jetagent step tools") == len(steps)
    # Every span carries the workflow's ids; the steps' spans their step's too.
    for span in ours:
        assert attributes(span)["jetagent.workflow_id"] == wid, span.name
        assert attributes(span)["jetagent.tenant"] == "acme", span.name
    by_step = {s.step_id: s for s in steps}
    for span in ours:
        if span.name.startswith(("jetagent step", "jetagent orchestrate step", "chat ")):
            step = by_step[str(attributes(span)["jetagent.step_id"])]
            assert attributes(span)["jetagent.capability"] == step.capability, span.name
            if step.tool:
                assert attributes(span)["jetagent.tool"] == step.tool
    tool_span = next(s for s in ours if s.name == "jetagent step tools")
    assert attributes(tool_span)["gen_ai.tool.name"] == "calculator"
    # Model calls follow the GenAI semantic conventions (gen_ai.provider.name, not the
    # deprecated gen_ai.system).
    chats = [s for s in ours if s.name == "chat offline-planner"]
    assert len(chats) == names.count("jetagent step reasoning")
    for chat in chats:
        attrs = attributes(chat)
        assert attrs["gen_ai.provider.name"] == "offline"
        assert "gen_ai.system" not in attrs
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.request.model"] == "offline-planner"
        assert int(attrs["gen_ai.usage.input_tokens"]) > 0  # type: ignore[call-overload]
        assert int(attrs["gen_ai.usage.output_tokens"]) > 0  # type: ignore[call-overload]
    # The context travelled in the host's own header, never a W3C traceparent.
    assert headers
    assert all(HOST_HEADER in h and "traceparent" not in h for h in headers), headers


async def _headers_of(
    platform: InProcessPlatform, settings: Settings, wid: str
) -> list[dict[str, str]]:
    """The headers of every message of the workflow in JA_WORKFLOWS."""
    js = platform.client.js
    sub = await js.subscribe(
        settings.names.workflow(wid),
        stream=settings.names.workflows_stream,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    try:
        found = []
        while True:
            msg = await sub.next_msg(timeout=5)
            found.append(dict(msg.headers or {}))
            if msg.metadata.num_pending == 0:
                return found
    finally:
        await sub.unsubscribe()


@pytest.fixture
def no_global_provider() -> Iterator[None]:
    """Whatever a test installs as the global tracer provider is gone afterwards."""
    reset_global_provider()
    try:
        yield
    finally:
        provider = trace.get_tracer_provider()
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()
        reset_global_provider()


def test_a_service_sets_up_no_provider_of_its_own_when_the_host_did(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    with host_tracing():
        hosts = trace.get_tracer_provider()
        assert _telemetry.setup("jetagent-worker-tools", short_lived=False) is None
        assert trace.get_tracer_provider() is hosts


def test_a_service_sets_up_the_sdk_from_the_environment_when_nobody_did(
    monkeypatch: pytest.MonkeyPatch, no_global_provider: None
) -> None:
    assert not telemetry.enabled()
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    # Nothing asks for traces: nothing is set up, and spans cost nothing.
    assert _telemetry.setup("jetagent-orchestrator", short_lived=False) is None
    with telemetry.span("nothing") as span:
        assert span is trace.INVALID_SPAN
    # An endpoint asks for them.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    provider = _telemetry.setup("jetagent-orchestrator", short_lived=False)
    assert provider is not None
    assert trace.get_tracer_provider() is provider
    assert provider.resource.attributes["service.name"] == "jetagent-orchestrator"
    assert telemetry.enabled()


def test_with_tracing_off_a_service_passes_the_trace_context_on() -> None:
    # No provider anywhere: a service records nothing, yet the messages it writes carry
    # the context of the message it handles, so services that do trace stay connected.
    assert not telemetry.enabled()
    parent = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    assert telemetry.inject({"Ja-Causation": "x"}, parent=parent) == {
        "Ja-Causation": "x",
        **parent,
    }
