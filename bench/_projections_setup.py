"""What the ``projections`` suite shares: its loop, the histories, projection processes.

- :func:`history`: a prefix whose streams hold a finished 100,000-event history
  (``bench._history.finished_history``), counted once.
- :func:`live`: a prefix with 10,000 running workflows (``bench._history.live_sessions``).
- :func:`idle`: a provisioned prefix with no events at all.
- :class:`ProjectionProcess`: ``jetagent projections run`` as a process on one of them,
  started from nothing (its session views and checkpoint purged first), with
  ``/metrics`` on a free port: when it has caught up, its resident memory and
  ``/metrics`` are read from outside.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import msgspec
from nats.js.errors import KeyNotFoundError, NotFoundError

from jetagent.config import Settings
from jetagent.embedded import free_port
from jetagent.jetstream.provision import provision
from jetagent.testing import ServiceProcesses
from projections.checkpoints import CheckpointError, CheckpointStore
from projections.service import CHECKPOINT_KEY, Checkpoint

from ._harness import Env
from ._history import StreamCounts, catalog_file, count_streams, finished_history, live_sessions
from ._services import Loop, bench_services, loop_with_nats, rss_kib

__all__ = [
    "Prefix",
    "ProjectionProcess",
    "history",
    "history_events",
    "idle",
    "live",
    "live_sessions_count",
    "loop",
    "new_live_settings",
    "projection_process",
    "write_live_sessions",
]


def history_events(env: Env) -> int:
    return env.size(100_000, 10_000)


def live_sessions_count(env: Env) -> int:
    return env.size(10_000, 1_000)


@dataclass(frozen=True)
class Prefix:
    """One prefix's settings and what its streams hold."""

    settings: Settings
    counts: StreamCounts
    workflows: int
    seconds: float
    """How long writing it took (the platform's processes, end to end)."""

    @property
    def name(self) -> str:
        return self.settings.prefix


def loop(env: Env) -> Loop:
    return env.shared("projections:loop", lambda: loop_with_nats(env.nats_url, "bench-projections"))


def _settings(env: Env, kind: str) -> Settings:
    return Settings(nats_url=env.nats_url, prefix=f"{kind}{uuid.uuid4().hex[:8]}", tenants="*")


def _services(env: Env, settings: Settings) -> ServiceProcesses:
    models = catalog_file(env.tmp / "catalog")
    return bench_services(
        env.nats_url, settings.prefix, env.tmp / "logs", {"JETAGENT_MODELS": str(models)}
    )


@contextlib.contextmanager
def _history(env: Env) -> Iterator[Prefix]:
    on = loop(env)
    settings = _settings(env, "ph")
    started = time.perf_counter()
    workflows = finished_history(on, settings, _services(env, settings), events=history_events(env))
    seconds = time.perf_counter() - started
    counts = on.run(count_streams(on, settings))
    yield Prefix(settings=settings, counts=counts, workflows=workflows, seconds=seconds)


def history(env: Env) -> Prefix:
    return env.shared("projections:history", lambda: _history(env))


def new_live_settings(env: Env) -> Settings:
    return _settings(env, "pl")


def write_live_sessions(env: Env, settings: Settings) -> Prefix:
    """Start :func:`live_sessions_count` workflows under ``settings`` and leave them
    running (the platform's processes are stopped after)."""
    on = loop(env)
    n = live_sessions_count(env)
    started = time.perf_counter()
    live_sessions(on, settings, _services(env, settings), n=n)
    seconds = time.perf_counter() - started
    counts = on.run(count_streams(on, settings))
    return Prefix(settings=settings, counts=counts, workflows=n, seconds=seconds)


@contextlib.contextmanager
def _live(env: Env) -> Iterator[Prefix]:
    yield write_live_sessions(env, new_live_settings(env))


def live(env: Env) -> Prefix:
    return env.shared("projections:live", lambda: _live(env))


@contextlib.contextmanager
def _idle(env: Env) -> Iterator[Prefix]:
    on = loop(env)
    settings = _settings(env, "pi")
    on.run(provision(on.nc, settings))
    counts = on.run(count_streams(on, settings))
    yield Prefix(settings=settings, counts=counts, workflows=0, seconds=0.0)


def idle(env: Env) -> Prefix:
    return env.shared("projections:idle", lambda: _idle(env))


class ProjectionProcess:
    """``jetagent projections run`` on one prefix, from an empty checkpoint; started
    and waited for until it has caught up with the prefix's streams."""

    def __init__(self, env: Env, settings: Settings, name: str) -> None:
        self.loop = loop(env)
        self.names = settings.names
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.http = httpx.Client(timeout=10.0, trust_env=False)
        self.services = bench_services(env.nats_url, settings.prefix, env.tmp / "logs")
        self.name = name
        self.caught_up_s = 0.0
        """From the process's start to its checkpoint at the streams' ends."""
        self.checkpoint_bytes = 0
        """The size of its checkpoint (positions and metric totals) once caught up."""
        self._purge()
        started = time.perf_counter()
        self.services.start(
            name, "projections", "run", env={"JETAGENT_METRICS_PORT": str(self.port)}
        )
        try:
            self.wait_caught_up()
        except BaseException:
            self.close()
            raise
        self.caught_up_s = time.perf_counter() - started

    @property
    def pid(self) -> int:
        return self.services[self.name].pid

    def rss_mib(self) -> float:
        return rss_kib(self.pid) / 1024

    def _purge(self) -> None:
        """No views and no checkpoint: the process starts from sequence 0."""

        async def purge() -> None:
            for bucket in ("SESSIONS", "PROJECTIONS"):
                with contextlib.suppress(NotFoundError):
                    await self.loop.js.purge_stream(f"KV_{self.names.bucket(bucket)}")

        self.loop.run(purge())

    def _targets(self) -> dict[str, int]:
        async def last() -> dict[str, int]:
            out = {}
            for stream in (self.names.workflows_stream, self.names.steps_stream):
                out[stream] = (await self.loop.js.stream_info(stream)).state.last_seq
            return out

        return self.loop.run(last())

    def _positions(self) -> dict[str, int]:
        async def read() -> dict[str, int]:
            kv = await self.loop.js.key_value(self.names.bucket("PROJECTIONS"))
            try:
                value = await CheckpointStore(kv, CHECKPOINT_KEY).load()
            except (KeyNotFoundError, NotFoundError, CheckpointError):
                return {}  # not written yet, or being written
            if not value:
                return {}
            self.checkpoint_bytes = len(value)
            return msgspec.json.decode(value, type=Checkpoint).positions

        return self.loop.run(read())

    def _serving(self) -> bool:
        try:
            return self.http.get(self.url).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_caught_up(self, timeout: float = 180.0) -> None:
        """Until its checkpoint is at the streams' ends and ``/metrics`` answers."""
        targets = self._targets()
        deadline = time.monotonic() + timeout
        while True:
            self.services.check_alive()
            positions = self._positions() if any(targets.values()) else {}
            if all(positions.get(s, 0) >= t for s, t in targets.items()) and self._serving():
                return
            if time.monotonic() > deadline:
                tail = self.services[self.name].tail()
                raise RuntimeError(
                    f"the projection process did not catch up within {timeout:.0f} s "
                    f"(at {positions}, streams end at {targets}):\n{tail}"
                )
            time.sleep(0.02)

    def scrape(self) -> bytes:
        response = self.http.get(self.url)
        response.raise_for_status()
        return response.content

    def close(self) -> None:
        try:
            self.services.stop_all()
        finally:
            self.http.close()


@contextlib.contextmanager
def projection_process(env: Env, settings: Settings, name: str) -> Iterator[ProjectionProcess]:
    process = ProjectionProcess(env, settings, name)
    try:
        yield process
    finally:
        process.close()
