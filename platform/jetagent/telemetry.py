"""OpenTelemetry tracing: one workflow is one trace, across every service — and, when the
application that submits it traces, one trace with the application's own spans.

jetagent is a library here, and uses only OpenTelemetry's API, by the ecosystem's
convention: spans come from the global tracer provider (``trace.get_tracer``) and trace
context travels through the global propagator (``opentelemetry.propagate``). So an
application that configured OpenTelemetry gets jetagent's spans in its own pipeline,
under its own current span, with its own propagator; jetagent's service processes
configure the SDK themselves, only when nothing else did (:mod:`jetagent.cli._telemetry`,
from the standard ``OTEL_*`` variables).

The context travels in NATS message headers: ``submit()`` opens a span and injects it
into the request; the orchestrator continues it for each input and stamps its span on
the events it appends; a worker continues it for the step and stamps its span on the
``StepResult``; model calls are child spans of the step with the GenAI semantic-convention
attributes. Every span carries the ids of the work in hand (``jetagent.workflow_id``,
``jetagent.step_id``, ``jetagent.capability``, ``jetagent.tool``, ``jetagent.tenant``;
:mod:`jetagent.correlation`).

With no tracer provider configured anywhere, nothing is recorded and a service still
passes the trace context it received on to the messages it writes, so the services that
do trace stay in one trace.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Tracer

from jetagent import correlation

__all__ = [
    "enabled",
    "extract",
    "inject",
    "model_call_span",
    "span",
    "tracer",
]

try:
    _VERSION = version("jetagent")
except PackageNotFoundError:  # running from a source tree that was never installed
    _VERSION = "0"

_tracer: tuple[trace.TracerProvider, Tracer] | None = None


def enabled() -> bool:
    """Whether a tracer provider is configured (the host application's, or the one a
    jetagent service set up); until then spans cost nothing (none is even created)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def tracer() -> Tracer:
    """jetagent's tracer from the global tracer provider (kept while that provider is)."""
    global _tracer
    provider = trace.get_tracer_provider()
    if _tracer is None or _tracer[0] is not provider:
        _tracer = (provider, provider.get_tracer("jetagent", _VERSION))
    return _tracer[1]


_fields_of: tuple[object, frozenset[str]] | None = None


def _fields() -> frozenset[str]:
    """The headers the global propagator reads and writes (``traceparent``, …), kept
    while that propagator is (a composite one builds the set anew on each call)."""
    global _fields_of
    textmap = propagate.get_global_textmap()
    if _fields_of is None or _fields_of[0] is not textmap:
        _fields_of = (textmap, frozenset(textmap.fields))
    return _fields_of[1]


def inject(headers: dict[str, str], *, parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """Add the current trace context to message headers, with the global propagator.
    With no span to inject (tracing off), pass the ``parent`` message's context along, so
    a trace stays connected through this service."""
    if enabled():
        propagate.inject(headers)
    if parent is not None:
        fields = _fields()
        if not fields.intersection(headers):
            headers.update({key: parent[key] for key in fields if key in parent})
    return headers


def extract(headers: Mapping[str, str] | None) -> Context | None:
    """The trace context carried by message headers: ``None`` when there are no headers
    (the current context applies), else the message's context (empty when it carries
    none: its span then starts a trace of its own)."""
    if headers is None:
        return None
    if not _fields().intersection(headers):
        return Context()
    return propagate.extract(headers)


@contextmanager
def span(
    name: str,
    *,
    parent: Mapping[str, str] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Span]:
    """A span with the ids of the work in hand, continuing the trace of the ``parent``
    message headers when given (else the current span's)."""
    if not enabled():  # tracing off: not even the API's no-op span (a hot path)
        yield trace.INVALID_SPAN
        return
    with tracer().start_as_current_span(
        name,
        context=extract(parent),
        kind=kind,
        attributes={**correlation.span_attributes(), **(attributes or {})},
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
    """Record one provider call as a span (a child of the current one, the step's) with
    the GenAI semantic-convention attributes: ``chat {model}``, kind CLIENT,
    ``gen_ai.provider.name`` (which replaced the deprecated ``gen_ai.system``)."""
    if not enabled():
        return
    attributes: dict[str, str | int] = {
        **correlation.span_attributes(),
        "gen_ai.operation.name": "chat",
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
