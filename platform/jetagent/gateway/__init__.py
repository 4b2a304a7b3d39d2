"""``jetagent gateway``: the request contract over HTTP, with live events and tokens.

``create_app(client, settings)`` builds the ASGI app; ``serve`` runs it on uvicorn until
stopped. README "HTTP gateway" lists the endpoints; ``schemas/openapi.json`` is the
generated OpenAPI document.
"""

from __future__ import annotations

from jetagent.gateway._app import create_app
from jetagent.gateway._config import GatewaySettings, TokenMap
from jetagent.gateway._metrics import GatewayMetrics
from jetagent.gateway._serve import GatewayServer, openapi_document, serve

__all__ = [
    "GatewayMetrics",
    "GatewayServer",
    "GatewaySettings",
    "TokenMap",
    "create_app",
    "openapi_document",
    "serve",
]
