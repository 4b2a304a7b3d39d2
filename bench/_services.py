"""jetagent service processes for the ``projections`` and ``capabilities`` suites.

:class:`Services` starts ``jetagent`` CLI commands (``orchestrator``, ``worker tools``,
``projections run``, ...) as real processes through ``bench._engine_service`` (the CLI,
profilable on a signal), each under the suite's prefix and with its own log file, and
stops them with SIGTERM. :class:`Loop` is an event loop the calling thread owns (uvloop,
as the services run on) with a plain nats-py connection on it. A few small helpers:
free ports, a process's resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import uvloop
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from jetagent.jetstream import connect

__all__ = ["Loop", "Services", "free_port", "loop_with_nats", "rss_kib"]

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    """``VmRSS`` of a process in KiB, from /proc (Linux only)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


class Loop:
    """A uvloop event loop owned by the calling thread, and a NATS connection on it.

    The services run on uvloop with the connection ``jetagent.store.connect`` makes
    (nats-py with jetagent's faster header parser), as ``jetagent.cli`` sets them up;
    in-process subjects and baselines of these suites use the same, so they compare
    like with like.
    """

    def __init__(self, url: str, name: str) -> None:
        self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self.nc: NATS = self.run(connect(url, name=name))
        self.js: JetStreamContext = self.nc.jetstream()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        try:
            with contextlib.suppress(Exception):
                self.run(self.nc.close())
        finally:
            self.loop.close()


@contextlib.contextmanager
def loop_with_nats(url: str, name: str) -> Iterator[Loop]:
    loop = Loop(url, name)
    try:
        yield loop
    finally:
        loop.close()


class Services:
    """``jetagent`` processes under one prefix on the suite's server."""

    def __init__(
        self, url: str, prefix: str, log_dir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(
        self, name: str, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``jetagent <args>`` as ``name`` (its log: ``<prefix>-<name>.log``)."""
        full_env = {
            **os.environ,
            "NATS_URL": self.url,
            "JETAGENT_PREFIX": self.prefix,
            "JETAGENT_TENANTS": "*",
            "PYTHONUNBUFFERED": "1",
            **self.env,
            **(env or {}),
        }
        log = self.log_path(name).open("ab")
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench._engine_service", *args],
                cwd=ROOT,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.processes[name] = process
        return process

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{self.prefix}-{name}.log"

    def log(self, name: str, lines: int = 20) -> str:
        path = self.log_path(name)
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log(name)}")

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            _terminate([process])

    def close(self) -> None:
        processes, self.processes = list(self.processes.values()), {}
        _terminate(processes)


def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
