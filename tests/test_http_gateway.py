"""`jetagent gateway` end to end: real HTTP to a uvicorn server, real nats-server behind it."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest

from jetagent.events import Started
from jetagent.gateway import GatewayServer, GatewaySettings
from jetagent.testing import eventually
from tests.support.gateway import TOKEN_SETTING, SseEvent, auth, sse_events
from tests.support.platform import InProcessPlatform

FINAL = {"Finalized", "Terminated", "Cancelled", "RequestRejected"}


@pytest.fixture
async def http(engine: InProcessPlatform) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings(port=0, tokens=TOKEN_SETTING, max_body_bytes=64 * 1024)
    server = GatewayServer(engine.client, settings)
    port = await server.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    await server.stop()


async def _submit(http: httpx.AsyncClient, body: dict[str, object], **headers: str) -> str:
    response = await http.post("/v1/workflows", json=body, headers={**auth("acme"), **headers})
    assert response.status_code == 202, response.text
    wid: str = response.json()["workflow_id"]
    assert response.headers["location"] == f"/v1/workflows/{wid}"
    return wid


async def _all_events(http: httpx.AsyncClient, wid: str, **headers: str) -> list[SseEvent]:
    found = []
    async for event in sse_events(
        http, f"/v1/workflows/{wid}/events", headers={**auth("acme"), **headers}
    ):
        found.append(event)
    return found


async def test_submit_then_sse_to_the_final_event(http: httpx.AsyncClient) -> None:
    wid = await _submit(http, {"instruction": "What is (2 + 3) * 4?"})
    events = await _all_events(http, wid)
    kinds = [e.event for e in events if e.event != "token"]
    # Every transition arrives, in order, and the stream ends with the final one.
    assert kinds[0] == "Started"
    assert kinds[-1] == "Finalized"
    assert "StepScheduled" in kinds
    assert events[-1].data["output"].endswith("20")
    view = (await http.get(f"/v1/workflows/{wid}", headers=auth("acme"))).json()
    assert view["state"] == "finalized"
    assert view["tenant"] == "acme"
    assert view["output"].endswith("20")
    assert view["usage"]["total_tokens"] > 0
    assert view["usage"]["total_tokens"] == (
        view["usage"]["input_tokens"] + view["usage"]["output_tokens"]
    )


async def test_the_same_idempotency_key_twice_is_one_workflow(
    http: httpx.AsyncClient, engine: InProcessPlatform
) -> None:
    body = {"instruction": "What is 6 * 7?"}
    first = await http.post(
        "/v1/workflows", json=body, headers={**auth("acme"), "Idempotency-Key": "idem-1"}
    )
    second = await http.post(
        "/v1/workflows", json=body, headers={**auth("acme"), "Idempotency-Key": "idem-1"}
    )
    assert first.status_code == second.status_code == 202
    assert first.json()["workflow_id"] == second.json()["workflow_id"] == "idem-1"
    assert second.json()["duplicate"] is True
    result = await engine.client.result("idem-1", timeout=30)
    assert result.output.endswith("42")
    events = await engine.client.events("idem-1")
    assert sum(isinstance(e, Started) for e in events) == 1
    # A body whose request_id contradicts the key is refused, not silently renamed.
    clash = await http.post(
        "/v1/workflows",
        json={**body, "request_id": "other"},
        headers={**auth("acme"), "Idempotency-Key": "idem-1"},
    )
    assert clash.status_code == 422


async def test_sse_resumes_after_last_event_id_with_no_gap_and_no_repeat(
    http: httpx.AsyncClient,
) -> None:
    wid = await _submit(http, {"instruction": "What is (17 * 23) + 4 and 2 ** 10?"})
    full = [e for e in await _all_events(http, wid) if e.event != "token"]
    ids = [e.id for e in full if e.id is not None]
    assert len(ids) >= 3
    assert ids == sorted(set(ids))  # stream sequences, increasing, each once
    # Reconnect as a client that saw everything up to a middle message.
    cut = ids[len(ids) // 2]
    position = next(i for i, e in enumerate(full) if e.id == cut)
    resumed = [e for e in await _all_events(http, wid, **{"Last-Event-ID": str(cut)})]
    resumed = [e for e in resumed if e.event != "token"]
    assert [(e.event, e.id) for e in resumed] == [(e.event, e.id) for e in full[position + 1 :]]
    assert resumed[-1].event in FINAL
    # Resuming after the final event ends at once, with nothing repeated.
    after_end = await _all_events(http, wid, **{"Last-Event-ID": str(ids[-1])})
    assert after_end == []


async def test_another_tenants_workflow_is_a_404(http: httpx.AsyncClient) -> None:
    wid = await _submit(http, {"instruction": "What is 1 + 1?"})
    await eventually(lambda: _state_is(http, wid, "finalized"), timeout=30)  # acme sees it ...
    beta = auth("beta")
    for method, path in [
        ("GET", f"/v1/workflows/{wid}"),
        ("GET", f"/v1/workflows/{wid}/events"),
        ("POST", f"/v1/workflows/{wid}/cancel"),
        ("POST", f"/v1/workflows/{wid}/signals/approval"),
    ]:
        response = await http.request(method, path, headers=beta)
        # ... beta gets exactly what an unknown id gets.
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 404
    unknown = await http.get("/v1/workflows/no-such-workflow", headers=beta)
    assert unknown.status_code == 404
    # No token, or an unknown one: 401 with a challenge.
    for headers in ({}, {"Authorization": "Bearer wrong-token-000"}):
        response = await http.get(f"/v1/workflows/{wid}", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.headers["content-type"] == "application/problem+json"


async def _state_is(http: httpx.AsyncClient, wid: str, state: str) -> bool:
    response = await http.get(f"/v1/workflows/{wid}", headers=auth("acme"))
    return response.status_code == 200 and response.json()["state"] == state


async def test_malformed_bodies_are_problems_listing_every_error(http: httpx.AsyncClient) -> None:
    headers = {**auth("acme"), "Content-Type": "application/json"}
    response = await http.post("/v1/workflows", content=b"{not json", headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "The body is not valid JSON"

    body = {"instruction": "", "colour": "red", "capability_limits": {"max_iterations": 0}}
    response = await http.post("/v1/workflows", json=body, headers=auth("acme"))
    assert response.status_code == 422
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert {"type", "title", "status", "detail", "errors"} <= set(problem)
    where = Counter(e["location"] for e in problem["errors"])
    assert where == {"instruction": 1, "colour": 1, "capability_limits.max_iterations": 1}

    response = await http.post(
        "/v1/workflows", json={"instruction": "x", "tenant": "beta"}, headers=auth("acme")
    )
    assert response.status_code == 422  # a tenant that is not the token's

    big = json.dumps({"instruction": "x" * 100_000}).encode()
    response = await http.post("/v1/workflows", content=big, headers=headers)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


async def test_the_article_request_over_http_runs_to_finalized(http: httpx.AsyncClient) -> None:
    body = {
        "request_id": "article-http",
        "instruction": "What is 6 * 7?",
        "session_context": "a conversation the article's service keeps",
        "capability_limits": {"max_iterations": 4, "token_cap": 4000},
    }
    wid = await _submit(http, body)
    assert wid == "article-http"
    events = await _all_events(http, wid)
    assert events[-1].event == "Finalized"
    view = (await http.get(f"/v1/workflows/{wid}", headers=auth("acme"))).json()
    assert view["state"] == "finalized"


async def test_health_readiness_and_openapi(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.get("/readyz")).json() == {"status": "ready"}
    served = (await http.get("/openapi.json")).json()
    assert "/v1/workflows/{workflow_id}/events" in served["paths"]


async def _waiting_approval(http: httpx.AsyncClient, target: str) -> tuple[str, str]:
    body = {
        "instruction": f'call dangerous {{"target": "{target}"}}',
        "allowed_tools": ["dangerous"],
    }
    wid = await _submit(http, body)
    async for event in sse_events(http, f"/v1/workflows/{wid}/events", headers=auth("acme")):
        if event.event == "ApprovalRequested":
            return wid, str(event.data["step_id"])
    raise AssertionError("no ApprovalRequested")


async def test_approval_signal_and_cancel_over_http(http: httpx.AsyncClient) -> None:
    # A tool that needs approval holds the workflow; the approval signal releases it.
    wid, step_id = await _waiting_approval(http, "staging")
    assert (await http.get(f"/v1/workflows/{wid}", headers=auth("acme"))).json()[
        "state"
    ] == "waiting_approval"
    signal = await http.post(
        f"/v1/workflows/{wid}/signals/approval",
        json={"step_id": step_id, "approved": True, "comment": "ok"},
        headers=auth("acme"),
    )
    assert signal.status_code == 202
    events = await _all_events(http, wid)
    assert events[-1].event == "Finalized"
    assert events[-1].data["output"].endswith("deleted staging")
    # Another one waits for approval, and is cancelled instead.
    wid, _ = await _waiting_approval(http, "prod")
    cancel = await http.post(
        f"/v1/workflows/{wid}/cancel", params={"reason": "not today"}, headers=auth("acme")
    )
    assert cancel.status_code == 202
    events = await _all_events(http, wid)
    assert events[-1].event == "Cancelled"
    view = (await http.get(f"/v1/workflows/{wid}", headers=auth("acme"))).json()
    assert view["state"] == "cancelled"


async def test_listing_filters_by_tenant_state_and_since_and_pages(
    http: httpx.AsyncClient, engine: InProcessPlatform
) -> None:
    from projections.service import ProjectionService

    acme = [await _submit(http, {"instruction": f"What is {i} + 1?"}) for i in range(3)]
    response = await http.post(
        "/v1/workflows", json={"instruction": "What is 9 + 9?"}, headers=auth("beta")
    )
    beta = response.json()["workflow_id"]
    for wid in [*acme, beta]:
        await engine.client.result(wid, timeout=30)
    await ProjectionService(engine.client.nc, engine.settings).rebuild()  # the session views

    async def page(tenant: str, **params: object) -> dict[str, object]:
        response = await http.get("/v1/workflows", params=params, headers=auth(tenant))
        assert response.status_code == 200, response.text
        found: dict[str, object] = response.json()
        return found

    listed = await page("acme", limit=2)
    items = listed["items"]
    assert isinstance(items, list)
    assert len(items) == 2
    rest = await page("acme", limit=2, cursor=listed["next_cursor"])
    ids = [i["workflow_id"] for i in items] + [i["workflow_id"] for i in rest["items"]]  # type: ignore[attr-defined]
    assert sorted(ids) == sorted(acme)  # every acme workflow once, none of beta's
    assert rest["next_cursor"] is None
    assert [i["workflow_id"] for i in (await page("beta"))["items"]] == [beta]  # type: ignore[attr-defined]
    assert (await page("acme", state="terminated"))["items"] == []
    assert len((await page("acme", state="finalized"))["items"]) == 3  # type: ignore[arg-type]
    assert (await page("acme", since="2999-01-01T00:00:00Z"))["items"] == []
    assert len((await page("acme", since="2000-01-01T00:00:00"))["items"]) == 3  # type: ignore[arg-type]
    bad = await http.get("/v1/workflows", params={"state": "sideways"}, headers=auth("acme"))
    assert bad.status_code == 422
