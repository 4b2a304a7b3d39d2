"""Built-in tools that reach outside: HTTP fetch (allow-listed hosts), JSON query, Python.

``http_fetch`` only talks to hosts in ``JETAGENT_HTTP_ALLOW`` (comma-separated host
names, ``*.example.com`` for subdomains; empty — the default — allows none), follows
redirects only within the allow-list, and caps the body. ``python`` runs a snippet in the
sandbox (``capabilities.tools.sandbox``), limited by ``JETAGENT_SANDBOX_CPU_S``,
``JETAGENT_SANDBOX_WALL_S``, ``JETAGENT_SANDBOX_MEMORY_MB`` and
``JETAGENT_SANDBOX_OUTPUT_KB``. ``json_query`` applies a JMESPath expression.
"""

from __future__ import annotations

import fnmatch
import json
import os
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import jmespath
from jmespath.exceptions import JMESPathError

from capabilities.tools.sandbox import SandboxLimits, run_python
from jetagent import tool

__all__ = ["allowed_hosts", "http_fetch", "json_query", "python"]

_MAX_REDIRECTS = 5


def allowed_hosts() -> list[str]:
    """Host patterns ``http_fetch`` may reach (``JETAGENT_HTTP_ALLOW``)."""
    raw = os.environ.get("JETAGENT_HTTP_ALLOW", "")
    return [h.strip().lower() for h in raw.split(",") if h.strip()]


def _allowed(url: str) -> str | None:
    """None if ``url`` may be fetched, else why not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return f"only http and https URLs can be fetched, not {parts.scheme or 'no scheme'!r}"
    host = (parts.hostname or "").lower()
    patterns = allowed_hosts()
    if not any(fnmatch.fnmatchcase(host, p) for p in patterns):
        allowed = ", ".join(patterns) or "none (set JETAGENT_HTTP_ALLOW)"
        return f"host {host!r} is not on the allow-list ({allowed})"
    return None


@tool(description="Fetch a web page or API response (allow-listed hosts only).", timeout_s=30)
async def http_fetch(url: str, max_bytes: int = 100_000) -> dict[str, Any]:
    max_bytes = max(1, min(max_bytes, 1_000_000))
    async with httpx.AsyncClient(follow_redirects=False, timeout=20.0, trust_env=False) as client:
        for _ in range(_MAX_REDIRECTS + 1):
            refusal = _allowed(url)
            if refusal is not None:
                raise PermissionError(refusal)
            async with client.stream("GET", url) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                body = b""
                truncated = False
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        body, truncated = body[:max_bytes], True
                        break
                return {
                    "url": url,
                    "status": response.status_code,
                    "content_type": response.headers.get("content-type", ""),
                    "text": body.decode(response.encoding or "utf-8", errors="replace"),
                    "truncated": truncated,
                }
    raise RuntimeError(f"more than {_MAX_REDIRECTS} redirects")


@tool(description="Query JSON data with a JMESPath expression (e.g. 'items[?price > `3`].name').")
def json_query(data: Any, query: str) -> Any:
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValueError(f"data is not JSON: {exc}") from exc
    try:
        return jmespath.search(query, data)
    except JMESPathError as exc:
        raise ValueError(f"invalid JMESPath expression: {exc}") from exc


def _limits() -> SandboxLimits:
    env = os.environ.get
    return SandboxLimits(
        cpu_seconds=float(env("JETAGENT_SANDBOX_CPU_S", "5")),
        wall_seconds=float(env("JETAGENT_SANDBOX_WALL_S", "10")),
        memory_bytes=int(float(env("JETAGENT_SANDBOX_MEMORY_MB", "256")) * 2**20),
        max_output_bytes=int(float(env("JETAGENT_SANDBOX_OUTPUT_KB", "64")) * 1024),
    )


@tool(
    description=(
        "Run a Python snippet in a sandbox (no network, no host files, CPU, memory and "
        "output limits) and return what it printed."
    ),
    timeout_s=60,
)
async def python(code: str, stdin: str = "") -> dict[str, Any]:
    result = await run_python(code, limits=_limits(), stdin=stdin)
    return {
        "ok": result.ok,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "exit_code": result.exit_code,
        "error": result.error,
        "truncated": result.truncated,
    }
