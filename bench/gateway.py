"""Suite ``gateway``: ``jetagent gateway`` against submitting straight to NATS, and how
soon a streamed answer shows against when its step ends.

The gateway runs as its own process (``jetagent gateway``, as deployed); the bench
process is the client: httpx over keep-alive for HTTP, the jetagent ``Client`` (one
``js.publish`` with its ack) for NATS, both on one uvloop loop. Submission needs only
the streams, so no orchestrator runs for the submit benchmarks. Time to first token runs
an orchestrator and a reasoning worker against a local streaming server that sends one
word every ``DELAY_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.embedded import free_port
from jetagent.events import StepCompleted
from jetagent.jetstream.provision import provision
from jetagent.testing import eventually
from jetagent.token_stream import follow_tokens

from ._harness import Benchmark, Contenders, Env, Suite, Target
from ._services import Loop, bench_services, loop_with_nats
from ._stream_server import TOKENS, streaming_server

__all__ = ["SUITE"]

GATEWAY = "gateway POST"
NATS = "NATS publish"
FLOOR = "GET /healthz"
FIRST = "first token"
END = "step end"
TOKEN = "bench-token-0123456789"
DELAY_S = 0.02
CONCURRENCY = 32


class _Submitters:
    """A gateway process and both kinds of client, under one prefix."""

    def __init__(self, env: Env, loop: Loop) -> None:
        self.prefix = "g" + uuid.uuid4().hex[:8]
        self.settings = Settings(nats_url=env.nats_url, prefix=self.prefix, tenants="*")
        self.loop = loop
        loop.run(provision(loop.nc, self.settings))
        self.client = Client(loop.nc, self.settings)
        port = free_port()
        self.services = bench_services(env.nats_url, self.prefix, env.path("logs"))
        self.services.start(
            "gateway",
            "gateway",
            env={"JETAGENT_GATEWAY_PORT": str(port), "JETAGENT_GATEWAY_TOKENS": f"{TOKEN}=bench"},
        )
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            limits=httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY),
            timeout=30,
        )
        loop.run(self._ready())

    async def _ready(self) -> None:
        async def ready() -> bool:
            try:
                return (await self.http.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(
            ready,
            timeout=30,
            interval=0.1,
            alive=self.services.check_alive,
            what="the gateway answering /readyz",
        )

    async def via_gateway(self) -> None:
        response = await self.http.post("/v1/workflows", json={"instruction": "What is 6 * 7?"})
        if response.status_code != 202:
            raise RuntimeError(f"gateway answered {response.status_code}: {response.text}")

    async def health(self) -> None:
        """The HTTP floor: the same client and server, no validation and no NATS."""
        (await self.http.get("/healthz")).raise_for_status()

    async def via_nats(self) -> None:
        await self.client.submit(instruction="What is 6 * 7?", tenant="bench")

    def close(self) -> None:
        self.loop.run(self.http.aclose())
        self.services.stop_all()


@contextmanager
def _submitters(env: Env) -> Iterator[_Submitters]:
    with loop_with_nats(env.nats_url, "bench-gateway") as loop:
        submitters = _Submitters(env, loop)
        try:
            yield submitters
        finally:
            submitters.close()


def _latencies_ms(s: _Submitters, submit: str, n: int) -> list[float]:
    async def run() -> list[float]:
        one = getattr(s, submit)
        for _ in range(10):
            await one()  # warm connections
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await one()
            times.append((time.perf_counter() - started) * 1000)
        return times

    return s.loop.run(run())


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


def _latency(env: Env, q: int) -> Benchmark:
    n = env.size(400, 60)

    @contextmanager
    def contenders(env: Env) -> Iterator[Contenders]:
        s = env.shared("submitters", lambda: _submitters(env))
        yield {
            GATEWAY: lambda: _percentile(_latencies_ms(s, "via_gateway", n), q),
            NATS: lambda: _percentile(_latencies_ms(s, "via_nats", n), q),
        }

    return Benchmark(
        name=f"submit latency p{q}",
        unit="ms",
        better="lower",
        subject=GATEWAY,
        baselines=(NATS,),
        contenders=contenders,
        target=Target("<", value=10.0 if q == 50 else 30.0),
        note=f"one request at a time, {n} per round after 10 warm-up: `POST /v1/workflows` "
        "(202 once JetStream acked the request) vs `Client.submit` (publish + ack).",
    )


def _rate(env: Env) -> Benchmark:
    n = env.size(1600, 200)

    def rate(s: _Submitters, submit: str) -> float:
        async def run() -> float:
            one = getattr(s, submit)
            queue = iter(range(n))

            async def lane() -> None:
                for _ in queue:
                    await one()

            started = time.perf_counter()
            await asyncio.gather(*(lane() for _ in range(CONCURRENCY)))
            return n / (time.perf_counter() - started)

        return s.loop.run(run())

    @contextmanager
    def contenders(env: Env) -> Iterator[Contenders]:
        s = env.shared("submitters", lambda: _submitters(env))
        yield {
            GATEWAY: lambda: rate(s, "via_gateway"),
            NATS: lambda: rate(s, "via_nats"),
            FLOOR: lambda: rate(s, "health"),
        }

    return Benchmark(
        name=f"submit rate, {CONCURRENCY} concurrent",
        unit="req/s",
        better="higher",
        subject=GATEWAY,
        baselines=(NATS, FLOOR),
        contenders=contenders,
        target=Target(">=", value=500.0),
        note=f"{n} requests per round from {CONCURRENCY} concurrent lanes; one gateway "
        "process (one core of the two is the gateway's at most, the httpx client the "
        "other's). `GET /healthz` on the same client and server is the HTTP floor.",
    )


def _catalog(port: int) -> str:
    return f"""
[models.bench-stream]
provider = "openai"
base_url = "http://127.0.0.1:{port}/v1"
context_window = 8192
max_output_tokens = 256
input_per_mtok = 1.0
output_per_mtok = 2.0
typical_latency_s = 30.0
"""


def _first_token(env: Env) -> Benchmark:
    rounds = env.size(10, 3)

    @contextmanager
    def contenders(env: Env) -> Iterator[Contenders]:
        with streaming_server(DELAY_S) as port, loop_with_nats(env.nats_url, "bench-ttft") as loop:
            prefix = "t" + uuid.uuid4().hex[:8]
            settings = Settings(nats_url=env.nats_url, prefix=prefix, tenants="*")
            loop.run(provision(loop.nc, settings))
            catalog = env.path("models.toml")
            catalog.write_text(_catalog(port))
            services = bench_services(env.nats_url, prefix, env.path("logs"))
            extra = {"JETAGENT_MODELS": str(catalog)}
            services.start("orchestrator", "orchestrator", env=extra)
            services.start("reasoning", "worker", "reasoning", env=extra)
            client = Client(loop.nc, settings)

            def one() -> tuple[float, float]:
                async def run() -> tuple[float, float]:
                    wid = uuid.uuid4().hex
                    first: asyncio.Future[float] = asyncio.get_running_loop().create_future()

                    async def watch_tokens() -> None:
                        async for delta in follow_tokens(loop.nc, settings.names, wid):
                            if delta.text and not first.done():
                                first.set_result(time.perf_counter())

                    watcher = asyncio.create_task(watch_tokens())
                    await asyncio.sleep(0.05)  # the core subscription reaches the server
                    started = time.perf_counter()
                    await client.submit(
                        request_id=wid,
                        instruction="Say forty words",
                        tenant="bench",
                        model_preferences={"models": ["bench-stream"]},
                    )
                    async with contextlib.aclosing(client.watch(wid)) as events:
                        async for event in events:
                            if isinstance(event, StepCompleted):
                                ended = time.perf_counter()
                                break
                    token_at = await asyncio.wait_for(first, 30)
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                    return (token_at - started) * 1000, (ended - started) * 1000

                services.check_alive()
                return loop.run(asyncio.wait_for(run(), 60))

            try:
                one()  # warm up: connections, the worker's first call
                yield {FIRST: lambda: one()[0], END: lambda: one()[1]}
            finally:
                services.stop_all()

    return Benchmark(
        name="time to first streamed token",
        unit="ms",
        better="lower",
        subject=FIRST,
        baselines=(END,),
        contenders=contenders,
        target=Target("<=", baseline=END, factor=0.25),
        rounds=rounds,
        quick_rounds=2,
        note=f"one reasoning step against a local OpenAI-compatible stream of {TOKENS} words, "
        f"one every {DELAY_S * 1000:.0f} ms: from `submit` to the first delta on "
        "`<prefix>.tokens.<id>.*` vs to the step's `StepCompleted` event.",
    )


def _benchmarks(env: Env) -> list[Benchmark]:
    return [_latency(env, 50), _latency(env, 99), _rate(env), _first_token(env)]


SUITE = Suite(
    name="gateway",
    title="HTTP gateway vs NATS; streamed tokens vs step end",
    description=(
        "`jetagent gateway` (FastAPI on uvicorn, one process) in front of a local "
        "nats-server, against publishing the same request straight to JetStream; and how "
        "much sooner a streamed answer starts than its step ends."
    ),
    benchmarks=_benchmarks,
)
