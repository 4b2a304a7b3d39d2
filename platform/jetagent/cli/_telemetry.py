"""The OpenTelemetry SDK for jetagent's own processes (the ``jetagent`` commands), set up
from the standard ``OTEL_*`` variables — and only when nothing else in the process did.

jetagent's library code only uses the API (:mod:`jetagent.telemetry`); an application
entry point is where the SDK is configured, once. Which variables are read here and
which by the SDK's own classes (measured: docs/ARCHITECTURE.md §Traces and logs):

- tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``;
  ``none``) or an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``,
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, read by the exporters); off when
  ``OTEL_SDK_DISABLED=true``. Only OpenTelemetry's auto-instrumentation reads
  ``OTEL_TRACES_EXPORTER`` and ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL``, so they are read
  here: ``http/protobuf`` (the default) or ``grpc`` (the ``jetagent[otlp-grpc]`` extra).
- ``OTEL_SERVICE_NAME`` / ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` win; else the
  service is named by what it runs (``jetagent-orchestrator``, ``jetagent-worker-tools``).
- Spans are exported in batches from a background thread (``BatchSpanProcessor``), never
  on the caller's path. The exporter's timeout bounds each export and the final flush at
  exit: unless ``OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT`` is set (in **seconds** in Python's
  exporters), it is 1 s for short commands (``submit``: an unreachable collector would
  otherwise hold its exit for 8 s of retries) and 5 s for services.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opentelemetry import trace

from jetagent.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["exporters", "resource", "service_name", "setup"]

log = logging.getLogger("jetagent.telemetry")

SHORT_TIMEOUT_S = 1.0
"""Export timeout of a short-lived command (unless the environment sets one)."""
SERVICE_TIMEOUT_S = 5.0
"""Export timeout of a service: bounds its exit (after ``shutdown_grace_s``) too."""

_EXPORTERS = ("otlp", "console", "none")
_PROTOCOLS = {"http/protobuf": 4318, "grpc": 4317}
_GRPC_EXTRA = "pip install 'jetagent[otlp-grpc]'"


def _env(*names: str) -> tuple[str, str] | None:
    """The first of ``names`` set to a non-blank value, and that value."""
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return name, value
    return None


def host_configured() -> bool:
    """Whether something in this process set a tracer provider already."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _env_service_name() -> str | None:
    """The service name the environment sets, if it sets one."""
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector

    named = _env("OTEL_SERVICE_NAME")
    if named:
        return named[1]
    value = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    return str(value) if value else None


def service_name(default: str) -> str:
    """The service's name: the environment's, else ``default``."""
    return _env_service_name() or default


def resource(default_name: str) -> Resource:
    """The process's resource: ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME``, with
    ``default_name`` and jetagent's version where they set no service name or version."""
    from opentelemetry.sdk.resources import (
        SERVICE_NAME,
        SERVICE_VERSION,
        OTELResourceDetector,
        Resource,
    )

    from jetagent.telemetry import _VERSION

    # Attributes given in code override the environment's (Resource.create), so only the
    # ones the environment leaves unset are given.
    from_env = OTELResourceDetector().detect().attributes
    defaults: dict[str, str] = {}
    if _env_service_name() is None:
        defaults[SERVICE_NAME] = default_name
    if SERVICE_VERSION not in from_env:
        defaults[SERVICE_VERSION] = _VERSION
    return Resource.create(defaults)


def _exporter_names() -> list[str]:
    chosen = _env("OTEL_TRACES_EXPORTER")
    if chosen is None:
        endpoint = _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in chosen[1].split(",") if n.strip()]
    unknown = [n for n in names if n not in _EXPORTERS]
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: unknown exporter {unknown[0]!r} "
            f"(jetagent's services know {', '.join(_EXPORTERS)})"
        )
    return [n for n in dict.fromkeys(names) if n != "none"]


def _timeout(short_lived: bool) -> float | None:
    """The exporter timeout to pass: ``None`` when the environment sets one (the exporter
    reads it), checked here so a bad value is one clear line, not a traceback."""
    found = _env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    if found is None:
        return SHORT_TIMEOUT_S if short_lived else SERVICE_TIMEOUT_S
    name, value = found
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
    if seconds > 300:
        log.warning(
            "%s=%s: Python's OTLP exporters read it in seconds (not milliseconds), so one "
            "unreachable collector can hold a command's exit for up to that long",
            name,
            value,
        )
    return None


def _protocol() -> str:
    found = _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    if found is None:
        return "http/protobuf"
    name, value = found
    protocol = value.lower()
    if protocol not in _PROTOCOLS:
        why = " (Python's OTLP exporters have no http/json)" if protocol == "http/json" else ""
        raise ConfigError(f"{name} must be http/protobuf or grpc, not {value!r}{why}")
    return protocol


def _check_endpoint(protocol: str) -> None:
    found = _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    if found is None:
        return
    name, value = found
    url = urlsplit(value if "://" in value else f"//{value}")
    if protocol == "http/protobuf" and url.scheme not in ("http", "https"):
        raise ConfigError(
            f"{name} must be an http:// or https:// URL for OTLP over HTTP, not {value!r}"
        )
    try:
        port = url.port
    except ValueError:
        raise ConfigError(f"{name} has an invalid port: {value!r}") from None
    for other, other_port in _PROTOCOLS.items():
        if other != protocol and port == other_port:
            log.warning(
                "%s=%s uses port %d, the usual port of OTLP over %s, with protocol %s "
                "(usually port %d); set OTEL_EXPORTER_OTLP_PROTOCOL if that is the collector's",
                name,
                value,
                port,
                other,
                protocol,
                _PROTOCOLS[protocol],
            )


def _otlp_exporter(short_lived: bool) -> SpanExporter:
    protocol = _protocol()
    _check_endpoint(protocol)
    timeout = _timeout(short_lived)
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise ConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the OTLP/gRPC exporter, which is not "
                f"installed: {_GRPC_EXTRA} (or use http/protobuf, port 4318)"
            ) from None
        return GrpcExporter(timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(timeout=timeout)


def exporters(*, short_lived: bool) -> list[SpanExporter]:
    """The span exporters the environment asks for (none: tracing is off)."""
    made: list[SpanExporter] = []
    for name in _exporter_names():
        if name == "otlp":
            made.append(_otlp_exporter(short_lived))
        else:
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            made.append(ConsoleSpanExporter())
    return made


def setup(default_name: str, *, short_lived: bool) -> TracerProvider | None:
    """Install a tracer provider from the environment as the global one, unless tracing is
    off or something in this process configured one; return it (to shut it down at exit,
    which flushes what is batched), or ``None``. Raises ConfigError for a bad variable."""
    if host_configured():
        return None
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    made = exporters(short_lived=short_lived)
    if not made:
        return None
    if short_lived:
        # A command's user sees its output, not an exporter's retries ("Transient error
        # … Connection refused", two lines per `submit` with no collector); the services
        # log export failures, where an operator looks for them.
        logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=resource(default_name))
    for exporter in made:
        # Batches from a background thread: ending a span never waits on the network.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider
