"""``jetagent up``: the embedded platform — nats-server plus every service as a process.

Each service is its own process (its own failure domain, as in production), started
with the same ``jetagent`` command a deployment would run; their output is prefixed with
the service's name. Each serves ``/metrics`` on a port of its own: ``JETAGENT_METRICS_PORT``
is the first (the projections'), the others follow in the order printed; with ``0`` each
gets a free port (:meth:`Platform.metrics_ports`). Ctrl-C (or SIGTERM) stops the services
first (SIGTERM, so workers finish their steps), then the server. The data folder is
locked for as long as the server runs, and every child gets SIGTERM from the kernel if
``up`` itself is killed (``jetagent._process``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from jetagent import discovery
from jetagent._process import die_with_parent
from jetagent.config import Settings
from jetagent.embedded import EmbeddedServer, PortInUseError, free_port
from jetagent.errors import ConfigError
from jetagent.metrics import printable_host

__all__ = ["Platform", "ServiceProcess", "default_services"]

_COLORS = ["cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta"]


@dataclass
class ServiceProcess:
    """One service, run as ``python -m jetagent.cli <args>``."""

    name: str
    args: list[str]
    color: str = "white"
    raw: bool = False
    """Copy its lines as they are (JSON log lines, which name their service), unprefixed."""
    metrics_port: int | None = None
    """Its /metrics port (``JETAGENT_METRICS_PORT`` of the process); None: the settings'."""
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    async def start(
        self, env: dict[str, str], console: Console, log_dir: Path | None = None
    ) -> None:
        self._console = console
        self._log = (log_dir / f"{self.name}.log").open("ab") if log_dir else None
        if self.metrics_port is not None:
            env = {**env, "JETAGENT_METRICS_PORT": str(self.metrics_port)}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jetagent.cli",
            *self.args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # forked by the loop's (main) thread
        )

    async def pump(self) -> int:
        """Copy the service's output (prefixed, or to its log file) until it exits."""
        assert self.process is not None
        assert self.process.stdout is not None
        width = 14
        try:
            async for line in self.process.stdout:
                if self._log is not None:
                    self._log.write(line)
                    continue
                if self.raw:
                    sys.stdout.buffer.write(line)
                    sys.stdout.buffer.flush()
                    continue
                text = line.decode(errors="replace").rstrip()
                self._console.print(
                    f"[{self.color}]{self.name:<{width}}[/]| {text}", markup=True, highlight=False
                )
            return await self.process.wait()
        finally:
            if self._log is not None:
                self._log.close()

    def terminate(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


def default_services(
    *,
    replicas: int = 1,
    projections: bool = True,
    dedicated: Sequence[str] | None = None,
    capabilities: Sequence[str] | None = None,
    gateway: bool = True,
) -> list[ServiceProcess]:
    """The orchestrator, workers of every installed capability (``capabilities``; default:
    the ``jetagent.capabilities`` entry points), one ``worker tools --only NAME`` per
    dedicated tool (``dedicated``; default: the installed and configured ones, found by
    importing them — a ConfigError if one cannot be, so nothing starts half-served), the
    projections and (``gateway``) the HTTP gateway."""
    from jetagent.cli._services import capability_names, dedicated_tool_names

    if dedicated is None:
        dedicated = dedicated_tool_names()
    if capabilities is None:
        capabilities = capability_names()
    services = [ServiceProcess("orchestrator", ["orchestrator"])]
    for capability in capabilities:
        for i in range(replicas):
            suffix = f"-{i + 1}" if replicas > 1 else ""
            services.append(ServiceProcess(f"{capability}{suffix}", ["worker", capability]))
    for tool in dedicated:
        for i in range(replicas):
            suffix = f"-{i + 1}" if replicas > 1 else ""
            args = ["worker", "tools", "--only", tool]
            services.append(ServiceProcess(f"tools-{tool}{suffix}", args))
    if projections:
        services.append(ServiceProcess("projections", ["projections", "run"]))
    if gateway:
        services.append(ServiceProcess("gateway", ["gateway"]))
    for i, service in enumerate(services):
        service.color = _COLORS[i % len(_COLORS)]
    return services


@dataclass
class Platform:
    """The embedded server and the service processes, started and stopped together."""

    settings: Settings
    services: list[ServiceProcess]
    console: Console = field(default_factory=Console)
    log_dir: Path | None = None
    """Write each service's output to ``<log_dir>/<service>.log`` instead of the console."""
    port: int | None = None
    """The embedded server's client port; ``None`` picks a free one (``make demo``)."""
    announce: bool = False
    """Announce the embedded server's URL for other commands (``jetagent up``;
    ``jetagent.discovery``) while it runs."""
    server: EmbeddedServer | None = None
    url: str = ""

    async def start(self) -> None:
        """Start the server (unless ``NATS_URL`` is set), provision, start the services;
        whatever started is stopped again if a later part fails."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        if self.settings.nats_url:
            self.url = self.settings.nats_url
            self.console.print(f"using NATS at [bold]{self.url}[/] (NATS_URL)")
        else:
            self._start_server()
        await self._provision()
        if self.server is not None and self.announce:
            data_dir = _absolute(self.settings.data_dir)
            for problem in discovery.announce(data_dir, self.url):
                self.console.print(f"[yellow]warning:[/] {problem}", highlight=False)
            self.console.print(
                f"NATS_URL={self.url}  (in {discovery.url_file(self.settings.data_dir)}: "
                "other commands and Client.connect() use it)",
                highlight=False,
            )
        env = {**os.environ, **self.settings.to_env(), "NATS_URL": self.url}
        env["PYTHONUNBUFFERED"] = "1"
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        ports = self.metrics_ports()
        host = printable_host(self.settings.metrics_addr)
        width = max((len(s.name) for s in self.services), default=0)
        for service in self.services:
            service.raw = self.settings.log_format == "json"
            service.metrics_port = ports[service.name]
            await service.start(env, self.console, self.log_dir)
            pid = service.process.pid if service.process else "?"
            self.console.print(
                f"started [{service.color}]{service.name:<{width}}[/] (pid {pid})  "
                f"metrics http://{host}:{service.metrics_port}/metrics",
                highlight=False,
            )
        if any(s.args[0] == "gateway" for s in self.services):
            self.console.print(f"gateway: {_gateway_url()} (JETAGENT_GATEWAY_TOKENS)")

    def _start_server(self) -> None:
        data_dir = _absolute(self.settings.data_dir)
        # Started from this (the main) thread, not a worker thread: the kernel's
        # parent-death signal follows the thread that forked the server.
        server = EmbeddedServer(
            data_dir / "nats",
            port=self.port,
            server_name=discovery.UP_SERVER_NAME,
            die_with_parent=True,
        )
        try:
            self.server = server.start()
        except PortInUseError as exc:
            if exc.port != self.port:
                raise  # the monitoring port: free a moment ago, taken since
            # Never share a port silently: whoever holds it is named, and the user
            # chooses (docs/ARCHITECTURE.md §2, cli).
            raise PortInUseError(exc.port, discovery.port_owner(exc.port, data_dir)) from None
        self.url = self.server.url
        self.console.print(
            f"embedded nats-server: [bold]{self.url}[/]  "
            f"(monitoring {self.server.monitor_url}, data {data_dir / 'nats'})"
        )

    def metrics_ports(self) -> dict[str, int]:
        """Each service's /metrics port: ``JETAGENT_METRICS_PORT`` for the projections (so
        their URL stays the documented one), the next ports for the others in order; when
        it is 0, a free port each (the services of one host never share one)."""
        base = self.settings.metrics_port
        ordered = sorted(self.services, key=lambda s: s.args[0] != "projections")
        if base == 0:
            return {service.name: free_port() for service in ordered}
        if base + len(ordered) - 1 > 65535:
            raise ConfigError(
                f"JETAGENT_METRICS_PORT={base} leaves no room for {len(ordered)} services' "
                "/metrics ports (each takes the next port); choose a lower one, or 0"
            )
        return {service.name: base + i for i, service in enumerate(ordered)}

    async def _provision(self) -> None:
        from jetagent.jetstream import connect
        from jetagent.jetstream.provision import provision, replica_plan

        nc = await connect(self.url, name="jetagent.up", creds=self.settings.nats_creds)
        try:
            plan = replica_plan(nc, self.settings)
            done = await provision(nc, self.settings, change_existing=True, on_applied=None)
        finally:
            await nc.close()
        actions = Counter(a.action for a in done)
        self.console.print(
            f"provisioned {len(done)} streams, buckets and consumers, R{plan.replicas} "
            f"({plan.reason}): " + ", ".join(f"{n} {action}" for action, n in actions.items())
        )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every worker's consumer exists and its tools are registered."""
        from jetagent.jetstream import connect

        workers = [
            "-".join([s.args[1], *s.args[3:]])  # worker tools --only X: consumer cap-tools-X
            for s in self.services
            if s.args[0] == "worker"
        ]
        nc = await connect(self.url, name="jetagent.up", creds=self.settings.nats_creds)
        js = nc.jetstream()
        names = self.settings.names
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        for capability in workers:
                            await js.consumer_info(names.workflows_stream, f"cap-{capability}")
                        if "tools" in workers:
                            registry = await js.key_value(names.bucket("REGISTRY"))
                            await registry.get("tool.calculator")
                        return
                    except Exception:
                        await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def pump(self) -> dict[asyncio.Task[int], ServiceProcess]:
        """Start copying every service's output; the tasks end when the services exit."""
        return {asyncio.create_task(s.pump()): s for s in self.services}

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` or a service exits; then stop everything. Returns 0 on a
        requested stop, else the failed service's exit code."""
        pumps = self.pump()
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*pumps, stopper], return_when=asyncio.FIRST_COMPLETED)
        code = 0
        for task in done:
            if task in pumps:
                service = pumps[task]
                code = task.result() or 1
                self.console.print(f"[red]{service.name} exited with status {code}; stopping[/]")
        await self.stop(pumps)
        stopper.cancel()
        return code

    async def stop(self, pumps: dict[asyncio.Task[int], ServiceProcess] | None = None) -> None:
        """Stop the services (SIGTERM, SIGKILL after the grace period), then the server."""
        if self.server is not None and self.announce:
            # Withdrawn first: no command finds a platform that is going away.
            discovery.withdraw(_absolute(self.settings.data_dir))
        started = [s for s in self.services if s.process is not None]
        if started:
            self.console.print("stopping services…")
        for service in started:
            service.terminate()
        if pumps:
            _, late = await asyncio.wait(pumps, timeout=self.settings.shutdown_grace_s + 5)
            for task in late:
                pumps[task].kill()
            if late:
                await asyncio.wait(late)
        else:
            # Started, never pumped (a later start failed): reap them all the same.
            for service in started:
                assert service.process is not None
                try:
                    await asyncio.wait_for(
                        service.process.wait(), self.settings.shutdown_grace_s + 5
                    )
                except TimeoutError:
                    service.kill()
                    await service.process.wait()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
            self.server = None
            self.console.print("nats-server stopped")


def _gateway_url() -> str:
    from jetagent.gateway import GatewaySettings

    http = GatewaySettings()
    return f"http://{http.addr}:{http.port}"


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))
