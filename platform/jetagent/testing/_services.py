"""jetagent's services as real processes under one NATS URL and prefix, for tests that
kill, restart and watch them (see :mod:`jetagent.testing._supervised` for one process)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext

from jetagent.config import Settings
from jetagent.testing._supervised import SupervisedProcess

__all__ = ["ServiceProcesses", "jetagent_command", "tools_registered"]


def jetagent_command(*, installed: bool = False) -> list[str]:
    """The command that runs the ``jetagent`` CLI: ``python -m jetagent.cli`` with this
    interpreter, or with ``installed`` the console script next to it, as a user runs it."""
    if installed:
        return [str(Path(sys.executable).with_name("jetagent"))]
    return [sys.executable, "-m", "jetagent.cli"]


async def tools_registered(js: JetStreamContext, settings: Settings, *tools: str) -> bool:
    """Whether tools workers have announced every tool named (a worker announces its
    tools in the registry bucket before it serves them). Poll it with :func:`eventually`
    to wait for a worker that was started as a process."""
    try:
        kv = await js.key_value(settings.names.bucket("REGISTRY"))
        keys = set(await kv.keys())
    except NatsError:  # not provisioned yet, no keys yet, or the server is restarting
        return False
    # The key of each tool, as jetagent.worker.registry.ToolRegistry writes it.
    return {f"tool.{name}" for name in tools} <= keys


class ServiceProcesses:
    """``jetagent`` services (``orchestrator``, ``worker tools``, ...) as processes.

    Each runs ``command + args`` (default :func:`jetagent_command`) with this process's
    environment plus ``NATS_URL=url``, ``JETAGENT_PREFIX=prefix``, ``JETAGENT_TENANTS=*``
    (every tenant), ``JETAGENT_METRICS_PORT=0`` (each service's /metrics on a free port:
    services of one test, and of tests running at once, never collide), unbuffered
    output, then :attr:`env`, then the ``env`` given to :meth:`start`. Its output goes to
    ``<log_dir>/<name>.log``. :attr:`url` and :attr:`env` may be changed between starts
    (services logging in as different users). Use as a context manager (sync or async),
    or call :meth:`stop_all` in ``finally``.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        log_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.log_dir = log_dir
        self.env: dict[str, str] = dict(env or {})
        self.cwd = cwd
        self.command = list(command) if command is not None else jetagent_command()
        self.processes: dict[str, SupervisedProcess] = {}
        """The services started and not stopped or killed, by name."""
        self._gone: list[SupervisedProcess] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def environment(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment a service started now gets."""
        return {
            **os.environ,
            "NATS_URL": self.url,
            "JETAGENT_PREFIX": self.prefix,
            "JETAGENT_TENANTS": "*",
            "JETAGENT_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
            **self.env,
            **(env or {}),
        }

    def start(
        self, name: str, *args: str, env: Mapping[str, str] | None = None
    ) -> SupervisedProcess:
        """Start ``jetagent <args>`` as ``name``. A name may be reused once its process
        was stopped or killed (its log goes on)."""
        previous = self.processes.pop(name, None)
        if previous is not None:
            if previous.running:
                self.processes[name] = previous
                raise ValueError(f"{name} is already running")
            self._gone.append(previous)
        process = SupervisedProcess(
            name,
            [*self.command, *args],
            log_file=self.log_path(name),
            env=self.environment(env),
            cwd=self.cwd,
        )
        self.processes[name] = process.start()
        return process

    def __getitem__(self, name: str) -> SupervisedProcess:
        return self.processes[name]

    def kill(self, name: str) -> None:
        """SIGKILL ``name``: it dies mid-work, as in a crash."""
        process = self.processes.pop(name)
        self._gone.append(process)
        process.kill()

    def stop(self, name: str, timeout: float = 20.0) -> None:
        """SIGTERM ``name`` (SIGKILL after ``timeout`` s) and wait for it."""
        process = self.processes.pop(name, None)
        if process is not None:
            self._gone.append(process)
            process.close(timeout)

    def restart(self, name: str, timeout: float = 20.0) -> SupervisedProcess:
        """Stop ``name`` and start it again with the same command and environment."""
        return self.processes[name].restart(timeout)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log(self, name: str) -> str:
        """Everything ``name`` printed, over all its runs (also after it was killed)."""
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        """Raise :class:`ProcessExitedError` if a service has exited (pass it as the
        ``alive`` of :func:`eventually` while waiting for the services)."""
        for process in self.processes.values():
            process.check_alive()

    def stop_all(self, timeout: float = 20.0) -> None:
        """Stop every service in parallel (SIGTERM; SIGKILL after ``timeout`` s), and
        sweep the process groups of every service ever started. Idempotent."""
        processes = [*self.processes.values(), *self._gone]
        self.processes.clear()
        self._gone.clear()
        for process in processes:
            process.request_stop()
        deadline = time.monotonic() + timeout
        for process in processes:
            process.close(max(deadline - time.monotonic(), 0.1))

    def __enter__(self) -> ServiceProcesses:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    async def __aenter__(self) -> ServiceProcesses:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop_all)
