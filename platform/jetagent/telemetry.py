"""OpenTelemetry tracing: one workflow is one trace, across every service.

``traceparent`` (W3C Trace Context) travels in NATS message headers: ``submit()`` starts
the trace; the orchestrator continues it for each input and stamps its span on the
events it appends; a worker continues it for the step and stamps its span on the
``StepResult``; so spans of the client, every orchestrator decision and every step link
into one trace. Model calls get spans with the GenAI semantic-convention attributes
(``gen_ai.request.model``, ``gen_ai.usage.input_tokens`` ...).

Off by default (the no-op tracer costs nearly nothing). Export is configured by the
standard variables: set ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) to send spans by OTLP/HTTP; ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SDK_DISABLED`` work as everywhere else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "configure",
    "extract",
    "inject",
    "model_call_span",
    "setup_from_environment",
    "span",
    "tracer",
]

_propagator = TraceContextTextMapPropagator()
_provider: trace.TracerProvider | None = None


def configure(provider: trace.TracerProvider | None) -> None:
    """Use ``provider`` for jetagent's spans (tests pass one with an in-memory exporter)."""
    global _provider
    _provider = provider


def enabled() -> bool:
    """Whether spans are recorded (a provider is configured)."""
    return _provider is not None


def tracer() -> Tracer:
    return trace.get_tracer("jetagent", tracer_provider=_provider)


def setup_from_environment(service: str) -> TracerProvider | None:
    """Export spans by OTLP when the standard ``OTEL_*`` variables ask for it."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    name = os.environ.get("OTEL_SERVICE_NAME") or f"jetagent-{service}"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    configure(provider)
    return provider


def inject(headers: dict[str, str], *, parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """Add the current span's ``traceparent`` to message headers; with tracing off, pass
    the ``parent`` message's along, so a trace stays connected through this service."""
    if _provider is None:
        if parent is not None and "traceparent" in parent:
            headers["traceparent"] = parent["traceparent"]
        return headers
    _propagator.inject(headers)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The trace context carried by message headers (None if there is none)."""
    if not headers or "traceparent" not in headers:
        return None
    return _propagator.extract(dict(headers))


@contextmanager
def span(
    name: str,
    *,
    parent: Mapping[str, str] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Span]:
    """A span, continuing the trace of ``parent`` message headers when given."""
    if _provider is None:  # tracing off: not even the API's no-op span (a hot path)
        yield trace.INVALID_SPAN
        return
    with tracer().start_as_current_span(
        name, context=extract(parent), kind=kind, attributes=dict(attributes or {})
    ) as current:
        yield current


def model_call_span(
    *,
    provider: str,
    request_model: str,
    response_model: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    max_tokens: int | None,
    outcome: str,
    started: datetime,
    ended: datetime,
    error: str | None = None,
) -> None:
    """Record one provider call as a span with the GenAI semantic-convention attributes."""
    if _provider is None:
        return
    attributes: dict[str, str | int] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": provider,
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": request_model,
        "jetagent.call.outcome": outcome,
    }
    if response_model:
        attributes["gen_ai.response.model"] = response_model
    if input_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = input_tokens
    if output_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = output_tokens
    if max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = max_tokens
    if error:
        attributes["error.type"] = error[:200]
    call = tracer().start_span(
        f"chat {request_model}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        start_time=int(started.timestamp() * 1e9),
    )
    if outcome != "ok":
        call.set_status(trace.StatusCode.ERROR, error or outcome)
    call.end(end_time=int(ended.timestamp() * 1e9))
