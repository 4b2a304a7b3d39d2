"""The HTTP API: the request contract, session views, SSE, cancel and signals.

One more stateless service in front of the same streams (README "HTTP gateway"): it
publishes what a NATS client would publish and reads what a NATS client would read, so
any number of replicas may run. A tenant sees and touches only its own workflows:
another tenant's workflow id answers 404, exactly as an unknown id does.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, whose
# dependency aliases (Tenant) are local to create_app.

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from nats.errors import Error as NatsError
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from jetagent import correlation, telemetry
from jetagent.client import Client
from jetagent.contract import ID_PATTERN, Status, WorkflowRequest
from jetagent.gateway._config import GatewaySettings, TokenMap
from jetagent.gateway._events import parse_last_event_id, sse_stream
from jetagent.gateway._limits import BodyLimit
from jetagent.gateway._listing import list_workflows
from jetagent.gateway._models import (
    Accepted,
    HttpWorkflowRequest,
    WorkflowPage,
    WorkflowView,
    view_of,
)
from jetagent.gateway._problems import (
    PROBLEM_JSON,
    FieldProblem,
    Problem,
    ProblemError,
    install_handlers,
)
from jetagent.jetstream.headers import Header as NatsHeader
from jetagent.sessions import SessionView

__all__ = ["create_app"]

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in {
        400: "Malformed body",
        401: "Missing or unknown bearer token",
        404: "No such workflow (for this tenant)",
        413: "Body too large",
        422: "Invalid request: every problem listed",
        503: "NATS is unavailable (or, for /readyz, a stream is missing)",
    }.items()
}
_NAME = r"^[A-Za-z0-9_-]{1,64}$"
WorkflowId = Annotated[str, Path(pattern=ID_PATTERN, description="The workflow's id.")]


def create_app(client: Client, settings: GatewaySettings) -> FastAPI:
    """The gateway as an ASGI app over one connected ``Client``."""
    tokens: TokenMap = settings.token_map()
    app = FastAPI(
        title="jetagent gateway",
        version="1",
        summary="The jetagent request contract over HTTP, with live events.",
        responses=_PROBLEMS,
    )
    install_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    def tenant_of(authorization: Annotated[str | None, Header()] = None) -> str:
        scheme, _, token = (authorization or "").partition(" ")
        tenant = tokens.tenant(token.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise ProblemError(
                401,
                "unauthorized",
                "A valid bearer token is required",
                headers={"WWW-Authenticate": 'Bearer realm="jetagent"'},
            )
        return tenant

    Tenant = Annotated[str, Depends(tenant_of)]

    async def owned(workflow_id: str, tenant: str, *, wait: bool = True) -> SessionView:
        """The workflow's view if it is this tenant's; else a 404 (unknown or not theirs).
        A workflow accepted a moment ago may not have its first event yet: wait a little."""
        deadline = time.monotonic() + (settings.accept_wait_s if wait else 0)
        while True:
            view = await client.session(workflow_id)
            if view.tenant:
                break
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        if view.tenant != tenant:
            raise ProblemError(404, "not-found", "No such workflow", workflow_id)
        return view

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """NATS is connected and the streams the gateway uses exist."""
        missing = []
        if client.nc.is_connected:
            for stream in (client.names.requests_stream, client.names.workflows_stream):
                try:
                    await client.js.stream_info(stream)
                except (NatsError, TimeoutError):
                    missing.append(stream)
        if not client.nc.is_connected or missing:
            detail = (
                "NATS is not connected"
                if not client.nc.is_connected
                else ("missing streams: " + ", ".join(missing))
            )
            raise ProblemError(503, "not-ready", "Not ready", detail)
        return JSONResponse({"status": "ready"})

    @app.post(
        "/v1/workflows",
        status_code=202,
        response_model=Accepted,
        tags=["workflows"],
    )
    async def submit(
        request: Annotated[HttpWorkflowRequest, Body()],
        tenant: Tenant,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(
                pattern=ID_PATTERN, description="The request_id: a retry starts no second workflow."
            ),
        ] = None,
    ) -> Accepted:
        """Submit a request: ``202`` with the workflow id at once (the result comes later)."""
        fields = request.model_dump(exclude_unset=True)
        problems = []
        if request.tenant is not None and request.tenant != tenant:
            problems.append(FieldProblem(location="tenant", message="not the token's tenant"))
        if idempotency_key and fields.get("request_id", idempotency_key) != idempotency_key:
            problems.append(
                FieldProblem(location="request_id", message="differs from the Idempotency-Key")
            )
        if problems:
            raise ProblemError(422, "invalid-request", "The request is not valid", errors=problems)
        fields["tenant"] = tenant
        fields["request_id"] = idempotency_key or fields.get("request_id") or request.request_id
        try:
            contract = WorkflowRequest.model_validate(fields)
        except ValidationError as exc:  # pragma: no cover - the same model validated it
            errors = [FieldProblem(location=str(e["loc"]), message=e["msg"]) for e in exc.errors()]
            raise ProblemError(
                422, "invalid-request", "The request is not valid", errors=errors
            ) from exc
        duplicate = await _publish(client, contract)
        wid = contract.request_id
        location = f"/v1/workflows/{wid}"
        response.headers["Location"] = location
        return Accepted(
            workflow_id=wid,
            duplicate=duplicate,
            links={"self": location, "events": f"{location}/events"},
        )

    @app.get("/v1/workflows", response_model=WorkflowPage, tags=["workflows"])
    async def list_(
        tenant: Tenant,
        state: Status | None = None,
        since: datetime | None = None,
        cursor: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = settings.page_size,
    ) -> WorkflowPage:
        """This tenant's workflows (from the session views), newest first."""
        return await list_workflows(
            client, tenant=tenant, state=state, since=since, cursor=cursor, limit=limit
        )

    @app.get("/v1/workflows/{workflow_id}", response_model=WorkflowView, tags=["workflows"])
    async def get(workflow_id: WorkflowId, tenant: Tenant) -> WorkflowView:
        """The session view: state, answer, usage, cost and every step."""
        return view_of(await owned(workflow_id, tenant))

    @app.get(
        "/v1/workflows/{workflow_id}/events",
        tags=["workflows"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "SSE"}},
    )
    async def events(
        workflow_id: WorkflowId,
        tenant: Tenant,
        request: Request,
        last_event_id: Annotated[str | None, Header()] = None,
        tokens: Annotated[bool, Query(description="Relay token deltas too.")] = True,
    ) -> StreamingResponse:
        """Every transition as Server-Sent Events (resume with ``Last-Event-ID``), and the
        model's tokens as they are produced; ends after the final event."""
        view = await owned(workflow_id, tenant)
        after = parse_last_event_id(last_event_id)
        # A client that already saw the final event: nothing follows it, end at once.
        finished = view.status.is_final and 0 < view.last_workflow_seq <= after
        frames = sse_stream(client, workflow_id, after=after, tokens=tokens, finished=finished)
        return StreamingResponse(
            _until_disconnect(frames, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/workflows/{workflow_id}/cancel", status_code=202, tags=["workflows"])
    async def cancel(
        workflow_id: WorkflowId,
        tenant: Tenant,
        reason: Annotated[str, Query(max_length=1000)] = "",
    ) -> dict[str, str]:
        """Ask for the workflow to be cancelled (recorded as ``Cancelled``)."""
        await owned(workflow_id, tenant)
        await client.cancel(workflow_id, reason=reason, by=f"gateway:{tenant}")
        return {"workflow_id": workflow_id, "status": "cancel_requested"}

    @app.post("/v1/workflows/{workflow_id}/signals/{name}", status_code=202, tags=["workflows"])
    async def signal(
        workflow_id: WorkflowId,
        name: Annotated[str, Path(pattern=_NAME)],
        tenant: Tenant,
        payload: Annotated[dict[str, Any] | None, Body()] = None,
    ) -> dict[str, str]:
        """Send a named signal; ``approval`` with ``{"step_id", "approved", "comment"}``
        resolves a tool call waiting for approval."""
        await owned(workflow_id, tenant)
        await client.signal(workflow_id, name, payload or {}, by=f"gateway:{tenant}")
        return {"workflow_id": workflow_id, "status": "signal_sent"}

    return app


async def _publish(client: Client, request: WorkflowRequest) -> bool:
    """Publish as ``Client.submit`` does; True when JetStream saw this request_id already."""
    body = request.model_dump_json(exclude_none=True).encode()
    try:
        with (
            correlation.correlate(workflow_id=request.request_id, tenant=request.tenant),
            telemetry.span("jetagent submit", kind=SpanKind.PRODUCER),
        ):
            headers = telemetry.inject({NatsHeader.MSG_ID: request.request_id})
            ack = await client.js.publish(
                client.names.request(request.tenant), body, headers=headers, timeout=5.0
            )
    except (NatsError, TimeoutError) as exc:
        raise ProblemError(
            503,
            "unavailable",
            "The request could not be stored",
            type(exc).__name__,
            headers={"Retry-After": "1"},
        ) from exc
    return bool(ack.duplicate)


async def _until_disconnect(frames: AsyncIterator[bytes], request: Request) -> AsyncIterator[bytes]:
    async with contextlib.aclosing(frames):  # type: ignore[type-var]
        async for frame in frames:
            if await request.is_disconnected():
                return
            yield frame
