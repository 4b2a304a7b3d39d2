"""Baselines of the ``engine`` suite, on plain nats-py: no jetagent code at all.

- :func:`raw_round_trips`: one message at a time, ``js.publish`` → a durable pull
  consumer (its pull request already waiting) → ``ack``: the floor of any hop.
- :class:`BareLoop`: the smallest possible step loop. An "orchestrator" publishes a
  schedule message, a "worker" pulls it and publishes a result, the orchestrator pulls
  the result, updates a dict and publishes the next schedule. One process, one event
  loop, two connections (as the platform's orchestrator and worker have one each), two
  file-backed streams, durable pull consumers with standing pull requests (as
  ``jetagent.jetstream.consume.Puller`` keeps them), publishes awaited for their PubAck, explicit
  acks. No event store, no aggregate, no concurrency checks, no tracking, no decoding
  beyond two JSON fields: what the platform's step costs above this is the platform's.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from ._fixtures import RawNats

__all__ = ["BareLoop", "LoopRun", "raw_round_trips"]

_EXPIRES_NS = 30 * 1_000_000_000


def _stream_config(name: str, subjects: list[str], replicas: int = 1) -> StreamConfig:
    # As the platform's streams: file storage, direct get, a 2-minute duplicate window.
    return StreamConfig(
        name=name,
        subjects=subjects,
        storage=StorageType.FILE,
        duplicate_window=120.0,
        allow_direct=True,
        num_replicas=replicas,
    )


async def raw_round_trips(
    raw: RawNats, n: int, *, warmup: int = 20, replicas: int = 1
) -> list[float]:
    """``n`` round trips (ms): publish, receive from a durable pull consumer, ack; on a
    stream of ``replicas`` replicas (more than one: a cluster)."""
    name = "BENCH_RAW_" + uuid.uuid4().hex[:10]
    subject = name.lower()
    await raw.js.add_stream(_stream_config(name, [f"{subject}.>"], replicas))
    psub = await raw.js.pull_subscribe(
        f"{subject}.>",
        durable="raw",
        stream=name,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
    )
    payload = b'{"workflow":"w-0000000000","step":1,"input":{"expression":"3 * 4"}}'
    samples = []
    clock = time.perf_counter
    try:
        for i in range(warmup + n):
            t0 = clock()
            # The pull request is issued first, as a consumer waiting for work has one.
            fetch = asyncio.ensure_future(psub.fetch(1, timeout=5))
            await asyncio.sleep(0)
            await raw.js.publish(f"{subject}.{i}", payload)
            (msg,) = await fetch
            await msg.ack()
            if i >= warmup:
                samples.append((clock() - t0) * 1000)
    finally:
        await psub.unsubscribe()
        await raw.js.delete_stream(name)
    return samples


class _Standing:
    """Standing pull requests on a durable consumer, topped up as messages are handled.

    The same technique as ``jetagent.jetstream.consume.Puller``, reduced to what a benchmark needs:
    each message is handed to ``handle`` in a task of its own.
    """

    def __init__(
        self, nc: NATS, stream: str, consumer: str, handle: Callable[[Msg], Awaitable[None]]
    ) -> None:
        self.nc = nc
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.handle = handle
        self.batch = 256
        self.unrequested = 0  # handled since the last pull request
        self.inbox = nc.new_inbox()
        self.sub: Subscription | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.inbox, cb=self._on_message)
        await self._request(self.batch)

    async def _request(self, batch: int) -> None:
        body = json.dumps({"batch": batch, "expires": _EXPIRES_NS}).encode()
        await self.nc.publish(self.next_subject, body, reply=self.inbox)

    async def _on_message(self, msg: Msg) -> None:
        if msg.headers and "Status" in msg.headers:
            if msg.headers["Status"] in ("408", "409"):  # the request expired: renew it
                pending = int(msg.headers.get("Nats-Pending-Messages", "0") or 0)
                await self._request(pending or self.batch)
            return
        task = asyncio.create_task(self._run(msg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, msg: Msg) -> None:
        await self.handle(msg)
        self.unrequested += 1
        if self.unrequested >= self.batch // 2:
            want, self.unrequested = self.unrequested, 0
            await self._request(want)

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
            self.sub = None


class _Step(msgspec.Struct):
    wf: int
    step: int


@dataclass
class LoopRun:
    """One run of the bare loop: per-step latencies (ms) and the wall time (s)."""

    latencies: list[float]
    wall: float

    @property
    def steps(self) -> int:
        return len(self.latencies)


@dataclass
class _Workflow:
    steps_left: int
    scheduled_at: float = 0.0


@dataclass
class BareLoop:
    """The bare step loop on its own two streams of the suite's server.

    Runs on ``raw``'s event loop; :meth:`open` before use, :meth:`close` after.
    """

    raw: RawNats
    url: str
    steps_per_workflow: int = 7
    _name: str = field(default_factory=lambda: "BENCH_BARE_" + uuid.uuid4().hex[:10])
    _worker_nc: NATS | None = None
    _orch_nc: NATS | None = None
    _worker_js: Any = None
    _orch_js: Any = None
    _pullers: list[_Standing] = field(default_factory=list)
    _workflows: dict[int, _Workflow] = field(default_factory=dict)
    _latencies: list[float] = field(default_factory=list)
    _all_done: asyncio.Event | None = None
    _ids: int = 0

    @property
    def _root(self) -> str:
        return self._name.lower()

    async def open(self) -> None:
        js = self.raw.js
        await js.add_stream(_stream_config(self._name + "_S", [f"{self._root}.sched.>"]))
        await js.add_stream(_stream_config(self._name + "_R", [f"{self._root}.res.>"]))
        for stream in (self._name + "_S", self._name + "_R"):
            await js.add_consumer(
                stream,
                ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0),
            )
        self._worker_nc = await nats.connect(self.url, name="bench-bare-worker")
        self._orch_nc = await nats.connect(self.url, name="bench-bare-orchestrator")
        self._worker_js = self._worker_nc.jetstream()
        self._orch_js = self._orch_nc.jetstream()
        self._pullers = [
            _Standing(self._worker_nc, self._name + "_S", "c", self._on_schedule),
            _Standing(self._orch_nc, self._name + "_R", "c", self._on_result),
        ]
        for puller in self._pullers:
            await puller.start()

    async def close(self) -> None:
        for puller in self._pullers:
            await puller.stop()
        for nc in (self._worker_nc, self._orch_nc):
            if nc is not None:
                await nc.close()
        for stream in (self._name + "_S", self._name + "_R"):
            await self.raw.js.delete_stream(stream)

    # The "worker": one pulled schedule message in, one result message out.
    async def _on_schedule(self, msg: Msg) -> None:
        assert self._worker_nc is not None
        step = msgspec.json.decode(msg.data, type=_Step)
        result = msgspec.json.encode({"wf": step.wf, "step": step.step, "output": 12})
        await self._worker_js.publish(f"{self._root}.res.{step.wf}.{step.step}", result)
        await msg.ack()

    # The "orchestrator": fold the result into a dict entry, schedule the next step.
    async def _on_result(self, msg: Msg) -> None:
        arrived = time.perf_counter()
        step = msgspec.json.decode(msg.data, type=_Step)
        wf = self._workflows[step.wf]
        self._latencies.append((arrived - wf.scheduled_at) * 1000)
        wf.steps_left -= 1
        if wf.steps_left > 0:
            await self._schedule(step.wf, step.step + 1, arrived)
        else:
            del self._workflows[step.wf]
            if not self._workflows and self._all_done is not None:
                self._all_done.set()
        await msg.ack()

    async def _schedule(self, wf: int, step: int, decided: float) -> None:
        assert self._orch_nc is not None
        self._workflows[wf].scheduled_at = decided
        body = msgspec.json.encode(
            {"wf": wf, "step": step, "input": {"expression": "3 * 4"}, "capability": "tools"}
        )
        await self._orch_js.publish(f"{self._root}.sched.{wf}.{step}", body)

    async def run(
        self,
        workflows: int,
        *,
        concurrent: bool,
        timeout: float = 60.0,
        window: int | None = None,
    ) -> LoopRun:
        """Run ``workflows`` workflows, all at once or one after another (each batch
        within ``timeout`` s); ``window``: at most this many first schedules in flight
        at once (as the platform's submits are windowed)."""
        self._latencies = []
        gate = asyncio.Semaphore(window or max(workflows, 1))

        async def first(wf: int) -> None:
            async with gate:
                await self._schedule(wf, 1, time.perf_counter())

        started = time.perf_counter()
        batches = [workflows] if concurrent else [1] * workflows
        for size in batches:
            self._all_done = asyncio.Event()
            ids = range(self._ids, self._ids + size)
            self._ids += size
            for wf in ids:
                self._workflows[wf] = _Workflow(self.steps_per_workflow)
            await asyncio.gather(*(first(wf) for wf in ids))
            await asyncio.wait_for(self._all_done.wait(), timeout)
        return LoopRun(self._latencies, time.perf_counter() - started)
