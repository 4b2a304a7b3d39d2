"""Metric labels stay bounded whatever publishers send (issue 9, item 8; README, "Metrics").

Tenants and models outside the configuration collapse to ``other``; free dimensions keep
their first values only; known label sets are exported at 0 before their first event.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jetagent import RequestRejectedError
from jetagent.config import Settings
from jetagent.embedded import free_port
from jetagent.events import CallRecord, RequestRejected, StepResult
from jetagent.jetstream import connect
from jetagent.llm import Usage
from jetagent.testing import eventually
from projections.costs import MetricsState
from projections.labels import DISTINCT_LIMIT, OTHER, LabelPolicy
from projections.service import ProjectionService
from tests.support.platform import InProcessPlatform


async def _labels(port: int, metric: str, label: str) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
    except OSError:  # not listening yet
        return {}
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric:
                key = sample.labels[label]
                values[key] = values.get(key, 0.0) + sample.value
    return values


async def test_requests_for_unknown_tenants_do_not_grow_the_label_set(settings: Settings) -> None:
    settings = settings.model_copy(update={"metrics_port": free_port(), "tenants": "acme"})
    platform = await InProcessPlatform(settings).start()
    nc = await connect(settings.nats_url, name="test-labels")
    stop = asyncio.Event()
    service = ProjectionService(nc, settings)
    task = asyncio.create_task(service.run(stop))
    port = settings.metrics_port
    try:
        # Before any event, every configured tenant's outcomes are there, at 0.
        async def zeros() -> dict[str, float]:
            return await _labels(port, "jetagent_workflows_total", "tenant")

        assert await eventually(zeros, timeout=20) == {"acme": 0.0}

        intruders = [f"intruder-{i}" for i in range(20)]
        for i, tenant in enumerate(intruders):
            body = {"request_id": f"bad-{i}", "tenant": tenant, "instruction": "hi"}
            await nc.jetstream().publish(
                settings.names.request(tenant),
                json.dumps(body).encode(),
                headers={"Nats-Msg-Id": f"bad-{i}"},
            )
        for i in range(len(intruders)):
            with pytest.raises(RequestRejectedError):
                await platform.client.result(f"bad-{i}", timeout=30)

        async def collapsed() -> bool:
            assert not task.done(), task.exception()
            return (await zeros()).get(OTHER) == len(intruders)

        await eventually(collapsed, timeout=30)
        assert set(await zeros()) == {"acme", OTHER}
    finally:
        stop.set()
        await task
        await nc.close()
        await platform.stop()


def test_models_outside_the_catalog_and_free_labels_are_bounded() -> None:
    now = datetime.now(UTC)
    policy = LabelPolicy(tenants=frozenset({"acme"}), models=frozenset({"gpt-4o"}))
    state = MetricsState()
    for i in range(DISTINCT_LIMIT * 3):
        call = CallRecord(
            model=f"forged-{i}",
            provider=f"p{i}",
            outcome="ok",
            usage=Usage(input_tokens=1, output_tokens=1),
        )
        result = StepResult(
            workflow_id=f"w{i}",
            step_id="s1",
            capability=f"cap-{i}",
            tenant=f"t{i}",
            ok=True,
            calls=[call],
            started_at=now,
            finished_at=now,
        )
        state.apply_step_result(result, policy)
        state.apply_workflow_event(
            RequestRejected(workflow_id=f"r{i}", at=now, reasons=["x"], tenant=f"t{i}"), policy
        )
        state.apply_dead_letter(f"source-{i}", policy)
    models = {key.split("\x1f")[1] for key in state.calls}
    tenants = {key.split("\x1f")[3] for key in state.tokens}
    capabilities = {key.split("\x1f")[0] for key in state.steps}
    # Models outside the catalog: the first ones reported are kept, then `other`.
    assert len(models) == DISTINCT_LIMIT + 1
    assert OTHER in models
    catalog_call = CallRecord(model="gpt-4o", provider="openai", outcome="ok")
    state.apply_step_result(
        StepResult(
            workflow_id="w-real",
            step_id="s1",
            capability="reasoning",
            tenant="acme",
            ok=True,
            calls=[catalog_call],
            started_at=now,
            finished_at=now,
        ),
        policy,
    )
    assert any(key.split("\x1f")[1] == "gpt-4o" for key in state.calls)
    assert tenants == {OTHER}
    assert {key.split("\x1f")[0] for key in state.workflows} == {OTHER}
    assert len(capabilities) == DISTINCT_LIMIT + 1
    assert OTHER in capabilities
    assert len(state.dead_letters) == DISTINCT_LIMIT + 1

    # With JETAGENT_TENANTS=* the first tenants are kept, the rest are `other`.
    anyone = MetricsState()
    for i in range(DISTINCT_LIMIT * 2):
        anyone.apply_workflow_event(
            RequestRejected(workflow_id=f"r{i}", at=now, reasons=["x"], tenant=f"t{i}"),
            LabelPolicy(),
        )
    assert len(anyone.workflows) == DISTINCT_LIMIT + 1
    assert anyone.workflows[f"{OTHER}\x1frejected"] == DISTINCT_LIMIT
