"""The stall after a SIGKILL of a stream leader: the platform's, and the server's own.

One :meth:`Failover.kill` measures both at the same kill. The node killed is the one
leading the platform's workflows stream. Before the kill, the leader of a bare R3 stream
(``BENCH_FAILOVER``) is moved to that node, and a bare nats-py client connected to the
two other nodes publishes to it one message at a time (a short timeout per try, every
failure retried with the same ``Nats-Msg-Id``). Meanwhile the platform runs a closed
loop: a fixed number of workflows in flight, a new one submitted whenever one ends.

- **server failover**: the kill → the bare client's next acknowledged publish;
- **platform stall**: the kill → the next ``StepCompleted`` the server stored (its
  ``Nats-Time-Stamp``), read from the workflows stream afterwards, so only what was stored
  counts (a core subscriber also sees publishes the stream never stored).

The load is kept up until a few steps were acknowledged after the kill and 3 s more,
then the round's workflows are drained; the killed node is started again, and the round
ends when every replica of every stream and consumer is current. Each round also records
what the node led, the leaders elected after the kill (their advisories), the longest
gap between stored completed steps while the load was fed, the workflows that did not
end within the drain time, and any service process that exited (it is started again, as
a supervisor would).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import StorageType, StreamConfig

from jetagent.contract import WorkflowRequest
from jetagent.embedded import EmbeddedCluster, EmbeddedServer
from jetagent.errors import JetagentError
from jetagent.events import StepCompleted, decode_events
from jetagent.jetstream import DirectGetter
from jetagent.testing import eventually

from ._cluster import Led, groups_led, move_stream_leader, stream_leader, wait_replicas_current
from ._engine_platform import EnginePlatform, server_time

__all__ = ["PROBE_STREAM", "Failover", "KillRound"]

PROBE_STREAM = "BENCH_FAILOVER"
_PROBE_TRY_S = 0.25
"""The bare client's timeout per publish: a publish in flight at the kill is lost with
the node and waits this long (docs/ARCHITECTURE.md), so it bounds the probe's error."""
_SUSTAIN_S = 3.0
"""How long the load is kept up after the first steps stored after the kill."""
_FINAL = frozenset({"Finalized", "Terminated", "Cancelled", "RequestRejected"})


@dataclass(frozen=True)
class KillRound:
    """What one SIGKILL of the workflows stream's leader did."""

    node: str
    led: Led
    killed_at: float
    """Wall-clock time of the kill (to read the services' logs against)."""
    server_failover_s: float | None
    """Kill → the bare client's next acknowledged publish (``None``: none within the wait)."""
    platform_stall_s: float | None
    """Kill → the next ``StepCompleted`` stored (``None``: none within the wait)."""
    longest_gap_s: float
    """The longest gap between consecutive stored ``StepCompleted`` from the kill on,
    while workflows were being fed (the first one is the stall)."""
    workflows: int
    """Workflows submitted in the round (all acknowledged by the server)."""
    unfinished: int
    """Of those, how many had no stored final event when the drain time ran out."""
    exited: tuple[str, ...]
    """Service processes that exited during the round (each was started again)."""
    current_after_s: float
    """The node started again → every replica of every stream and consumer current."""
    elections: dict[str, float]
    """Stream and consumer leaders elected after the kill (their advisories): seconds
    after the kill, by group (``STEPS``, ``WORKFLOWS/cap-reasoning``, ...)."""


class _Load:
    """A closed loop of workflows: ``in_flight`` at a time until told to stop."""

    def __init__(self, platform: EnginePlatform, in_flight: int) -> None:
        self.platform = platform
        self.submitted: list[str] = []
        """Requests the server acknowledged."""
        self.completed_steps = 0
        """``StepCompleted`` seen by a core subscriber (published, perhaps not stored)."""
        self.stopping = False
        self._open: set[str] = set()
        self._slots = asyncio.Semaphore(in_flight)

    @property
    def open(self) -> int:
        """Workflows submitted whose final event has not been seen."""
        return len(self._open)

    async def on_event(self, msg: Msg) -> None:
        try:
            events = decode_events(msg.data)
        except Exception:
            return  # not an event: nothing to count
        for event in events:
            if isinstance(event, StepCompleted):
                self.completed_steps += 1
            elif type(event).__name__ in _FINAL and event.workflow_id in self._open:
                self._open.discard(event.workflow_id)
                self._slots.release()

    async def feed(self) -> None:
        """Submit workflows while slots are free, until :attr:`stopping`."""
        while not self.stopping:
            await self._slots.acquire()
            request = WorkflowRequest(
                instruction=self.platform.workload.instruction, tenant="bench"
            )
            self._open.add(request.request_id)
            if await self._submit(request):
                self.submitted.append(request.request_id)
            else:
                self._open.discard(request.request_id)

    async def _submit(self, request: WorkflowRequest) -> bool:
        """Publish until the server acknowledges it (the same request id: one workflow);
        ``False`` if told to stop first."""
        client = self.platform.client
        assert client is not None
        while not self.stopping:
            try:
                await client.submit(request)
                return True
            except (JetagentError, NatsError, TimeoutError):
                await asyncio.sleep(0.1)  # an election: the requests stream has no leader
        return False

    async def wait_steps(self, n: int, timeout: float) -> None:
        """Until ``n`` steps completed (the load runs), or :class:`WaitTimeout`."""

        async def enough() -> bool:
            return self.completed_steps >= n

        services = self.platform.services
        await eventually(enough, timeout=timeout, alive=services.check_alive, what=f"{n} steps")


class _Probe:
    """The bare nats-py client: one publish at a time to :data:`PROBE_STREAM`."""

    def __init__(self, nc: NATS) -> None:
        self.js = nc.jetstream()
        self.acks: list[float] = []
        """Wall-clock times of acknowledged publishes."""
        self.stopping = False

    async def run(self) -> None:
        n = 0
        while not self.stopping:
            msg_id = f"{uuid.uuid4().hex}-{n}"
            while not self.stopping:
                try:
                    await self.js.publish(
                        f"{PROBE_STREAM.lower()}.probe",
                        b"probe",
                        timeout=_PROBE_TRY_S,
                        headers={"Nats-Msg-Id": msg_id},
                    )
                    self.acks.append(time.time())
                    break
                except (NatsError, TimeoutError):
                    await asyncio.sleep(0.01)
            n += 1
            await asyncio.sleep(0.01)

    def first_after(self, moment: float) -> float | None:
        return next((t for t in self.acks if t > moment), None)


class Failover:
    """Kills of the workflows stream's leader under a closed-loop load (see the module)."""

    def __init__(
        self,
        cluster: EmbeddedCluster,
        platform: EnginePlatform,
        *,
        in_flight: int = 20,
        wait_s: float = 60.0,
        drain_s: float = 90.0,
    ) -> None:
        self.cluster = cluster
        self.platform = platform
        self.in_flight = in_flight
        self.wait_s = wait_s
        """How long after the kill a step (and an acknowledged probe publish) is waited for."""
        self.drain_s = drain_s
        """How long the round's workflows are given to end after the stall."""
        self.rounds: list[KillRound] = []
        self._probe_stream = False

    def kill(self) -> KillRound:
        """One round (see the module); its record is kept in :attr:`rounds`."""
        result = self.platform.run(self._kill())
        self.rounds.append(result)
        return result

    @property
    def _nc(self) -> NATS:
        assert self.platform.client is not None
        return self.platform.client.nc

    async def _ensure_probe_stream(self) -> None:
        if not self._probe_stream:
            js = self._nc.jetstream()
            config = StreamConfig(
                name=PROBE_STREAM,
                subjects=[f"{PROBE_STREAM.lower()}.>"],
                storage=StorageType.FILE,
                num_replicas=3,
                duplicate_window=120.0,
                max_msgs=100_000,
            )
            await js.add_stream(config)
            self._probe_stream = True
        await wait_replicas_current(self._nc)

    def _server(self, name: str) -> EmbeddedServer:
        return next(s for s in self.cluster.servers if s.server_name == name)

    async def _kill(self) -> KillRound:
        names = self.platform.names
        await self._ensure_probe_stream()
        node = await stream_leader(self._nc, names.workflows_stream)
        target = self._server(node)
        await move_stream_leader(self._nc, PROBE_STREAM, node)
        led = await asyncio.to_thread(groups_led, target)
        survivors = [s.url for s in self.cluster.servers if s is not target]
        probe_nc = await nats.connect(servers=survivors, name="bench-failover-probe")
        probe = _Probe(probe_nc)
        elected: dict[str, list[float]] = {}

        async def on_elected(msg: Msg) -> None:
            # $JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.<stream>, or
            # $JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.<stream>.<consumer>
            group = "/".join(msg.subject.split(".")[5:])
            elected.setdefault(group, []).append(time.time())

        await probe_nc.subscribe("$JS.EVENT.ADVISORY.*.LEADER_ELECTED.>", cb=on_elected)
        # The orchestrator acks a step result once its decision is stored: a step done.
        # (A core subscriber to the workflows' subjects also sees attempts never stored.)
        acked: list[float] = []

        async def on_ack(msg: Msg) -> None:
            acked.append(time.time())

        await probe_nc.subscribe(f"$JS.ACK.{names.steps_stream}.orchestrator-steps.>", cb=on_ack)
        load = _Load(self.platform, self.in_flight)
        sub = await self._nc.subscribe(names.all_workflows, cb=load.on_event)
        start_seq = (await self._nc.jetstream().stream_info(names.workflows_stream)).state.last_seq
        tasks = [asyncio.create_task(probe.run()), asyncio.create_task(load.feed())]
        exited: list[str] = []
        try:
            # Steady work first, then the kill.
            await load.wait_steps(self.in_flight * 3, timeout=30)
            await asyncio.to_thread(target.kill)
            killed_at = time.time()
            await self._until(lambda: probe.first_after(killed_at) is not None, exited)
            await self._until(lambda: sum(t > killed_at for t in acked) >= 3, exited)
            await asyncio.sleep(_SUSTAIN_S)
            load.stopping = True
            probe.stopping = True
            fed_until = time.time()
            await self._drain(load, exited)
        finally:
            load.stopping = probe.stopping = True
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await sub.unsubscribe()
            await probe_nc.close()
        stored = await self._stored(start_seq, set(load.submitted))
        completed, finals = stored
        after = sorted(t for t in completed if t > killed_at)
        failover = probe.first_after(killed_at)
        # Gaps while the load was fed (work was always waiting), and up to the first
        # step after that if the stall outlasted it; the drain's tail is not a stall.
        fed = [t for t in after if t <= fed_until]
        later = [t for t in after if t > fed_until][:1]
        times = [killed_at, *fed, *later]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        current_after = await self._restart(target, exited)
        return KillRound(
            node=node,
            led=led,
            killed_at=killed_at,
            server_failover_s=None if failover is None else failover - killed_at,
            platform_stall_s=after[0] - killed_at if after else None,
            longest_gap_s=max(gaps, default=self.wait_s),
            workflows=len(load.submitted),
            unfinished=len(set(load.submitted) - finals),
            exited=tuple(exited),
            current_after_s=current_after,
            elections=_elections(elected, killed_at, self.platform.settings.prefix),
        )

    def _revive(self, exited: list[str]) -> None:
        """Start again any service process that exited (as a supervisor would)."""
        for name, process in self.platform.services.processes.items():
            if process.poll() is not None:
                exited.append(f"{name} (exit {process.returncode}: {_last_line(process.tail())})")
                process.start()

    async def _until(self, check: Callable[[], bool], exited: list[str]) -> None:
        deadline = time.monotonic() + self.wait_s
        while not check() and time.monotonic() < deadline:
            self._revive(exited)
            await asyncio.sleep(0.05)

    async def _drain(self, load: _Load, exited: list[str]) -> None:
        deadline = time.monotonic() + self.drain_s
        while load.open and time.monotonic() < deadline:
            self._revive(exited)
            await asyncio.sleep(0.2)

    async def _stored(self, start_seq: int, submitted: set[str]) -> tuple[list[float], set[str]]:
        """Stored times of every ``StepCompleted`` from ``start_seq`` on, and the
        submitted workflows with a stored final event (read until a replica that is
        behind no longer hides the newest ones)."""
        reader = DirectGetter(self._nc, self.platform.names.workflows_stream, timeout=10)
        completed: list[float] = []
        finals: set[str] = set()
        try:
            for _ in range(20):
                completed, finals = [], set()
                records = await reader.scan(
                    self.platform.names.all_workflows, start_seq=start_seq + 1
                )
                for record in records:
                    events = decode_events(record.data)
                    at = server_time(record).timestamp()
                    for event in events:
                        if isinstance(event, StepCompleted):
                            completed.append(at)
                        elif type(event).__name__ in _FINAL and event.workflow_id in submitted:
                            finals.add(event.workflow_id)
                if finals >= submitted:
                    break
                await asyncio.sleep(0.1)
        finally:
            await reader.close()
        return completed, finals

    async def _restart(self, target: EmbeddedServer, exited: list[str]) -> float:
        started = time.monotonic()
        await asyncio.to_thread(target.start)
        await asyncio.to_thread(self.cluster.wait_healthy)
        await wait_replicas_current(self._nc, timeout=120)
        self._revive(exited)
        return time.monotonic() - started


def _elections(elected: dict[str, list[float]], killed_at: float, prefix: str) -> dict[str, float]:
    """Each group's first leader election after the kill, in seconds after it."""
    out = {}
    for group, times in elected.items():
        later = [t for t in times if t > killed_at]
        if later:
            out[_short(group, prefix)] = min(later) - killed_at
    return out


def _short(group: str, prefix: str) -> str:
    """A group's name without the deployment's prefix: ``STEPS/orchestrator-steps``."""
    return group.replace(f"{prefix.upper()}_", "")


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"
