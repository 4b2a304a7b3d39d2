"""The ``cluster`` suite's leader kill, run alone, with the services' traffic traced:
``python -m bench.failover_trace [--kills 3] [--in-flight 20]``.

Each kill is the suite's (``bench._failover``: the node leading the workflows stream is
SIGKILLed under a closed loop of workflows, then started again). Meanwhile a core-NATS
client on the two other nodes watches what the services send, stored or not: every
publish of a workflow event or a step result (a core subscriber sees each attempt,
also those no stream stored), every ack, nak and in-progress signal, every pull request
and every JetStream API read. Printed per kill: the leaders elected after it (their
advisories) and a timeline in half seconds — so a stall can be read as "silent until
+5.0 s: requests lost with the node waiting out their timeout", "result publishes every
2 s: the worker's per-try timeout", "no pull re-issued for 15 s". The suite itself
(``python -m bench cluster``) is what BENCHMARKS.md reports; this is for finding out why.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import nats
import typer
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from rich.console import Console

from jetagent.config import Settings
from jetagent.testing import nats_cluster

from ._cluster import provision_at, stream_leader
from ._engine_platform import EnginePlatform, engine_platform
from ._failover import Failover, KillRound

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

Seen = list[tuple[float, str]]


def _kind(msg: Msg, prefix: str) -> str:
    """What a message the services sent is, in a few words."""
    parts = msg.subject.split(".")
    if msg.subject.startswith(f"{prefix}.wf."):
        # <p>.wf.<id>...<Event>[.<capability>[.<tool>]]: the event's name is capitalised.
        return "publish " + next((p for p in parts[3:] if p[:1].isupper()), "?")
    if msg.subject.startswith(f"{prefix}.step."):
        return "publish StepResult"
    if msg.subject.startswith("$JS.ACK."):
        body = msg.data.split(b" ", 1)[0].decode(errors="replace") or "+ACK"
        return f"{body} {parts[3]}"
    if msg.subject.startswith("$JS.API.CONSUMER.MSG.NEXT."):
        return f"pull {parts[-1]}"
    return " ".join(parts[2:4]).lower()  # STREAM INFO, DIRECT GET, STREAM MSG


async def _watch(platform: EnginePlatform, urls: list[str], seen: Seen) -> NATS:
    prefix = platform.settings.prefix

    def note() -> Callable[[Msg], Awaitable[None]]:
        async def on(msg: Msg) -> None:
            seen.append((time.time(), _kind(msg, prefix)))

        return on

    nc = await nats.connect(servers=urls, name="bench-failover-trace")
    for subject in (
        f"{prefix}.wf.>",
        f"{prefix}.step.>",
        "$JS.ACK.>",
        "$JS.API.CONSUMER.MSG.NEXT.>",
        "$JS.API.STREAM.INFO.>",
        "$JS.API.STREAM.MSG.GET.>",
        "$JS.API.DIRECT.GET.>",
    ):
        await nc.subscribe(subject, cb=note())
    return nc


def _print(console: Console, n: int, kill: KillRound, seen: Seen) -> None:
    stall = kill.platform_stall_s
    console.print(
        f"[bold]kill {n}[/]: {kill.node} (led {kill.led.describe()}); server failover "
        f"{kill.server_failover_s}, next step stored {stall}, longest gap "
        f"{kill.longest_gap_s:.2f} s"
    )
    elected = sorted(kill.elections.items(), key=lambda item: item[1])
    console.print("  elected: " + "; ".join(f"{g} +{t:.2f}" for g, t in elected))
    end = kill.killed_at + max(kill.longest_gap_s, stall or 0.0) + 3.0
    bins: dict[float, Counter[str]] = {}
    for at, kind in seen:
        if kill.killed_at - 0.5 <= at <= end:
            slot = (at - kill.killed_at) // 0.5 * 0.5
            bins.setdefault(slot, Counter())[kind] += 1
    for slot in sorted(bins):
        counts = ", ".join(f"{kind} x{k}" for kind, k in sorted(bins[slot].items()))
        console.print(f"  +{slot:5.1f} s  {counts}")


@app.command()
def main(
    kills: Annotated[int, typer.Option(min=1, max=20, help="How many leader kills.")] = 3,
    in_flight: Annotated[
        int, typer.Option(min=1, max=1000, help="Workflows in flight during a kill.")
    ] = 20,
) -> None:
    """Kill the workflows stream's leader under load and print what the services sent."""
    console = Console()
    with tempfile.TemporaryDirectory(prefix="jetagent-trace-") as tmp:
        folder = Path(tmp)
        with nats_cluster(folder / "cluster") as cluster:
            prefix = "trace"
            settings = Settings(nats_url=cluster.url, prefix=prefix, replicas=3, tenants="*")
            asyncio.run(provision_at(cluster.url, settings))
            with engine_platform(
                cluster.url, prefix, folder / "logs", env={"JETAGENT_REPLICAS": "3"}, warm_up=2
            ) as platform:
                failover = Failover(cluster, platform, in_flight=in_flight)
                for n in range(1, kills + 1):
                    seen: Seen = []
                    assert platform.client is not None
                    leader = platform.run(
                        stream_leader(platform.client.nc, platform.names.workflows_stream)
                    )
                    others = [s.url for s in cluster.servers if s.server_name != leader]
                    watcher = platform.run(_watch(platform, others, seen))
                    try:
                        kill = failover.kill()
                    finally:
                        platform.run(watcher.close())
                    _print(console, n, kill, seen)


if __name__ == "__main__":
    app()
