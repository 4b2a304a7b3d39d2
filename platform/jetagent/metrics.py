"""Prometheus metrics of one jetagent service: its own registry, served on ``/metrics``.

Every service (orchestrator, worker, projections, gateway) keeps a
:class:`~prometheus_client.CollectorRegistry` of its own — never the library's global
default, so two services in one process (tests, an embedding application) never collide
— holding the process collectors (``process_*``, ``python_info``, ``python_gc_*``), a
``jetagent_build_info{version, python, service}`` series, and the service's own metrics.
:class:`MetricsServer` serves it from a thread of its own (prometheus-client's
``start_http_server``): rendering a scrape never blocks the service's event loop.

Ports (README "Session views, metrics, dashboards, traces"): a service listens on
``JETAGENT_METRICS_PORT`` (``0``: any free port, said in its log); in a container every
service uses the same port, and ``jetagent up`` gives each service it starts a port of its
own and prints them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import platform
from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Info, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from jetagent.config import Settings
from jetagent.errors import ConfigError

__all__ = [
    "LATENCY_BUCKETS",
    "OTHER",
    "BoundedValues",
    "MetricsServer",
    "build_version",
    "preset",
    "printable_host",
    "serve_metrics",
    "service_registry",
]

log = logging.getLogger("jetagent.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds: from a fast tool call to a long model answer."""
OTHER = "other"


def build_version() -> str:
    """The installed jetagent's version (``unknown`` when run from a bare source tree)."""
    try:
        return version("jetagent")
    except PackageNotFoundError:
        return "unknown"


def service_registry(service: str) -> CollectorRegistry:
    """A registry for ``service`` with the process collectors and its build info."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info(
        "jetagent_build",
        "The jetagent release and Python a service runs (join on instance to label others).",
        registry=registry,
    ).info({"version": build_version(), "python": platform.python_version(), "service": service})
    return registry


class BoundedValues:
    """Label values a metric may take: ``known`` ones always, then the first ``limit``
    others seen; later new ones are ``other`` (values come from handlers and events, so
    they are bounded like the projection's, README "Session views, metrics, …")."""

    def __init__(self, known: Iterable[str] = (), *, limit: int = 64) -> None:
        self._known = frozenset(known)
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, value: str) -> str:
        if value in self._known or value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return OTHER
        self._seen.add(value)
        return value


def printable_host(addr: str) -> str:
    """The address to put in a URL for ``addr`` (a wildcard listens on loopback too)."""
    return "127.0.0.1" if addr in ("", "0.0.0.0", "::") else addr


class MetricsServer:
    """``registry`` on ``http://addr:port/metrics``, from a thread (a context manager)."""

    def __init__(self, registry: CollectorRegistry, *, port: int, addr: str) -> None:
        self.registry = registry
        self.addr = addr
        self.port = port
        """The port asked for; once started, the one it listens on (0 picks any)."""
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None

    @property
    def url(self) -> str:
        """Where to scrape it (the real port once started)."""
        return f"http://{printable_host(self.addr)}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        """Listen; a :class:`~jetagent.errors.ConfigError` naming the setting when the
        address cannot be bound (in use, not an address of this host)."""
        try:
            self._server, self._thread = start_http_server(
                self.port, addr=self.addr, registry=self.registry
            )
        except OSError as exc:
            why = "it is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise ConfigError(
                f"cannot serve /metrics on {self.addr}:{self.port}: {why} (set "
                "JETAGENT_METRICS_PORT to a free port, or 0 for any, and JETAGENT_METRICS_ADDR)"
            ) from exc
        self.port = int(self._server.server_port)
        return self

    def close(self) -> None:
        """Stop serving (idempotent; takes up to half a second, the server's poll)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def serve_metrics(
    registry: CollectorRegistry, settings: Settings, *, service: str
) -> Iterator[MetricsServer]:
    """Serve ``registry`` on the settings' metrics address while the block runs, and say
    where in the log (the real port when the setting is 0)."""
    with MetricsServer(registry, port=settings.metrics_port, addr=settings.metrics_addr) as server:
        log.info("%s metrics on %s", service, server.url)
        yield server


def preset(counter: Any, *label_sets: Sequence[str]) -> None:
    """Create each label set of ``counter`` (or histogram, gauge) at 0 now: a series that
    appears at its first value has no earlier sample, so ``increase()`` and ``rate()``
    never see its first event."""
    for labels in label_sets:
        counter.labels(*labels)
