"""A host application's OpenTelemetry set-up, as an application that uses jetagent as a
library does it: its own global tracer provider (spans kept in memory) and, optionally,
its own global propagator.

OpenTelemetry lets a process set its global tracer provider once; tests that each play
a host application reset it afterwards, as OpenTelemetry's own test utilities do
(``opentelemetry.test.globals_test.reset_trace_globals``, not a dependency here).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.util._once import Once

HOST_HEADER = "x-host-trace"


class HostPropagator(TextMapPropagator):
    """A propagator of the host's own (not W3C ``traceparent``): ``x-host-trace:
    <trace id>-<span id>``. A trace that stays whole through jetagent with it proves
    jetagent propagates with the global propagator, not one of its own."""

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            value = f"{span_context.trace_id:032x}-{span_context.span_id:016x}"
            setter.set(carrier, HOST_HEADER, value)

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        found = getter.get(carrier, HOST_HEADER)
        if not found:
            return context or Context()
        trace_id, _, span_id = found[0].partition("-")
        remote = SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        return trace.set_span_in_context(NonRecordingSpan(remote), context)

    @property
    def fields(self) -> set[str]:
        return {HOST_HEADER}


def reset_global_provider() -> None:
    """Forget the global tracer provider (so the next test may set one)."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@contextmanager
def host_tracing(
    *, service: str = "host-app", propagator: TextMapPropagator | None = None
) -> Iterator[InMemorySpanExporter]:
    """The host application's global tracer provider (and ``propagator``, if given) for
    the block; its finished spans are in the exporter yielded."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reset_global_provider()
    trace.set_tracer_provider(provider)
    before = propagate.get_global_textmap()
    if propagator is not None:
        propagate.set_global_textmap(propagator)
    try:
        yield exporter
    finally:
        propagate.set_global_textmap(before)
        reset_global_provider()
        provider.shutdown()


def attributes(span: ReadableSpan) -> Mapping[str, object]:
    """A finished span's attributes (never None)."""
    return span.attributes or {}
