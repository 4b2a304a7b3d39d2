"""Running the gateway on uvicorn, and its OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.gateway._app import create_app
from jetagent.gateway._config import GatewaySettings
from jetagent.gateway._metrics import GatewayMetrics

__all__ = ["GatewayServer", "openapi_document", "serve"]

log = logging.getLogger("jetagent.gateway")


def openapi_document() -> str:
    """The OpenAPI document as checked in under ``schemas/openapi.json``."""
    client: Any = _Unconnected()
    # The defaults, not this environment's settings: the document is the same everywhere.
    app = create_app(client, GatewaySettings.model_construct())
    return json.dumps(app.openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


class _Unconnected:
    """Enough of a Client to build the app (the document needs no connection)."""

    names = Settings().names


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the program's edge owns signals (the CLI sets
    the stop event), and uvicorn would re-raise a captured SIGTERM after shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class GatewayServer:
    """The app on uvicorn, in the caller's event loop."""

    def __init__(
        self, client: Client, settings: GatewaySettings, *, metrics: GatewayMetrics | None = None
    ) -> None:
        self.settings = settings
        app = create_app(client, settings)
        config = uvicorn.Config(
            metrics.wrap(app) if metrics is not None else app,
            host=settings.addr,
            port=settings.port,
            log_level="warning",
            # uvicorn's records go to the service's handler (text or JSON lines, with the
            # service's name: jetagent.logs), not to handlers of uvicorn's own.
            log_config=None,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and serve; return the port (useful with port 0)."""
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                await self._task
                raise RuntimeError("the gateway stopped before it started")
            await asyncio.sleep(0.02)
        sockets = [s for srv in self._server.servers for s in srv.sockets]
        port: int = sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
            self._task = None


async def serve(
    client: Client,
    settings: GatewaySettings,
    stop: asyncio.Event,
    *,
    metrics: GatewayMetrics | None = None,
) -> None:
    """Serve until ``stop`` is set (measured by ``metrics``, if given)."""
    if not len(settings.token_map()):
        log.warning("no bearer tokens configured (JETAGENT_GATEWAY_TOKENS): every call is a 401")
    server = GatewayServer(client, settings, metrics=metrics)
    port = await server.start()
    log.warning("gateway listening on http://%s:%d", settings.addr, port)
    try:
        await stop.wait()
    finally:
        await server.stop()
