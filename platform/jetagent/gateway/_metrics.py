"""The gateway's own metrics: HTTP requests by route, method and status, and latency.

A plain ASGI wrapper around the app. The ``route`` label is the matched route's path
template (``/v1/workflows/{workflow_id}``), never the requested path, so ids and probes
of unknown paths cannot grow the series (``unmatched``). Latency is measured to the start
of the response: an SSE stream's length is the workflow's, not the gateway's.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jetagent.metrics import LATENCY_BUCKETS, service_registry

__all__ = ["GatewayMetrics"]


class GatewayMetrics:
    """The metrics of one gateway replica; :meth:`wrap` an app to measure it."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else service_registry("gateway")
        self.requests = Counter(
            "jetagent_gateway_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "jetagent_gateway_request_seconds",
            "From a request's arrival to the start of its response, by route and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app``, measured."""

        async def measured(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.monotonic()
            status = 500  # what the server answers if the app raises before responding

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    self.latency.labels(_route(scope), scope["method"]).observe(
                        time.monotonic() - started
                    )
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                self.requests.labels(_route(scope), scope["method"], str(status)).inc()

        return measured


def _route(scope: Scope) -> str:
    """The path template of the route the router matched (it sets ``scope["route"]``)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
