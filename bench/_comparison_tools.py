"""The ``comparison`` suite's two tools, shared by both architectures.

- ``slow_lookup(key, delay_ms, ref)``: slow I/O — an HTTP GET to the scripted server's
  ``/lookup``, which answers after ``delay_ms``;
- ``crunch(n, salt, ref)``: CPU-bound — a pure-Python loop of ``n`` iterations (~300 ms),
  run in a process pool by both architectures.

Each run of a tool appends its call's ``ref`` to a ledger file (``BENCH_TOOL_LEDGER``;
``O_APPEND`` writes of one short line are atomic, from any process), so the bench counts
tool *runs* per tool *call* whatever the architecture does. ``TOOLS`` is what jetagent's
tools workers load (``JETAGENT_TOOLS=bench._comparison_tools:TOOLS``): ``crunch`` is
``dedicated`` — served only by ``jetagent worker tools --only crunch``.
"""

from __future__ import annotations

import os

import httpx

from jetagent import tool

__all__ = ["LEDGER_ENV", "SERVER_ENV", "TOOLS", "crunch", "crunch_impl", "lookup_impl"]

LEDGER_ENV = "BENCH_TOOL_LEDGER"
SERVER_ENV = "BENCH_COMPARISON_SERVER"

_clients: dict[int, httpx.AsyncClient] = {}


def _record(ref: str, tool_name: str) -> None:
    path = os.environ.get(LEDGER_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tool_name} {ref}\n".encode())
    finally:
        os.close(fd)


def crunch_impl(n: int, salt: int, ref: str) -> int:
    """Sum of the squares of ``salt .. salt+n-1``, mod 1000, the slow way."""
    _record(ref, "crunch")
    total = 0
    for i in range(salt, salt + n):
        total += i * i
    return total % 1000


def _client() -> httpx.AsyncClient:
    # One pooled client per process (a worker, the monolith), created on first use.
    client = _clients.get(os.getpid())
    if client is None:
        client = httpx.AsyncClient(
            base_url=os.environ[SERVER_ENV],
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            trust_env=False,
        )
        _clients[os.getpid()] = client
    return client


async def lookup_impl(key: str, delay_ms: int, ref: str) -> int:
    _record(ref, "slow_lookup")
    response = await _client().get("/lookup", params={"key": key, "delay_ms": delay_ms})
    response.raise_for_status()
    value: int = response.json()["value"]
    return value


@tool(description="Look a figure up in the inventory service (slow: 1-2 s).")
async def slow_lookup(key: str, delay_ms: int, ref: str) -> int:
    return await lookup_impl(key, delay_ms, ref)


@tool(
    description="Crunch a number (CPU-bound, ~300 ms).",
    runs_in="process",
    dedicated=True,
)
def crunch(n: int, salt: int, ref: str) -> int:
    return crunch_impl(n, salt, ref)


TOOLS = [slow_lookup, crunch]
