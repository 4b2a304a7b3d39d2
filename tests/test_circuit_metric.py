"""The circuit-state gauge reaches /metrics (issue 9, item 11).

A worker publishes its breakers' states to the registry bucket every few seconds; the
projection service reads them and exports ``jetagent_circuit_state``. Here a real
:class:`CircuitBreaker` is opened by real failures, a real worker reports it, and a
scrape of /metrics must show it open.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from capabilities.reasoning.breakers import BreakerSettings, CircuitBreaker
from jetagent.config import Settings
from jetagent.embedded import free_port
from jetagent.jetstream import connect
from jetagent.testing import eventually
from jetagent.worker import CapabilitySpec, StepContext
from jetagent.worker._runtime import Worker
from projections.service import ProjectionService


async def _circuit_states(port: int) -> dict[tuple[str, str], float]:
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
    except OSError:  # not listening yet
        return {}
    states = {}
    for family in text_string_to_metric_families(text):
        if family.name == "jetagent_circuit_state":
            for sample in family.samples:
                states[(sample.labels["provider"], sample.labels["base_url"])] = sample.value
    return states


async def test_an_open_breaker_shows_on_metrics(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings.model_copy(update={"metrics_port": free_port()})
    breaker = CircuitBreaker(
        provider="openai",
        base_url="http://127.0.0.1:9/v1",
        settings=BreakerSettings(failure_threshold=2, cool_down_s=600),
    )
    healthy = CircuitBreaker(
        provider="anthropic", base_url="http://127.0.0.1:10/v1", settings=BreakerSettings()
    )
    for _ in range(2):
        permit = breaker.try_acquire()
        assert permit is not None
        permit.failed()
    assert breaker.state == "open"

    async def handler(step: StepContext) -> dict[str, Any]:  # never scheduled here
        return {}

    def report() -> dict[str, Any]:
        return {"circuits": [msgspec.to_builtins(b.snapshot()) for b in (breaker, healthy)]}

    spec = CapabilitySpec(name="reasoning", handler=handler, report=report)
    nc = await connect(settings.nats_url, name="test-circuits")
    stop = asyncio.Event()
    worker = Worker(nc, settings, [spec])
    projections = ProjectionService(nc, settings)
    caplog.set_level(logging.WARNING, logger="nats.js.kv")
    tasks = [asyncio.create_task(worker.run(stop)), asyncio.create_task(projections.run(stop))]
    try:

        async def exported() -> dict[tuple[str, str], float]:
            for task in tasks:
                assert not task.done(), task.exception()
            return await _circuit_states(settings.metrics_port)

        async def open_shown() -> bool:
            return (await exported()).get(("openai", "http://127.0.0.1:9/v1")) == 1.0

        await eventually(open_shown, timeout=30)
        assert (await exported())[("anthropic", "http://127.0.0.1:10/v1")] == 0.0
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await nc.close()
    # The registry is read without the call that logs a warning on every refresh.
    assert not [r for r in caplog.records if "ignore filters" in r.getMessage()]
