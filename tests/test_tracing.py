"""One workflow is one connected trace across the client, orchestrator and workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jetagent import telemetry
from jetagent.config import Settings
from tests.support.platform import InProcessPlatform


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.configure(provider)
    try:
        yield exporter
    finally:
        telemetry.configure(None)
        provider.shutdown()


async def test_one_workflow_is_one_connected_trace(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    platform = await InProcessPlatform(settings).start()
    try:
        spans.clear()  # setup noise
        wid = await platform.client.submit(
            instruction="What is 6 * 7? Then add 1 to the result", tenant="acme"
        )
        assert (await platform.client.result(wid, timeout=20)).ok
    finally:
        await platform.stop()
    finished = spans.get_finished_spans()
    submit = next(s for s in finished if s.name == "jetagent submit")
    trace_id = submit.context.trace_id
    ours = [s for s in finished if s.context.trace_id == trace_id]
    names = {s.name for s in ours}
    assert "jetagent orchestrate request" in names
    assert "jetagent orchestrate step" in names
    assert {"jetagent step reasoning", "jetagent step tools"} <= names
    # Every span of the trace hangs off another span of it (one connected tree).
    ids = {s.context.span_id for s in ours}
    for span in ours:
        if span is not submit:
            assert span.parent is not None
            assert span.parent.span_id in ids, span.name
    # No span of this workflow's steps started a trace of its own.
    steps = [s for s in finished if s.name.startswith("jetagent step")]
    assert {s.context.trace_id for s in steps} == {trace_id}
    # Model calls carry the GenAI semantic-convention attributes.
    chats = [s for s in ours if s.name == "chat offline-planner"]
    assert chats
    attributes = chats[0].attributes or {}
    assert attributes["gen_ai.request.model"] == "offline-planner"
    assert attributes["gen_ai.system"] == "offline"
    assert int(attributes["gen_ai.usage.input_tokens"]) > 0  # type: ignore[arg-type]
    assert int(attributes["gen_ai.usage.output_tokens"]) > 0  # type: ignore[arg-type]
