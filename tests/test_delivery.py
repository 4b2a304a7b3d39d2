"""Delivery under real timing: slow steps run once, a dead worker's step runs again with
every call recorded, a restarted nats-server is caught up with at once, and a step whose
deliveries ran out while no worker was connected still ends its workflow."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.embedded import EmbeddedServer
from jetagent.events import StepScheduled
from jetagent.jetstream import DirectGetter
from jetagent.jetstream.provision import (
    consumer_config,
    ensure_consumer,
    provision,
    repair_capability_consumers,
)
from jetagent.models import ModelCatalog
from jetagent.testing import eventually, tools_registered
from jetagent.worker._runtime import Worker
from projections.service import ProjectionService
from tests.fakes.llm_servers import FakeOpenAI, model_for, openai_completion
from tests.support.checks import assert_no_decision_recorded_twice, assert_one_result_per_step
from tests.support.platform import (
    InProcessPlatform,
    service_processes,
    specs_for_tests,
)

KEY_ENV = "JA_TEST_DELIVERY_KEY"


def _runs(log: Path) -> list[tuple[int, int]]:
    """(pid, delivery) of each run the ``logged_sleep`` tool noted."""
    if not log.exists():
        return []
    return [(int(p), int(d)) for p, d in (line.split() for line in log.read_text().splitlines())]


async def test_the_consumer_uses_the_configured_ack_wait(settings: Settings) -> None:
    config = settings.model_copy(update={"step_ack_wait_s": 30.0})
    from jetagent.jetstream import connect

    nc = await connect(config.nats_url, name="test")
    try:
        await provision(nc, config, consumers=False)
        # A consumer as an earlier release provisioned it: with a backoff, which the
        # server uses instead of the ack wait.
        old = consumer_config(config, "capability", capability="tools")
        old["filter_subjects"] = config.names.step_scheduled("tools")
        old["backoff"] = [1_000_000_000, 2_000_000_000, 5_000_000_000, 10_000_000_000]
        await ensure_consumer(nc, old)
        before = await nc.jetstream().consumer_info(config.names.workflows_stream, "cap-tools")
        assert before.config.ack_wait == 1.0  # the trap: backoff[0] replaced 30 s

        # `jetagent provision` repairs it; a worker at start does too; both idempotent.
        assert await repair_capability_consumers(nc, config)
        assert not await repair_capability_consumers(nc, config)
        info = await nc.jetstream().consumer_info(config.names.workflows_stream, "cap-tools")
        assert (info.config.ack_wait, info.config.backoff) == (30.0, None)
        await ensure_consumer(nc, old)
        worker = Worker(nc, config, specs_for_tests(ModelCatalog.load()))
        await worker.setup()
        await worker.setup()
        info = await nc.jetstream().consumer_info(config.names.workflows_stream, "cap-tools")
        assert info.config.ack_wait == 30.0
        assert not info.config.backoff
        assert info.config.max_deliver == -1
    finally:
        await nc.close()


@pytest.fixture
def openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv(KEY_ENV, "sk-delivery-test-key")
    with FakeOpenAI() as server:
        yield server


@pytest.mark.timeout(120)
async def test_slow_steps_run_once_on_two_replicas(
    settings: Settings, openai: FakeOpenAI, tmp_path: Path
) -> None:
    config = settings.model_copy(update={"step_ack_wait_s": 30.0})
    model = model_for(openai, "gpt-slow", api_key_env=KEY_ENV, typical_latency_s=60.0)
    base = ModelCatalog.load()
    catalog = ModelCatalog(models={**base.models, model.name: model}, source="test")
    log = tmp_path / "runs.log"
    args = json.dumps({"seconds": 5, "log": str(log)})
    # Each model call takes 3 s; the tool takes 5 s: all far longer than one second.
    openai.script(
        openai_completion(None, tool_calls=[("c1", "logged_sleep", args)], delay_s=3.0),
        openai_completion("Done after one nap.", delay_s=3.0),
    )
    platform = await InProcessPlatform(config, workers=2, catalog=catalog).start()
    try:
        client = platform.client
        wid = await client.submit(
            instruction="Take a nap, then say so.",
            tenant="acme",
            model_preferences={"models": ["gpt-slow"]},
            allowed_tools=["logged_sleep"],
        )
        result = await client.result(wid, timeout=90)
        assert result.output == "Done after one nap.", result
        assert len(openai.requests) == 2  # one request per model call
        assert len(_runs(log)) == 1  # the tool ran once
        assert await assert_one_result_per_step(client, config, [wid]) == 3
        await assert_no_decision_recorded_twice(client, config, wid)
    finally:
        await platform.stop()


@pytest.mark.timeout(120)
async def test_sigkill_mid_tool_runs_it_again_and_records_both_runs(
    settings: Settings, tmp_path: Path
) -> None:
    procs = service_processes(
        settings.nats_url,
        settings.prefix,
        tmp_path,
        env={"JETAGENT_STEP_ACK_WAIT_S": "2", "JETAGENT_SHUTDOWN_GRACE_S": "1"},
    )
    procs.start("orchestrator", "orchestrator")
    procs.start("reasoning", "worker", "reasoning")
    procs.start("tools-a", "worker", "tools")
    procs.start("tools-b", "worker", "tools")
    client = await Client.connect(settings.nats_url, settings=settings)
    log = tmp_path / "runs.log"
    try:
        await eventually(lambda: tools_registered(client.js, settings, "logged_sleep"), timeout=30)
        args = json.dumps({"seconds": 5, "log": str(log), "tokens": 7})
        wid = await client.submit(
            instruction=f"call logged_sleep {args}", tenant="acme", allowed_tools=["logged_sleep"]
        )

        async def one_run() -> list[tuple[int, int]]:
            return _runs(log)

        [(pid, _)] = await eventually(one_run, timeout=30)
        holder = next(n for n, p in procs.processes.items() if p.pid == pid)
        procs.kill(holder)  # the replica running the tool dies mid-sleep
        result = await client.result(wid, timeout=60)
        assert result.ok, procs.log("orchestrator")
        # It ran once more, on the other replica (a live worker is never redelivered).
        runs = _runs(log)
        assert len(runs) == 2, runs
        assert runs[1][0] != pid
        assert await assert_one_result_per_step(client, settings, [wid]) == 3
        await assert_no_decision_recorded_twice(client, settings, wid)
        # Both runs' provider calls are recorded against the step.
        [tool_step] = [r for r in await client.step_results(wid) if r.tool == "logged_sleep"]
        sleep_calls = [c for c in tool_step.calls if c.model == "sleep-model"]
        assert len(sleep_calls) == 2, tool_step.calls
        assert tool_step.spend().tokens == 14
        assert tool_step.interrupted_runs == 1
        # The cost metrics count both, and the repeated run.
        projections = ProjectionService(client.nc, settings)
        await projections.rebuild()
        tokens = projections.metrics.tokens
        assert sum(v for k, v in tokens.items() if "sleep-model" in k) == 14
        assert projections.metrics.repeated_runs.get("tools") == 1
    finally:
        await client.close()
        procs.stop_all()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("connected", [0, 2], ids=["no-worker-connected", "two-connected"])
async def test_deliveries_exhausted_give_one_dead_letter_and_one_result(
    settings: Settings, tmp_path: Path, connected: int
) -> None:
    procs = service_processes(
        settings.nats_url,
        settings.prefix,
        tmp_path,
        env={
            "JETAGENT_STEP_ACK_WAIT_S": "1",
            "JETAGENT_STEP_MAX_DELIVER": "2",
            "JETAGENT_MAX_STEP_ATTEMPTS": "1",
            "JETAGENT_SHUTDOWN_GRACE_S": "1",
        },
    )
    procs.start("orchestrator", "orchestrator")
    procs.start("reasoning", "worker", "reasoning")
    # Replicas that will die holding the step, and (in one variant) two that stay.
    for n in range(2 + connected if connected else 1):
        procs.start(f"tools-{n}", "worker", "tools")
    client = await Client.connect(settings.nats_url, settings=settings)
    log = tmp_path / "runs.log"
    try:
        await eventually(lambda: tools_registered(client.js, settings, "logged_sleep"), timeout=30)
        if connected:
            pulling = 2 + connected
            await eventually(lambda: _consumers_waiting(client, settings, pulling), timeout=60)
        args = json.dumps({"seconds": 25, "log": str(log)})
        wid = await client.submit(
            instruction=f"call logged_sleep {args}", tenant="acme", allowed_tools=["logged_sleep"]
        )
        # Each run's worker dies mid-step, the last run's too.
        for run in (1, 2):

            async def ran(count: int = run) -> list[tuple[int, int]]:
                runs = _runs(log)
                return runs if len(runs) >= count else []

            pid = (await eventually(ran, timeout=30))[run - 1][0]
            holder = next(n for n, p in procs.processes.items() if p.pid == pid)
            procs.kill(holder)
            if not connected and run == 1:
                procs.start("tools-again", "worker", "tools")
        if not connected:
            # The last run's ack wait passes several times over with nobody there.
            await asyncio.sleep(4)
            procs.start("tools-back", "worker", "tools")  # a worker is back
        result = await client.result(wid, timeout=60)
        assert result.status.value == "terminated", result
        assert result.reason == "step_failed"
        assert len(_runs(log)) == 2  # the handler did not run a third time
        [tool_step] = [r for r in await client.step_results(wid) if r.tool == "logged_sleep"]
        assert not tool_step.ok
        assert tool_step.error is not None
        assert tool_step.error.type == "MaxDeliveriesExceeded"
        assert tool_step.interrupted_runs == 2
        assert await assert_one_result_per_step(client, settings, [wid]) == 2
        await assert_no_decision_recorded_twice(client, settings, wid)
        names = settings.names

        async def letters() -> list[dict[str, object]]:
            reader = DirectGetter(client.nc, names.dlq_stream, timeout=5)
            await reader.open()
            try:
                return [json.loads(r.data) for r in await reader.scan(names.dlq("tools"))]
            finally:
                await reader.close()

        await eventually(letters, timeout=10)
        await asyncio.sleep(2)  # time for a second (duplicate) letter to arrive
        assert len(await letters()) == 1
    finally:
        await client.close()
        procs.stop_all()


async def _consumers_waiting(client: Client, settings: Settings, count: int) -> bool:
    info = await client.js.consumer_info(settings.names.workflows_stream, "cap-tools")
    return info.num_waiting >= count


class _ListenWatch:
    """Notes the wall-clock moment a TCP port starts accepting connections."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    self.at = time.time()
                    return
            except OSError:
                time.sleep(0.005)

    def close(self) -> None:
        # The server is listening by now: let the watch see it before stopping it (on a
        # loaded box the thread may not have looked since the server came up).
        self._thread.join(timeout=5)
        self._stop.set()
        self._thread.join(timeout=2)


@pytest.mark.timeout(240)
async def test_a_restarted_server_is_caught_up_with_at_once(
    fresh_server: EmbeddedServer, unique: str
) -> None:
    settings = Settings(
        nats_url=fresh_server.url,
        prefix=unique.lower()[:12],
        tenants="*",
        step_ack_wait_s=5.0,
        shutdown_grace_s=5.0,
        # "Under load" below is a backlog not yet delivered: workers take no window of
        # waiting steps (which would hold the 40 workflows' steps as ack-pending), and
        # run few at once, so a backlog forms even when submitting is slow (a loaded box).
        worker_lookahead=0,
        worker_concurrency=4,
    )
    platform = await InProcessPlatform(settings, workers=2).start()
    try:
        client = platform.client
        args = json.dumps({"seconds": 0.4})
        ids = [
            await client.submit(
                instruction=f"call slow {args} then call slow {args}",
                tenant="acme",
                allowed_tools=["slow"],
            )
            for _ in range(40)
        ]

        async def under_load() -> bool:
            info = await client.js.consumer_info(settings.names.workflows_stream, "cap-tools")
            return info.num_ack_pending > 0 and info.num_pending > 0

        await eventually(under_load, timeout=30)
        fresh_server.kill()  # SIGKILL under load
        assert fresh_server.port is not None
        watch = _ListenWatch(fresh_server.port)
        await asyncio.to_thread(fresh_server.start)  # same store folder, same port
        watch.close()
        assert watch.at is not None
        for wid in ids:
            result = await client.result(wid, timeout=120)
            assert result.ok, result
        assert await assert_one_result_per_step(client, settings, ids) >= 40 * 3
        for wid in ids:
            await assert_no_decision_recorded_twice(client, settings, wid)
        first = await _first_result_after(client, ids, watch.at)
        recovery = first - watch.at
        print(f"first step scheduled and run after the restart: {recovery:.2f} s")
        assert recovery < 3.0
    finally:
        await platform.stop()


async def _first_result_after(client: Client, ids: list[str], at: float) -> float:
    """When the first step *scheduled* after ``at`` (wall clock) finished: the whole loop
    (orchestrator decides, worker runs, orchestrator folds) ran on the restarted server."""
    first: float | None = None
    for wid in ids:
        scheduled = {
            e.step_id
            for e in await client.events(wid)
            if isinstance(e, StepScheduled) and e.at.timestamp() > at
        }
        for result in await client.step_results(wid):
            if result.step_id in scheduled:
                done = result.finished_at.timestamp()
                first = done if first is None else min(first, done)
    assert first is not None, "no step was scheduled after the restart"
    return first


@pytest.mark.timeout(180)
@pytest.mark.parametrize("outage_s", [0.0, 4.0], ids=["quick-restart", "outage-past-ack-wait"])
async def test_a_long_step_is_not_run_twice_across_a_server_restart(
    fresh_server: EmbeddedServer, unique: str, tmp_path: Path, outage_s: float
) -> None:
    """A step running longer than the ack wait, alive all along, while the server
    restarts: its worker lives, so no other replica (nor its own) may run it again."""
    settings = Settings(
        nats_url=fresh_server.url,
        prefix=unique.lower()[:12],
        tenants="*",
        step_ack_wait_s=3.0,
        shutdown_grace_s=2.0,
    )
    platform = await InProcessPlatform(settings, workers=2).start()
    log = tmp_path / "runs.log"
    try:
        client = platform.client
        await eventually(lambda: tools_registered(client.js, settings, "logged_sleep"), timeout=30)
        args = json.dumps({"seconds": 12, "log": str(log)})
        wid = await client.submit(
            instruction=f"call logged_sleep {args}", tenant="acme", allowed_tools=["logged_sleep"]
        )
        await eventually(lambda: asyncio.sleep(0, _runs(log)), timeout=30)
        started = time.monotonic()
        # Past the ack wait: only the in-progress acks keep the step with its worker.
        await eventually(lambda: asyncio.sleep(0, time.monotonic() - started > 4.0), timeout=10)
        fresh_server.kill()
        if outage_s:
            await asyncio.sleep(outage_s)  # the outage itself is what is under test
        await asyncio.to_thread(fresh_server.start)  # same store folder, same port
        result = await client.result(wid, timeout=120)
        assert result.ok, result
        assert len(_runs(log)) == 1, _runs(log)
        assert await assert_one_result_per_step(client, settings, [wid]) == 3
    finally:
        await platform.stop()
