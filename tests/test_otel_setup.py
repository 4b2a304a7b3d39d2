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
from dataclasses import dataclass
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


@dataclass
class Submitted:
    """One run of ``jetagent submit``."""

    returncode: int
    stdout: str
    stderr: str
    total_s: float
    """From start to exit."""
    after_id_s: float
    """From the workflow id on stdout (the request is stored) to the exit: the part that
    waits for the span exporter (imports and connecting, which a loaded machine makes
    noisy, come before it)."""


def _submit(settings: Settings, env: dict[str, str]) -> Submitted:
    """Run the installed ``jetagent submit`` and time it."""
    started = time.monotonic()
    process = subprocess.Popen(
        [*jetagent_command(installed=True), "submit", "hello", "--tenant", "acme"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            "NATS_URL": settings.nats_url,
            "JETAGENT_PREFIX": settings.prefix,
            "PYTHONUNBUFFERED": "1",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    printed = time.monotonic()
    rest, stderr = process.communicate(timeout=60)
    ended = time.monotonic()
    return Submitted(
        returncode=process.returncode,
        stdout=first + rest,
        stderr=stderr,
        total_s=ended - started,
        after_id_s=ended - printed,
    )


async def test_submit_is_not_slower_when_no_collector_listens(settings: Settings) -> None:
    nc = await connect(settings.nats_url, name="test")
    try:
        await provision(nc, settings)
    finally:
        await nc.close()
    closed = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    runs: dict[str, list[Submitted]] = {"without": [], "with": []}

    def extra() -> float:
        # The smallest of each: a loaded machine only ever adds time.
        return min(r.after_id_s for r in runs["with"]) - min(r.after_id_s for r in runs["without"])

    for _ in range(3):  # more measurements only while the first look slow
        runs["without"].append(await asyncio.to_thread(_submit, settings, {}))
        runs["with"].append(await asyncio.to_thread(_submit, settings, closed))
        for run in (runs["without"][-1], runs["with"][-1]):
            assert run.returncode == 0, run.stderr
            assert run.stdout.strip()
        # Nothing visible: the id on stdout, no exporter's retries on stderr.
        assert not runs["with"][-1].stderr, runs["with"][-1].stderr
        if extra() < 2.0:
            break
    report = {
        way: [f"{r.total_s:.2f} s ({r.after_id_s:.2f} s after the id)" for r in found]
        for way, found in runs.items()
    }
    print(f"\nsubmit without tracing / with a collector not listening: {report}")
    assert extra() < 2.0, report


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
        done = await asyncio.to_thread(_submit, settings, env)
        assert done.returncode == 0, done.stderr
        wid = done.stdout.strip()
        [span] = collector.wait_for(bool, timeout=10)  # flushed before the command exited
    assert span.name == "jetagent submit"
    assert span.service == "order-intake"
    assert span.attributes["jetagent.workflow_id"] == wid
    assert span.attributes["jetagent.tenant"] == "acme"
