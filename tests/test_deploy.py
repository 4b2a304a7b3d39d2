"""Deployment files: docker-compose.yml, nats-server configs, Prometheus. (No Docker engine
here, so compose is checked structurally; nats configs are checked by nats-server itself.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml

from jetagent.cli._app import app
from jetagent.embedded import find_server_binary

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_describes_the_whole_topology() -> None:
    services = _compose()["services"]
    expected = {"nats-1", "nats-2", "nats-3", "provision", "orchestrator", "reasoning"}
    expected |= {"tools", "summarize", "memory", "projections", "prometheus", "grafana", "jaeger"}
    expected |= {"gateway"}
    assert expected <= set(services)


def test_compose_services_run_real_commands() -> None:
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    for name, service in _compose()["services"].items():
        if service.get("image") == "jetagent:latest":
            assert service["command"][0] in commands, f"{name}: unknown command"
            env = service["environment"]
            assert env["JETAGENT_REPLICAS"] == "3"
            assert all(u.startswith("nats://") for u in env["NATS_URL"].split(","))


def test_compose_mounts_exist() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    assert (ROOT / "Dockerfile").exists()


@pytest.mark.parametrize(
    "config", ["single.conf", "cluster/n1.conf", "cluster/n2.conf", "cluster/n3.conf"]
)
def test_nats_configs_are_valid(config: str) -> None:
    env = {
        **os.environ,
        "JETAGENT_ADMIN_PASSWORD": "z",
        "JETAGENT_CLIENT_PASSWORD": "a",
        "JETAGENT_ORCHESTRATOR_PASSWORD": "b",
        "JETAGENT_WORKER_REASONING_PASSWORD": "c0",
        "JETAGENT_WORKER_TOOLS_PASSWORD": "c1",
        "JETAGENT_WORKER_SUMMARIZE_PASSWORD": "c2",
        "JETAGENT_WORKER_MEMORY_PASSWORD": "c3",
        "JETAGENT_PROJECTIONS_PASSWORD": "d",
    }
    result = subprocess.run(
        [str(find_server_binary()), "-t", "-c", str(ROOT / "nats" / config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_service() -> None:
    """Each compose service that runs jetagent (every replica: DNS discovery) is scraped
    on the metrics port it listens on."""
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    discovered = {
        (name, sd["port"])
        for job in prometheus["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
        if sd["type"] == "A"
    }
    services = {
        name: service
        for name, service in _compose()["services"].items()
        if service.get("image") == "jetagent:latest" and service["command"][0] != "provision"
    }
    assert set(services) == {
        "orchestrator",
        "reasoning",
        "tools",
        "summarize",
        "memory",
        "projections",
        "gateway",
    }
    for name, service in services.items():
        env = service["environment"]
        assert env["JETAGENT_METRICS_ADDR"] == "0.0.0.0", name
        assert (name, int(env["JETAGENT_METRICS_PORT"])) in discovered, name


def test_prometheus_config_is_valid() -> None:
    from tests.support.prometheus import prometheus_binary

    _, promtool = prometheus_binary()
    result = subprocess.run(
        [promtool, "check", "config", str(ROOT / "deploy" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# The OTLP ports by protocol (the OpenTelemetry specification's defaults; Jaeger's too).
OTLP_PORTS = {"http/protobuf": 4318, "grpc": 4317}


def test_compose_sends_traces_to_the_trace_backends_otlp_port_for_its_protocol() -> None:
    services = _compose()["services"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    jetagent = {n: s for n, s in services.items() if s.get("image") == "jetagent:latest"}
    assert jetagent
    for name, service in jetagent.items():
        env = service["environment"]
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        assert endpoint, f"{name} exports no traces"
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        assert protocol in OTLP_PORTS, f"{name}: unknown OTLP protocol {protocol!r}"
        url = urlsplit(endpoint)
        # The port is the one of the protocol spoken (HTTP to 4317 fails every export).
        assert url.port == OTLP_PORTS[protocol], f"{name}: {protocol} to {endpoint}"
        if protocol == "http/protobuf":
            assert url.scheme in ("http", "https"), f"{name}: {endpoint}"
        else:  # the gRPC exporter is an extra: the image must have it
            assert "otlp-grpc" in dockerfile, f"{name} speaks gRPC; the image lacks the extra"
        # The trace backend is a service of this file that receives OTLP.
        backend = services.get(url.hostname or "")
        assert backend is not None, f"{name}: no service {url.hostname!r} in compose"
        assert "jaeger" in backend["image"], backend["image"]
        assert str(backend["environment"]["COLLECTOR_OTLP_ENABLED"]).lower() == "true"
        # Each service names itself in traces (per service and capability).
        assert "OTEL_SERVICE_NAME" not in env, f"{name} would share one service name"
