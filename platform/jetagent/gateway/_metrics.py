"""The gateway's own metrics: HTTP requests by route, method and status, and latency.

A plain ASGI wrapper around the app. The ``route`` label is the matched route's path
template (``/v1/workflows/{workflow_id}``), never the requested path, so ids and probes
of unknown paths cannot grow the series (``unmatched``); ``status`` is the code's class
(``2xx`` … ``5xx``). Both are known when the app is built, so every series starts at 0
and a route's first request (its first 5xx) moves ``rate()`` too. Latency is measured to
the start of the response: an SSE stream's length is the workflow's, not the gateway's.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jetagent.metrics import LATENCY_BUCKETS, preset, service_registry

__all__ = ["STATUS_CLASSES", "GatewayMetrics"]

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class GatewayMetrics:
    """The metrics of one gateway replica; :meth:`wrap` an app to measure it."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else service_registry("gateway")
        self.requests = Counter(
            "jetagent_gateway_requests",
            "HTTP requests answered, by route template, method and status class (2xx…5xx).",
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
        """``app``, measured (its routes' series start at 0)."""
        for path, method in _routes(app):
            preset(self.requests, *((path, method, code) for code in STATUS_CLASSES))
            preset(self.latency, (path, method))

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
                code = f"{status // 100}xx" if 100 <= status < 600 else "5xx"
                self.requests.labels(_route(scope), scope["method"], code).inc()

        return measured


def _routes(app: ASGIApp) -> list[tuple[str, str]]:
    """``(path template, method)`` of each route of a Starlette or FastAPI app."""
    found = []
    for route in getattr(app, "routes", ()):
        path = getattr(route, "path", None)
        for method in sorted(getattr(route, "methods", None) or ()):
            if isinstance(path, str) and method != "HEAD":
                found.append((path, method))
    return found


def _route(scope: Scope) -> str:
    """The path template of the route the router matched (it sets ``scope["route"]``)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
