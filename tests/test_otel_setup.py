"""jetagent's processes set up OpenTelemetry from the standard ``OTEL_*`` variables
(``jetagent.cli._telemetry``), and a missing collector costs a command nothing visible
(README "Traces")."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from jetagent.cli import _telemetry
from jetagent.config import Settings
from jetagent.errors import ConfigError
from jetagent.jetstream import connect
from jetagent.jetstream.provision import provision
from jetagent.testing import jetagent_command
from tests.fakes.otlp import OtlpGrpcReceiver

OTEL_VARIABLES = [
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OTEL_* variable of the machine running the tests leaks into them."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _timeout_of(exporter: Any) -> float:
    # The exporters keep it privately: the gRPC one on itself, the HTTP one on its client.
    found = getattr(exporter, "_timeout", None)
    if found is None:
        found = exporter._client._timeout
    return float(found)


def test_tracing_is_off_unless_the_environment_asks_for_it() -> None:
    assert _telemetry.exporters(short_lived=True) == []


def test_an_endpoint_means_otlp_over_http_with_a_short_timeout_for_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    [command] = _telemetry.exporters(short_lived=True)
    [service] = _telemetry.exporters(short_lived=False)
    assert isinstance(command, OTLPSpanExporter)
    assert _timeout_of(command) == _telemetry.SHORT_TIMEOUT_S == 1.0
    assert _timeout_of(service) == _telemetry.SERVICE_TIMEOUT_S == 5.0
    # The environment's timeout wins (in seconds, as Python's exporters read it).
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "3")
    [command] = _telemetry.exporters(short_lived=True)
    assert _timeout_of(command) == 3.0


def test_protocol_grpc_chooses_the_grpc_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    [exporter] = _telemetry.exporters(short_lived=False)
    assert isinstance(exporter, OTLPSpanExporter)
    assert _timeout_of(exporter) == 5.0
    # The signal's own variable wins over the general one.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    [exporter] = _telemetry.exporters(short_lived=False)
    assert not isinstance(exporter, OTLPSpanExporter)


def test_without_the_grpc_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    # As if the extra were not installed: the import fails.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(ConfigError, match=r"pip install 'jetagent\[otlp-grpc\]'"):
        _telemetry.exporters(short_lived=True)


def test_traces_exporter_console_and_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert _telemetry.exporters(short_lived=True) == []
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    [exporter] = _telemetry.exporters(short_lived=True)
    assert isinstance(exporter, ConsoleSpanExporter)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp,console")
    assert len(_telemetry.exporters(short_lived=True)) == 2


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin", "unknown exporter 'zipkin'"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "no http/json"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift", "must be http/protobuf or grpc"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon", "positive number of seconds, not 'soon'"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "0", "positive number of seconds"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "http:// or https:// URL"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:http", "invalid port"),
    ],
)
def test_a_bad_variable_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, said: str
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=said) as raised:
        _telemetry.exporters(short_lived=True)
    assert variable in str(raised.value)


def test_the_port_of_the_other_protocol_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # docker-compose once sent OTLP/HTTP to Jaeger's gRPC port: every export failed.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317")
    with caplog.at_level(logging.WARNING, logger="jetagent.telemetry"):
        _telemetry.exporters(short_lived=True)
    [warning] = caplog.records
    assert "port 4317" in warning.getMessage()
    assert "OTLP over grpc" in warning.getMessage()


def test_a_spec_style_timeout_in_milliseconds_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "10000")
    with caplog.at_level(logging.WARNING, logger="jetagent.telemetry"):
        _telemetry.exporters(short_lived=True)
    assert "in seconds" in caplog.text


def test_the_service_name_is_the_environments_else_the_services_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resource = _telemetry.resource("jetagent-worker-tools")
    assert resource.attributes["service.name"] == "jetagent-worker-tools"
    assert resource.attributes["service.version"]
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=tools-eu,deployment.env=prod")
    resource = _telemetry.resource("jetagent-worker-tools")
    assert resource.attributes["service.name"] == "tools-eu"
    assert resource.attributes["deployment.env"] == "prod"
    assert _telemetry.service_name("jetagent-worker-tools") == "tools-eu"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "tools-us")  # wins over the attributes
    assert _telemetry.resource("x").attributes["service.name"] == "tools-us"
    assert _telemetry.service_name("x") == "tools-us"


# -- the installed command ------------------------------------------------------------


def _closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _submit(
    settings: Settings, env: dict[str, str]
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run the installed ``jetagent submit`` and time it."""
    started = time.monotonic()
    done = subprocess.run(
        [*jetagent_command(installed=True), "submit", "hello", "--tenant", "acme"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            "NATS_URL": settings.nats_url,
            "JETAGENT_PREFIX": settings.prefix,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    return time.monotonic() - started, done


async def test_submit_is_not_slower_when_no_collector_listens(settings: Settings) -> None:
    nc = await connect(settings.nats_url, name="test")
    try:
        await provision(nc, settings)
    finally:
        await nc.close()
    closed = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    timings: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(2):  # a second measurement only when the first looks slow (a loaded
        # machine): the smallest of each is compared
        without, plain = await asyncio.to_thread(_submit, settings, {})
        traced_s, traced = await asyncio.to_thread(_submit, settings, closed)
        assert plain.returncode == 0, plain.stderr
        assert traced.returncode == 0, traced.stderr
        # Nothing visible: the id on stdout, no exporter's retries on stderr.
        assert traced.stdout.strip()
        assert not traced.stderr, traced.stderr
        timings["without"].append(without)
        timings["with"].append(traced_s)
        if min(timings["with"]) - min(timings["without"]) < 2.0:
            break
    print(f"\nsubmit, seconds: {timings} (collector at {closed} not listening)")
    assert min(timings["with"]) - min(timings["without"]) < 2.0, timings


async def test_submit_exports_by_grpc_when_the_protocol_says_so(settings: Settings) -> None:
    nc = await connect(settings.nats_url, name="test")
    try:
        await provision(nc, settings)
    finally:
        await nc.close()
    with OtlpGrpcReceiver() as collector:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_SERVICE_NAME": "order-intake",
        }
        _, done = await asyncio.to_thread(_submit, settings, env)
        assert done.returncode == 0, done.stderr
        wid = done.stdout.strip()
        [span] = collector.wait_for(bool, timeout=10)  # flushed before the command exited
    assert span.name == "jetagent submit"
    assert span.service == "order-intake"
    assert span.attributes["jetagent.workflow_id"] == wid
    assert span.attributes["jetagent.tenant"] == "acme"
