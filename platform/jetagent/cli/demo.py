"""`make demo`: the platform from nothing, a few real agent workflows, and their costs.

Starts the embedded nats-server and every service as its own process (exactly what
`jetagent up` runs), submits example workflows that need multi-step reasoning with tool
calls — served by the offline deterministic provider, so no network or API key is
needed — shows each one's progress live, then its answer, tokens and cost. One
workflow exceeds its token budget on purpose and ends ``terminated (token_cap)``.
Everything is stopped before it exits.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from jetagent.cli._render import follow
from jetagent.cli._up import Platform, default_services
from jetagent.client import Client, WorkflowResult
from jetagent.config import Settings
from jetagent.contract import WorkflowRequest
from jetagent.embedded import free_port

__all__ = ["EXAMPLES", "main"]

EXAMPLES: list[tuple[str, dict[str, object]]] = [
    (
        "arithmetic",
        {
            "instruction": "What is (17 * 23) + 4 and 2 ** 10? Then multiply the result by 2",
            "allowed_tools": ["calculator"],
        },
    ),
    (
        "memory",
        {
            "instruction": "Remember that my city is Lisbon, then recall city",
            "allowed_tools": ["memory_store", "memory_lookup"],
        },
    ),
    (
        "summary",
        {
            "instruction": "What is 12.5 * 8? Then divide the result by 4",
            "allowed_tools": ["calculator"],
            "output": {"summarize": True},
        },
    ),
    (
        "over-budget",
        {
            "instruction": "Compute 1 + 1 then 2 + 2 then 3 + 3 then 4 + 4 then 5 + 5",
            "capability_limits": {"token_cap": 700},
            "allowed_tools": ["calculator"],
        },
    ),
]


async def run_demo(console: Console, data_dir: Path) -> int:
    started = time.monotonic()
    settings = Settings(nats_url="", data_dir=data_dir, tenants="demo", metrics_port=free_port())
    platform = Platform(
        settings,
        # No gateway: the demo talks NATS, and a fixed HTTP port could be taken. No port
        # either: the server takes a free one, so the demo runs beside a `jetagent up`
        # (or anything else) on 4222, and announces nothing (jetagent.discovery).
        default_services(projections=True, gateway=False),
        console=console,
        log_dir=data_dir / "logs",
    )
    console.rule("[bold]jetagent demo[/]")
    console.print(
        "Models: the [bold]offline deterministic provider[/] (a fixed policy, not an LLM; "
        "it counts tokens honestly and bills the catalog price of `offline-planner`)."
    )
    await platform.start()
    pumps = platform.pump()
    await platform.wait_ready()
    client = await Client.connect(platform.url, settings=settings)
    results: dict[str, WorkflowResult] = {}
    try:
        requests = {
            label: WorkflowRequest.model_validate({"tenant": "demo", **fields})
            for label, fields in EXAMPLES
        }
        for label, request in requests.items():
            await client.submit(request)
            console.print(f"submitted [bold]{label}[/] → {request.request_id}")

        async def show(label: str, request: WorkflowRequest) -> None:
            await follow(client, request.request_id, console, prefix=f"[bold]{label:<12}[/] ")
            results[label] = await client.result(request.request_id, timeout=30)

        async with asyncio.timeout(45):
            await asyncio.gather(*(show(label, r) for label, r in requests.items()))
        metrics = await _metrics(settings.metrics_port, expected_workflows=len(requests))
    finally:
        await client.close()
        await platform.stop(pumps)
    table = Table(title="workflows")
    for column in ("workflow", "status", "reason", "tokens", "cost (USD)", "answer"):
        table.add_column(column)
    for label, result in results.items():
        table.add_row(
            label,
            result.status.value,
            result.reason or "-",
            str(result.tokens),
            f"{result.cost_usd:.7f}",
            result.output or "",
        )
    console.print(table)
    total = sum((r.cost_usd for r in results.values()), start=Decimal(0))
    console.print(
        f"total: {sum(r.tokens for r in results.values())} tokens, ${total:.7f}; "
        f"demo took {time.monotonic() - started:.1f} s; service logs in {data_dir / 'logs'}"
    )
    _print_metrics(console, metrics, settings.metrics_port)
    expected = {"arithmetic", "memory", "summary"}
    ok = all(results[k].ok for k in expected) and results["over-budget"].reason == "token_cap"
    return 0 if ok else 1


async def _metrics(port: int, *, expected_workflows: int) -> dict[str, list[Any]]:
    """Scrape /metrics once the projection has counted every workflow."""
    url = f"http://127.0.0.1:{port}/metrics"
    families: dict[str, list[Any]] = {}
    for _ in range(100):
        try:
            text = await asyncio.to_thread(_get, url)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        families = {f.name: f.samples for f in text_string_to_metric_families(text)}
        ended = sum(s.value for s in families.get("jetagent_workflows", []))
        if ended >= expected_workflows:
            break
        await asyncio.sleep(0.1)
    return families


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return str(reply.read().decode())


def _print_metrics(console: Console, families: dict[str, list[Any]], port: int) -> None:
    table = Table(title=f"metrics (projections, http://127.0.0.1:{port}/metrics)")
    for column in (
        "capability",
        "model",
        "provider",
        "input tokens",
        "output tokens",
        "cost (USD)",
    ):
        table.add_column(column)
    rows: dict[tuple[str, str, str], list[float]] = {}
    for sample in families.get("jetagent_tokens", []):
        labels = sample.labels
        row = rows.setdefault(
            (labels["capability"], labels["model"], labels["provider"]), [0, 0, 0]
        )
        row[0 if labels["kind"] in ("input", "cached") else 1] += sample.value
    for sample in families.get("jetagent_cost_usd", []):
        labels = sample.labels
        key = (labels["capability"], labels["model"], labels["provider"])
        rows.setdefault(key, [0, 0, 0])[2] += sample.value
    for (capability, model, provider), (tokens_in, tokens_out, cost) in sorted(rows.items()):
        if not (tokens_in or tokens_out or cost):
            # Every route of the catalog is exported from 0 (so increase() sees a first
            # call); the demo shows the routes its workflows used.
            continue
        table.add_row(
            capability, model, provider, f"{tokens_in:.0f}", f"{tokens_out:.0f}", f"{cost:.7f}"
        )
    console.print(table)
    outcomes = ", ".join(
        f"{s.labels['outcome']} {s.value:.0f}" for s in families.get("jetagent_workflows", [])
    )
    console.print(f"workflows by outcome: {outcomes}")


def main() -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    with tempfile.TemporaryDirectory(prefix="jetagent-demo-") as folder:
        return asyncio.run(run_demo(console, Path(folder)))


if __name__ == "__main__":
    raise SystemExit(main())
