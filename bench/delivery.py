"""Suite ``delivery``: slow steps run once, and a restarted nats-server is caught up with.

The platform as deployed (``jetagent orchestrator``, two ``worker reasoning`` and two
``worker tools`` replicas, as processes, default ack wait of 30 s) on a nats-server of
the suite's own. Each workflow is a model call (1-3 s, from a local OpenAI-format server
that counts requests), a 2 s tool that notes each run in a file, and a second model
call. Measured: provider requests per model step scheduled, tool runs per tool step
scheduled (1.00 means nothing ran twice), and the time from the nats-server listening
again after a SIGKILL under load to the first step *scheduled after* the restart
starting on a worker: the whole loop (a result folded by the orchestrator, the next step
decided, recorded and delivered) works again. The step's own 1-3 s is not counted.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.embedded import EmbeddedServer
from jetagent.events import StepScheduled
from jetagent.testing import eventually, nats_server, tools_registered

from ._delivery_fixtures import SlowLLM, delivery_platform
from ._harness import Benchmark, Contenders, Env, Suite, Target

__all__ = ["SUITE"]

SUBJECT = "jetagent, 2 reasoning + 2 tools replicas"
WORKFLOWS = 12
RECOVERY_TARGET_S = 2.0


@dataclass
class _Counts:
    provider_calls: int
    model_steps: int
    tool_runs: int
    tool_steps: int
    recovery_s: float | None = None


async def _wait_ready(client: Client, settings: Settings) -> None:
    await eventually(
        lambda: tools_registered(client.js, settings, "nap"),
        timeout=60,
        interval=0.2,
        what="the tools workers announcing the nap tool",
    )


def _listening(port: int, found: list[float], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                found.append(time.time())
                return
        except OSError:
            time.sleep(0.005)


async def _round(
    server: EmbeddedServer, llm: SlowLLM, tmp: Path, *, workflows: int, restart: bool
) -> _Counts:
    prefix = "d" + uuid.uuid4().hex[:8]
    settings = Settings(nats_url=server.url, prefix=prefix, tenants="*")
    llm.nap_log = tmp / f"{prefix}-naps.log"
    requests_before = llm.requests
    with delivery_platform(server.url, prefix, tmp, llm):
        client = await Client.connect(server.url, settings=settings)
        try:
            await _wait_ready(client, settings)
            ids = [
                await client.submit(
                    instruction="Rest a little, then say so.",
                    tenant="bench",
                    model_preferences={"models": ["slow-bench"]},
                    allowed_tools=["nap"],
                )
                for _ in range(workflows)
            ]
            listened: float | None = None
            if restart:
                await asyncio.sleep(2.5)  # mid-way: model calls and naps running
                server.kill()
                assert server.port is not None
                found: list[float] = []
                stop = threading.Event()
                watch = threading.Thread(target=_listening, args=(server.port, found, stop))
                watch.start()
                await asyncio.to_thread(server.start)
                stop.set()
                watch.join()
                listened = found[0] if found else time.time()
            for wid in ids:
                await client.result(wid, timeout=180)
            model_steps = tool_steps = 0
            first: float | None = None
            for wid in ids:
                scheduled = [e for e in await client.events(wid) if isinstance(e, StepScheduled)]
                model_steps += sum(e.capability == "reasoning" for e in scheduled)
                tool_steps += sum(e.tool == "nap" for e in scheduled)
                if listened is not None:
                    after = {e.step_id for e in scheduled if e.at.timestamp() > listened}
                    for result in await client.step_results(wid):
                        if result.step_id in after:
                            began = result.started_at.timestamp()
                            first = began if first is None else min(first, began)
            runs = len(llm.nap_log.read_text().splitlines()) if llm.nap_log.exists() else 0
            recovery = None if listened is None or first is None else first - listened
            return _Counts(
                provider_calls=llm.requests - requests_before,
                model_steps=model_steps,
                tool_runs=runs,
                tool_steps=tool_steps,
                recovery_s=recovery,
            )
        finally:
            await client.close()


@dataclass
class _Bench:
    server: EmbeddedServer
    llm: SlowLLM
    tmp: Path
    workflows: int
    last: _Counts | None = None

    def run(self, *, restart: bool) -> _Counts:
        self.last = asyncio.run(
            _round(self.server, self.llm, self.tmp, workflows=self.workflows, restart=restart)
        )
        return self.last


@contextmanager
def _bench(env: Env) -> Iterator[_Bench]:
    with nats_server(env.tmp / "delivery-nats") as server:
        llm = SlowLLM(env.tmp / "naps.log")
        try:
            yield _Bench(server, llm, env.tmp, workflows=env.size(WORKFLOWS, 4))
        finally:
            llm.close()


def _shared(env: Env) -> _Bench:
    return env.shared("delivery", lambda: _bench(env))


@contextmanager
def _calls_contenders(env: Env) -> Iterator[Contenders]:
    bench = _shared(env)

    def calls_round() -> float:
        counts = bench.run(restart=False)
        return counts.provider_calls / max(counts.model_steps, 1)

    yield {SUBJECT: calls_round}


@contextmanager
def _runs_contenders(env: Env) -> Iterator[Contenders]:
    bench = _shared(env)

    def runs_round() -> float:
        counts = bench.run(restart=False)
        return counts.tool_runs / max(counts.tool_steps, 1)

    yield {SUBJECT: runs_round}


@contextmanager
def _recovery_contenders(env: Env) -> Iterator[Contenders]:
    bench = _shared(env)

    def recovery_round() -> float:
        counts = bench.run(restart=True)
        if counts.recovery_s is None:
            raise RuntimeError("no step was scheduled after the restart")
        return counts.recovery_s

    yield {SUBJECT: recovery_round}


def _benchmarks(env: Env) -> list[Benchmark]:
    return [
        Benchmark(
            name="provider calls per logical model call (1-3 s calls)",
            unit="calls",
            better="lower",
            subject=SUBJECT,
            baselines=(),
            contenders=_calls_contenders,
            target=Target("<=", value=1.0),
            rounds=2,
            quick_rounds=1,
            profile_miss=False,
            note="HTTP requests the server counted / reasoning steps scheduled",
        ),
        Benchmark(
            name="tool runs per tool call (2 s tool)",
            unit="runs",
            better="lower",
            subject=SUBJECT,
            baselines=(),
            contenders=_runs_contenders,
            target=Target("<=", value=1.0),
            rounds=2,
            quick_rounds=1,
            profile_miss=False,
            note="runs the tool noted / tool steps scheduled",
        ),
        Benchmark(
            name="recovery after a nats-server SIGKILL + restart under load",
            unit="s",
            better="lower",
            subject=SUBJECT,
            baselines=(),
            contenders=_recovery_contenders,
            target=Target("<=", value=RECOVERY_TARGET_S),
            rounds=3,
            quick_rounds=1,
            profile_miss=False,
            note="server listening again → first step scheduled after it started on a worker",
        ),
    ]


SUITE = Suite(
    name="delivery",
    title="delivery: slow steps run once; recovery after a nats-server restart",
    description=(
        "The platform as deployed (orchestrator, 2 reasoning and 2 tools workers as "
        "processes, default 30 s ack wait) on a nats-server of the suite's own; each "
        f"workflow of a round ({WORKFLOWS} at once) is a 1-3 s model call from a local "
        "OpenAI-format server that counts requests, a 2 s tool that notes each run, and a "
        "second 1-3 s model call. Ratios are per step scheduled (1.00: nothing ran twice). "
        "Recovery: the server is SIGKILLed 2.5 s into a round and restarted on its store "
        "folder and port; measured from it listening again to the first step scheduled "
        "after that starting on a worker (the loop runs again; the step's own 1-3 s is "
        "not counted)."
    ),
    benchmarks=_benchmarks,
)
