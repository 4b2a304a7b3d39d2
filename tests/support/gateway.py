"""The HTTP gateway for tests: on a free loopback port, with two tenants' tokens, and an
SSE reader over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

TOKENS = {"acme": "tok-acme-0123456789", "beta": "tok-beta-0123456789"}
TOKEN_SETTING = ",".join(f"{token}={tenant}" for tenant, token in TOKENS.items())


def auth(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[tenant]}"}


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: dict[str, Any]
    id: int | None


async def sse_events(
    http: httpx.AsyncClient, path: str, *, headers: dict[str, str], params: Any = None
) -> AsyncIterator[SseEvent]:
    """Parse a text/event-stream over real HTTP, frame by frame, until the server ends it."""
    async with http.stream("GET", path, headers=headers, params=params, timeout=60) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "event" in fields:
                    event_id = int(fields["id"]) if "id" in fields else None
                    yield SseEvent(fields["event"], json.loads(fields["data"]), event_id)
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
