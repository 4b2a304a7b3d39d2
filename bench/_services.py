"""jetagent service processes and event loops for the suites that run the platform.

:func:`bench_services` gives :class:`jetagent.testing.ServiceProcesses` as the bench runs it:
``jetagent`` CLI commands (``orchestrator``, ``worker tools``, ``projections run``, ...)
through ``bench._engine_service`` (the CLI, profilable on a signal), each under the
suite's prefix and with its own log file. :class:`Loop` is an event loop the calling
thread owns with a NATS connection on it. And a process's resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from jetagent.jetstream import connect
from jetagent.testing import ServiceProcesses

__all__ = [
    "SERVICE_COMMAND",
    "THIS_CODE",
    "Loop",
    "ServiceCode",
    "bench_services",
    "loop_with_nats",
    "rss_kib",
]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
SERVICE_COMMAND = (sys.executable, "-m", "bench._engine_service")
"""The ``jetagent`` CLI, able to profile the window a benchmark measures."""


@dataclass(frozen=True)
class ServiceCode:
    """Which jetagent the services run: the command that starts its CLI, in which folder.

    :data:`THIS_CODE` is this tree; ``bench._against`` makes one for another commit."""

    command: tuple[str, ...] = SERVICE_COMMAND
    cwd: Path = ROOT
    label: str = "this tree"
    env: Mapping[str, str] = field(default_factory=dict)
    """Set in the services' environment (under the ``env`` a suite gives)."""


THIS_CODE = ServiceCode()


def bench_services(
    url: str,
    prefix: str,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    code: ServiceCode = THIS_CODE,
) -> ServiceProcesses:
    """``jetagent`` processes under ``prefix`` on the suite's server; their logs in
    ``<log_dir>/<prefix>/``. Stop them with ``stop_all()``.

    The suites measure the engine with one tenant, not tenant quotas (``bench.quotas``
    does): no concurrency quota unless ``env`` sets one."""
    env = {"JETAGENT_TENANT_MAX_WORKFLOWS": "0", **code.env, **(env or {})}
    return ServiceProcesses(
        url, prefix, log_dir / prefix, env=env, cwd=code.cwd, command=code.command
    )


def rss_kib(pid: int) -> int:
    """``VmRSS`` of a process in KiB, from /proc (Linux only)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


class Loop:
    """An event loop owned by the calling thread, and a NATS connection on it.

    By default uvloop with the connection ``jetagent.jetstream.connect`` makes (nats-py
    with jetagent's faster header parser), as ``jetagent.cli`` sets the services up;
    in-process subjects and baselines of these suites use the same, so they compare
    like with like. ``loop_factory`` and ``connector`` choose others (plain asyncio and
    plain nats-py: the floor any store built on nats-py pays).
    """

    def __init__(
        self,
        url: str,
        name: str,
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop,
        connector: Callable[[str, str], Awaitable[NATS]] | None = None,
    ) -> None:
        self.loop: asyncio.AbstractEventLoop = loop_factory()
        self.nc: NATS = self.run(_connect(url, name, connector))
        self.js: JetStreamContext = self.nc.jetstream()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        try:
            with contextlib.suppress(Exception):
                self.run(self.nc.close())
        finally:
            self.loop.close()


async def _connect(
    url: str, name: str, connector: Callable[[str, str], Awaitable[NATS]] | None
) -> NATS:
    if connector is None:
        return await connect(url, name=name)
    return await connector(url, name)


@contextlib.contextmanager
def loop_with_nats(url: str, name: str) -> Iterator[Loop]:
    loop = Loop(url, name)
    try:
        yield loop
    finally:
        loop.close()
