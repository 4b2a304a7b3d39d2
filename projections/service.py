"""The projection service: session views and metrics, live, checkpointed, rebuildable.
(A little over 400 lines: following the streams, checkpointing and rebuilding share the
positions and the views in memory; the fold itself is ``projections/fold.py``, the live
gauges ``projections/live.py``, the checkpoint's storage ``projections/checkpoints.py``.)

It reads ``JA_WORKFLOWS``, ``JA_STEPS`` and ``JA_DLQ`` with ordered consumers from its
checkpoint, folds every event into the session views (``JA_SESSIONS``) and the metric
totals, and every second (or 5,000 events) writes the changed views, then one
checkpoint (``JA_PROJECTIONS``) holding the stream positions and the metric totals
together. Restarting resumes from the checkpoint: views ignore events they applied (each
remembers its last sequence per stream) and totals were saved at exactly the checkpoint's
positions, so nothing is reset or counted twice. ``rebuild()`` replays from sequence 0.

It rides a cluster's elections (docs/ARCHITECTURE.md §5.14): every view and checkpoint
put is retried until the bucket's stream has a leader again, the ordered consumers are
recreated within two seconds of going quiet, and if the streams stay out of reach longer
than a write's deadline, following pauses and resumes from the positions in memory —
the service does not exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from jetagent import plugins
from jetagent.config import Settings
from jetagent.errors import JetagentError
from jetagent.jetstream import kv_put
from jetagent.jetstream.provision import provision
from jetagent.metrics import serve_metrics, service_registry
from jetagent.models import ModelCatalog
from jetagent.reports import PROJECTION_KEY, ProjectionReport, identity, keep_reporting
from jetagent.sessions import SessionView
from projections.checkpoints import CheckpointError, CheckpointStore
from projections.costs import MetricsCollector
from projections.fold import ProjectionFold
from projections.known import known_label_sets, known_routes
from projections.labels import LabelPolicy
from projections.live import LiveGauges, circuit_states, consumer_backlog
from projections.poison import PoisonReporter
from projections.totals import MetricsState

__all__ = ["Checkpoint", "ProjectionService"]

log = logging.getLogger("jetagent.projections")

CHECKPOINT_KEY = "projection"
_PUT_WINDOW = 4096  # KV puts in flight at once when views are written
_PUT_ACKS_S = 5.0
"""How long a window of view puts waits for its acknowledgements before the missing ones
are put again one by one (a put sent on a connection that died is never answered)."""
_FOLLOW_HEARTBEAT_S = 1.0
"""Idle heartbeat of the ordered consumers: nats-py recreates one that missed two (its
node died), so following resumes within seconds of an election instead of ten."""
_RESUME_PAUSE_S = 1.0
"""Pause before following again after the streams were out of reach."""
_TRANSIENT = (JetagentError, NatsError, TimeoutError, OSError)
"""What ends a pass of following without ending the service (CheckpointError aside)."""


class Checkpoint(msgspec.Struct):
    positions: dict[str, int] = msgspec.field(default_factory=dict)
    metrics: MetricsState = msgspec.field(default_factory=MetricsState)


_checkpoint_decoder = msgspec.json.Decoder(Checkpoint)
_encoder = msgspec.json.Encoder(decimal_format="string")
_view_decoder = msgspec.json.Decoder(SessionView)
Progress = Callable[[int, int], None]


@dataclass
class _Inbox:
    """Messages of every followed stream, in arrival order."""

    items: deque[tuple[str, Msg]] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class ProjectionService(ProjectionFold):
    """One projection replica (run one; a second would only duplicate the writes).

    The fold (:class:`ProjectionFold`) applies each message; this follows the streams,
    loads the views the fold needs, writes checkpoints, and serves the metrics."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        *,
        checkpoint_events: int = 5000,
        checkpoint_interval_s: float = 1.0,
        catalog: ModelCatalog | None = None,
    ) -> None:
        """``catalog``: the models whose names are label values (default: the one
        ``settings.models`` names, as the workers load it)."""
        self.nc = nc
        self.settings = settings
        self.js = nc.jetstream()
        self.checkpoint_events = checkpoint_events
        self.checkpoint_interval_s = checkpoint_interval_s
        catalog = _catalog(settings, catalog)
        labels = LabelPolicy(
            tenants=settings.tenant_set,
            models=frozenset(catalog.models) if catalog is not None else None,
        )
        super().__init__(settings.names, labels, PoisonReporter(nc, settings.names))
        self.live = LiveGauges()
        self.checkpointed: dict[str, int] = {}
        """The positions of the last checkpoint: what the stored session views hold."""
        self._sessions: KeyValue | None = None
        self._checkpoints: CheckpointStore | None = None
        known = known_label_sets(tenants=self.labels.tenants, streams=list(self.streams))
        self.registry = service_registry("projections")
        installed = list(plugins.installed(plugins.CAPABILITIES))
        # Each installed capability's calls of each catalog model, at 0 from the start:
        # a model's first call (its first failure, say) then moves rate() too.
        routes = [(m.name, m.provider) for m in catalog.models.values()] if catalog else []
        known.update(known_routes(installed, routes, self.labels.tenants))
        collector = MetricsCollector(self.metrics, self.live, known=known, capabilities=installed)
        self.registry.register(collector)

    @property
    def streams(self) -> dict[str, str]:
        names = self.names
        return {
            names.workflows_stream: names.all_workflows,
            names.steps_stream: names.all_step_results,
            names.dlq_stream: names.all_dead_letters,
        }

    async def _buckets(self) -> tuple[KeyValue, CheckpointStore]:
        if self._sessions is None or self._checkpoints is None:
            self._sessions = await self.js.key_value(self.names.bucket("SESSIONS"))
            bucket = self.names.bucket("PROJECTIONS")
            kv = await self.js.key_value(bucket)
            self._checkpoints = CheckpointStore(kv, CHECKPOINT_KEY, nc=self.nc, bucket=bucket)
        return self._sessions, self._checkpoints

    # --------------------------------------------------------------- applying

    async def _load_view(self, workflow_id: str) -> SessionView:
        view = await self._stored_view(workflow_id) or SessionView(workflow_id=workflow_id)
        self._evict()
        return view

    async def _stored_view(self, workflow_id: str) -> SessionView | None:
        sessions, _ = await self._buckets()
        try:
            entry = await sessions.get(workflow_id)
        except (KeyNotFoundError, NotFoundError):
            return None
        return _view_decoder.decode(entry.value) if entry.value else None

    async def apply(self, stream: str, seq: int, subject: str, data: bytes) -> None:
        """Fold one stored message of ``stream`` into views and totals."""
        missing = self.apply_now(stream, seq, subject, data)
        if missing is not None:
            self.views[missing] = await self._load_view(missing)
            self.apply_now(stream, seq, subject, data)

    # ------------------------------------------------------------ checkpoints

    async def load_checkpoint(self) -> None:
        _, checkpoints = await self._buckets()
        value = await checkpoints.load()
        if value:
            saved = _checkpoint_decoder.decode(value)
            self.positions = saved.positions
            self.checkpointed = dict(saved.positions)
            self._replace_metrics(saved.metrics)

    def _replace_metrics(self, metrics: MetricsState) -> None:
        for item in msgspec.structs.fields(MetricsState):
            setattr(self.metrics, item.name, getattr(metrics, item.name))

    async def checkpoint(self) -> None:
        """Write the changed views, then the positions and totals (in that order)."""
        _, checkpoints = await self._buckets()
        dirty, self._dirty = list(self._dirty), set()
        if self._rebuilding:
            self._rebuilt.update(dirty)
        # Pipelined puts (a KV put is a publish to $KV.<bucket>.<key>), every ack checked;
        # one refused (no leader: an election) or unanswered is put again, retried.
        bucket = self.names.bucket("SESSIONS")
        subject = f"$KV.{bucket}."
        try:
            for start in range(0, len(dirty), _PUT_WINDOW):
                window = dirty[start : start + _PUT_WINDOW]
                acks = [
                    await self.js.publish_async(subject + wid, _encoder.encode(self.views[wid]))
                    for wid in window
                ]
                done, late = await asyncio.wait(acks, timeout=_PUT_ACKS_S) if acks else ((), ())
                for ack in late:
                    ack.cancel()
                for wid, ack in zip(window, acks, strict=True):
                    if ack in done and not ack.cancelled() and ack.exception() is None:
                        continue
                    await kv_put(self.nc, bucket, wid, _encoder.encode(self.views[wid]))
        except BaseException:
            self._dirty.update(dirty)  # written by the next checkpoint
            raise
        saved = Checkpoint(positions=dict(self.positions), metrics=self.metrics)
        await checkpoints.save(_encoder.encode(saved))
        self.checkpointed = saved.positions
        self._since_checkpoint = 0

    # -------------------------------------------------------------- following

    async def _follow(self, stream: str, subject: str, inbox: _Inbox) -> Any:
        async def on_message(msg: Msg) -> None:
            inbox.items.append((stream, msg))
            inbox.arrived.set()

        return await self.js.subscribe(
            subject,
            stream=stream,
            ordered_consumer=True,
            idle_heartbeat=_FOLLOW_HEARTBEAT_S,
            cb=on_message,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.positions.get(stream, 0) + 1,
            ),
        )

    async def _last_sequences(self) -> dict[str, int]:
        last = {}
        for stream in self.streams:
            info = await self.js.stream_info(stream)
            last[stream] = info.state.last_seq
        return last

    async def process(
        self,
        stop: asyncio.Event,
        *,
        until_caught_up: bool = False,
        progress: Progress | None = None,
    ) -> None:
        """Apply messages as they arrive until ``stop`` (or, for a rebuild, the end)."""
        inbox = _Inbox()
        targets = await self._last_sequences()
        # Only what was in the stream before this run can have a stored view.
        self._stored_until = targets.get(self._workflows_stream, 0)
        total = sum(max(targets[s] - self.positions.get(s, 0), 0) for s in targets)
        subscriptions = [await self._follow(s, subj, inbox) for s, subj in self.streams.items()]
        done = 0
        last_checkpoint = time.monotonic()
        try:
            items = inbox.items
            while not stop.is_set():
                if items:
                    # A tight synchronous loop: no await per event unless a view must be
                    # read from the bucket (a workflow started before a restart).
                    budget = self.checkpoint_events - self._since_checkpoint
                    while items and budget > 0:
                        stream, msg = items.popleft()
                        args = (stream, _stream_seq(msg.reply), msg.subject, msg.data)
                        missing = self.apply_now(*args)
                        if missing is not None:
                            self.views[missing] = await self._load_view(missing)
                            self.apply_now(*args)
                        done += 1
                        budget -= 1
                    if self.poison.queued:
                        await self.poison.flush()
                    if progress is not None:
                        progress(done, total)
                    if self._since_checkpoint < self.checkpoint_events:
                        await asyncio.sleep(0)  # let the client read more messages
                        now = time.monotonic()
                        if now - last_checkpoint < self.checkpoint_interval_s:
                            continue
                else:
                    if until_caught_up and all(
                        self.positions.get(s, 0) >= t for s, t in targets.items()
                    ):
                        break
                    inbox.arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(inbox.arrived.wait(), timeout=0.25)
                now = time.monotonic()
                if self._since_checkpoint >= self.checkpoint_events or (
                    self._since_checkpoint and now - last_checkpoint >= self.checkpoint_interval_s
                ):
                    await self.checkpoint()
                    last_checkpoint = now
        finally:
            for subscription in subscriptions:
                with contextlib.suppress(NatsError):
                    await subscription.unsubscribe()
        if stop.is_set():
            await self._last_save()
        else:
            await self.poison.flush()
            await self.checkpoint()
        if progress is not None:
            progress(done, total)

    async def _last_save(self) -> None:
        """On stop, what was applied is saved once more, within ``shutdown_grace_s``: a
        server that is gone (its node died, or ``jetagent up`` was killed) must not keep
        a stopping service alive through minutes of retried puts. What is not saved is
        applied again from the last checkpoint on the next start (views are idempotent)."""

        async def save() -> None:
            await self.poison.flush()
            await self.checkpoint()

        try:
            await asyncio.wait_for(save(), timeout=self.settings.shutdown_grace_s)
        except (CheckpointError, *_TRANSIENT) as exc:
            log.warning(
                "the last checkpoint was not saved (%s: %s); the next start resumes from "
                "positions %s",
                type(exc).__name__,
                exc,
                self.checkpointed,
            )

    async def refresh_live_gauges(self) -> None:
        """Consumer backlog, projection lag and circuit states, read from the server."""
        names = self.names
        streams = (names.requests_stream, names.workflows_stream, names.steps_stream)
        self.live.pending, self.live.ack_pending = await consumer_backlog(self.js, streams)
        with contextlib.suppress(NatsError, NotFoundError):
            last = await self._last_sequences()
            self.live.lag = {s: max(last[s] - self.positions.get(s, 0), 0) for s in last}
            self.live.applied = {s: self.positions.get(s, 0) for s in last}
        self.live.circuits = await circuit_states(self.js, names)

    # ------------------------------------------------------------------ modes

    async def run(self, stop: asyncio.Event) -> None:
        """Serve: resume from the checkpoint, follow the streams, expose /metrics."""
        await provision(self.nc, self.settings, consumers=False)
        while True:
            try:
                await self.load_checkpoint()
                break
            except CheckpointError:
                raise
            except _TRANSIENT as exc:  # the bucket's stream is electing a leader
                log.warning("reading the checkpoint failed (%s); trying again", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=_RESUME_PAUSE_S)
                if stop.is_set():
                    return
        with serve_metrics(self.registry, self.settings, service="projections") as server:
            log.info("projections serving %s from positions %s", server.url, self.positions)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._follow_until(stop))
                tasks.create_task(self._gauges_loop(stop))
                tasks.create_task(self._report(stop))

    async def _report(self, stop: asyncio.Event) -> None:
        """Say that this service runs and how far the views are (``jetagent status`` and
        ``list`` read it, :mod:`jetagent.reports`); marked stopped when it stops."""
        started, me = time.time(), identity()

        def report(*, stopped: bool = False) -> dict[str, ProjectionReport]:
            return {
                PROJECTION_KEY: ProjectionReport(
                    positions=dict(self.checkpointed),
                    started_at=started,
                    at=time.time(),
                    stopped=stopped,
                    **me,
                )
            }

        bucket = self.names.bucket("PROJECTIONS")
        await keep_reporting(self.js, bucket, report, stop, last=lambda: report(stopped=True))

    async def _follow_until(self, stop: asyncio.Event) -> None:
        """Follow the streams until ``stop``; a pass that ends because NATS is out of
        reach (an election, a node's death) is followed by another from the positions
        in memory, which never lose an applied event."""
        while True:
            try:
                await self.process(stop)
                return
            except CheckpointError:
                raise
            except _TRANSIENT as exc:
                log.warning(
                    "following paused (%s: %s); resuming from positions %s",
                    type(exc).__name__,
                    exc,
                    self.positions,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=_RESUME_PAUSE_S)
            if stop.is_set():
                await self._last_save()  # what was applied, saved once more
                return

    async def _gauges_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.refresh_live_gauges()
            except Exception:
                log.exception("refreshing live gauges failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=2.0)

    async def rebuild(self, progress: Progress | None = None) -> int:
        """Replay every stream from sequence 0 into fresh views and totals; return events."""
        await provision(self.nc, self.settings, consumers=False)
        # What the live service read before was dead-lettered then, if it was poison.
        previous = Checkpoint()
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            _, checkpoints = await self._buckets()
            previous = _checkpoint_decoder.decode(await checkpoints.load() or b"{}")
        self.poison.reported_until = dict(previous.positions)
        self._rebuilding = True
        self._rebuilt = set()
        self.positions = {}
        self.views.clear()
        self._dirty.clear()
        self._replace_metrics(MetricsState())
        # A rebuild writes views rarely: a view written once at the end, not per second.
        saved = self.checkpoint_events, self.checkpoint_interval_s
        self.checkpoint_events, self.checkpoint_interval_s = 200_000, 10.0
        try:
            await self.process(asyncio.Event(), until_caught_up=True, progress=progress)
        finally:
            self._rebuilding = False
            self.checkpoint_events, self.checkpoint_interval_s = saved
        return sum(self.positions.values())


def _catalog(settings: Settings, catalog: ModelCatalog | None) -> ModelCatalog | None:
    try:
        return catalog or ModelCatalog.load(settings.models)
    except Exception:  # the services that route already refuse a bad catalog at start
        return None


def _stream_seq(reply: str) -> int:
    """The stream sequence in a JetStream ack subject (``$JS.ACK.<stream>.<consumer>.
    <delivered>.<stream_seq>...``, or the domain-and-hash form with two more tokens);
    cheaper than building nats-py's full metadata for every message."""
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])
