"""Property-based fuzzing of the gateway from its own OpenAPI document (schemathesis):
no generated request, valid or not, gets a 5xx. The gateway runs on a loop thread of its
own so the fuzzer's synchronous HTTP calls go over real sockets to a live server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck

from jetagent.config import Settings
from jetagent.gateway import GatewayServer, GatewaySettings
from jetagent.jetstream._loop import LoopThread
from tests.support.gateway import TOKEN_SETTING, auth
from tests.support.platform import InProcessPlatform


@pytest.fixture
def live_gateway(settings: Settings) -> Iterator[str]:
    loop = LoopThread(name="fuzz-gateway")
    platform = loop.run(InProcessPlatform(settings).start())
    loop.run(_one_finished_workflow(platform), timeout=60)  # so lists and views have data
    # accept_wait_s=0: a random id is a 404 at once, not after waiting for a first event.
    http = GatewaySettings(port=0, tokens=TOKEN_SETTING, accept_wait_s=0)
    server = GatewayServer(platform.client, http)
    port = loop.run(server.start())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.run(server.stop(), timeout=30)
        loop.run(platform.stop(), timeout=60)
        loop.stop()


async def _one_finished_workflow(platform: InProcessPlatform) -> None:
    from projections.service import ProjectionService

    wid = await platform.client.submit(instruction="What is 2 + 2?", tenant="acme")
    await platform.client.result(wid, timeout=30)
    await ProjectionService(platform.client.nc, platform.settings).rebuild()


@pytest.mark.timeout(300)
def test_fuzzing_from_the_openapi_document_finds_no_server_error(live_gateway: str) -> None:
    import httpx

    document: dict[str, Any] = httpx.get(f"{live_gateway}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    calls = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    # Valid requests by the document, then requests that break it on purpose.
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    for operation, mode in [(op, mode) for mode in modes for op in operations]:

        @hypothesis.settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=live_gateway, headers=auth("acme"), timeout=15)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")
            elif response.status_code >= 400:
                # Every error is a problem document.
                assert response.headers["content-type"] == ["application/problem+json"]

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to break (no inputs)
    assert calls >= 2 * len(operations) * 10  # every operation was exercised, both ways
    assert failures == []
