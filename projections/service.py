"""The projection service: session views and metrics, live, checkpointed, rebuildable.

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
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from jetagent import plugins
from jetagent.config import Settings
from jetagent.errors import JetagentError
from jetagent.events import Held, Started, StepResult, decode_events, decode_step_result
from jetagent.jetstream import kv_put
from jetagent.jetstream.provision import provision
from jetagent.metrics import serve_metrics, service_registry
from jetagent.models import ModelCatalog
from jetagent.reports import PROJECTION_KEY, ProjectionReport, identity, keep_reporting
from jetagent.sessions import HeldResult, SessionView, apply_workflow_message, fold_step_result
from jetagent.subjects import DeadLetterSubject
from projections.checkpoints import CheckpointError, CheckpointStore
from projections.costs import LiveGauges, MetricsCollector, MetricsState
from projections.known import known_label_sets, known_routes
from projections.labels import LabelPolicy
from projections.poison import PoisonMessage, PoisonReporter, checked_result, workflow_of
from projections.trust import Verdict, judge, judge_scheduled

__all__ = ["Checkpoint", "ProjectionService"]

log = logging.getLogger("jetagent.projections")

CHECKPOINT_KEY = "projection"
_FINAL_VIEWS_KEPT = 20_000
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


class ProjectionService:
    """One projection replica (run one; a second would only duplicate the writes)."""

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
        self.names = settings.names
        self.js = nc.jetstream()
        self.checkpoint_events = checkpoint_events
        self.checkpoint_interval_s = checkpoint_interval_s
        self.metrics = MetricsState()
        self.live = LiveGauges()
        self.positions: dict[str, int] = {}
        self.checkpointed: dict[str, int] = {}
        """The positions of the last checkpoint: what the stored session views hold."""
        self.views: OrderedDict[str, SessionView] = OrderedDict()
        self._workflows_stream = self.names.workflows_stream
        self._steps_stream = self.names.steps_stream
        self._dirty: set[str] = set()
        self._since_checkpoint = 0
        self._sessions: KeyValue | None = None
        self._checkpoints: CheckpointStore | None = None
        self._rebuilding = False
        self._rebuilt: set[str] = set()
        self._stored_until = 1 << 63  # a JA_WORKFLOWS sequence; set when processing starts
        catalog = _catalog(settings, catalog)
        self.labels = LabelPolicy(
            tenants=settings.tenant_set,
            models=frozenset(catalog.models) if catalog is not None else None,
        )
        self.poison = PoisonReporter(self.nc, self.names)
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

    def _view_now(self, workflow_id: str, *, new: bool = False) -> SessionView | None:
        """The view in memory, a new one, or None if it must be read from the bucket."""
        view = self.views.get(workflow_id)
        if view is not None:
            if not self._rebuilding:  # recency matters for eviction only when live
                self.views.move_to_end(workflow_id)
            return view
        # While rebuilding, the stored view is stale unless this rebuild wrote it; a
        # workflow that started after this service did has no stored view to read.
        if new or (self._rebuilding and workflow_id not in self._rebuilt):
            view = self.views[workflow_id] = SessionView(workflow_id=workflow_id)
            self._evict()
            return view
        return None

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

    def _evict(self) -> None:
        # Running workflows stay; finished ones are kept up to a bound, oldest out first
        # (only once flushed, so nothing unsaved is dropped).
        if len(self.views) <= _FINAL_VIEWS_KEPT:
            return
        for workflow_id in list(self.views)[: len(self.views) - _FINAL_VIEWS_KEPT]:
            view = self.views[workflow_id]
            if view.status.is_final and workflow_id not in self._dirty:
                del self.views[workflow_id]

    async def apply(self, stream: str, seq: int, subject: str, data: bytes) -> None:
        """Fold one stored message of ``stream`` into views and totals."""
        missing = self._apply_now(stream, seq, subject, data)
        if missing is not None:
            self.views[missing] = await self._load_view(missing)
            self._apply_now(stream, seq, subject, data)

    def _apply_now(self, stream: str, seq: int, subject: str, data: bytes) -> str | None:
        """Apply without waiting; or the id of a view that must be loaded first."""
        positions = self.positions
        if seq <= positions.get(stream, 0):
            return None
        try:
            if stream == self._workflows_stream:
                events = decode_events(data)
                workflow_id = workflow_of(events)
                # A workflow's first message makes a new view: its Started, unless it was
                # held first (then its Held).
                first = events[0]
                new = seq > self._stored_until and (
                    isinstance(first, Held)
                    or (isinstance(first, Started) and first.held_since is None)
                )
                view = self._view_now(workflow_id, new=new)
                if view is None:
                    return workflow_id
                if apply_workflow_message(view, events, seq):
                    self._dirty.add(workflow_id)
                    if view.held:
                        self._release_held(view)
                for event in events:
                    self.metrics.apply_workflow_event(event, self.labels)
            elif stream == self._steps_stream:
                result = checked_result(decode_step_result(data))
                view = self._view_now(result.workflow_id)
                if view is None:
                    return result.workflow_id
                self._take_result(view, seq, subject, result)
            else:
                where = self.names.parse(subject)
                source = where.source if isinstance(where, DeadLetterSubject) else subject
                self.metrics.apply_dead_letter(source, self.labels)
        except Exception as exc:
            # Whatever a stored message holds, it must not stop the projection: it is
            # skipped, counted and dead-lettered (projections/poison.py). The checks run
            # before a fold changes anything; a fold that fails half-way (a bug, not bad
            # input) leaves its view unsaved until the next change.
            reason = str(exc) if isinstance(exc, PoisonMessage) else _describe(exc)
            self.metrics.apply_poison(stream)
            self.poison.found(stream, seq, subject, reason)
        positions[stream] = seq
        self._since_checkpoint += 1
        return None

    def _take_result(self, view: SessionView, seq: int, subject: str, result: StepResult) -> None:
        """Fold a trusted result into its view and the totals; hold or skip the others."""
        seen = seq <= view.last_step_seq  # the view was saved after this result
        if seen and any(held.seq == seq for held in view.held):
            return
        verdict, reason = judge(view, subject, result, prefix=self.names.prefix)
        if not seen:
            view.last_step_seq = seq
            self._dirty.add(view.workflow_id)
        if verdict is Verdict.WAIT:
            if not seen:
                view.held.append(HeldResult(seq=seq, subject=subject, result=result))
        elif verdict is Verdict.UNTRUSTED:
            self._untrusted(seq, subject, reason)
        else:
            if not seen:
                fold_step_result(view, result)
            self.metrics.apply_step_result(result, self.labels)

    def _release_held(self, view: SessionView) -> None:
        """Judge again the results that waited for their step to be scheduled."""
        waiting = []
        for held in view.held:
            verdict, reason = judge_scheduled(view, held.result)
            if verdict is Verdict.WAIT:
                waiting.append(held)
            elif verdict is Verdict.UNTRUSTED:
                self._untrusted(held.seq, held.subject, reason)
            else:
                fold_step_result(view, held.result)
                self.metrics.apply_step_result(held.result, self.labels)
        view.held = waiting

    def _untrusted(self, seq: int, subject: str, reason: str) -> None:
        self.metrics.apply_poison(self._steps_stream)
        self.poison.found(self._steps_stream, seq, subject, reason, kind="untrusted")

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
                        missing = self._apply_now(*args)
                        if missing is not None:
                            self.views[missing] = await self._load_view(missing)
                            self._apply_now(*args)
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
        pending: dict[str, int] = {}
        ack_pending: dict[str, int] = {}
        for stream in (names.requests_stream, names.workflows_stream, names.steps_stream):
            with contextlib.suppress(NatsError, NotFoundError):
                for info in await self.js.consumers_info(stream):
                    if info.config.durable_name:
                        key = f"{stream}\x1f{info.config.durable_name}"
                        pending[key] = info.num_pending or 0
                        ack_pending[key] = info.num_ack_pending or 0
        self.live.pending, self.live.ack_pending = pending, ack_pending
        with contextlib.suppress(NatsError, NotFoundError):
            last = await self._last_sequences()
            self.live.lag = {s: max(last[s] - self.positions.get(s, 0), 0) for s in last}
            self.live.applied = {s: self.positions.get(s, 0) for s in last}
        self.live.circuits = await self._circuits()

    async def _circuits(self) -> dict[str, int]:
        circuits: dict[str, int] = {}
        bucket = self.names.bucket("REGISTRY")
        # The status keys are read from the bucket's stream (one request that lists the
        # subjects), not with ``kv.keys(filters=…)``: in nats-py 2.16 that raises
        # NoKeysError when nothing matches and logs a warning on every call.
        prefix = f"$KV.{bucket}."
        try:
            registry = await self.js.key_value(bucket)
            info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=prefix + "status.>")
        except (NatsError, NotFoundError, BucketNotFoundError):
            return circuits
        keys = [subject[len(prefix) :] for subject in info.state.subjects or {}]
        now = time.time()
        for key in keys:
            # A report that cannot be read (a foreign or old writer) is left out.
            with contextlib.suppress(
                KeyNotFoundError,
                NotFoundError,
                msgspec.DecodeError,
                KeyError,
                TypeError,
                ValueError,
            ):
                report = msgspec.json.decode((await registry.get(key)).value or b"{}")
                if now - float(report.get("at", 0)) > 60:
                    continue  # a worker that stopped reporting
                for breaker in report.get("circuits", []):
                    label = f"{breaker['provider']}\x1f{breaker['base_url']}"
                    circuits[label] = max(circuits.get(label, 0), int(breaker["state_value"]))
        return circuits

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


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _stream_seq(reply: str) -> int:
    """The stream sequence in a JetStream ack subject (``$JS.ACK.<stream>.<consumer>.
    <delivered>.<stream_seq>...``, or the domain-and-hash form with two more tokens);
    cheaper than building nats-py's full metadata for every message."""
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])
