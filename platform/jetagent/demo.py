"""`make demo`: the platform from nothing, a few real agent workflows, and their costs.

Starts the embedded nats-server and every service as its own process (exactly what
`jetagent up` runs), submits example workflows that need multi-step reasoning with tool
calls — served by the offline deterministic planner, so no network or API key is
needed — shows each one's progress live, then its answer, tokens and cost. One
workflow exceeds its token budget on purpose and ends ``terminated (token_cap)``.
Everything is stopped before it exits.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from jetagent._render import follow
from jetagent._up import Platform, default_services
from jetagent.client import Client, WorkflowResult
from jetagent.config import Settings
from jetagent.contract import WorkflowRequest

__all__ = ["EXAMPLES", "main"]

EXAMPLES: list[tuple[str, dict[str, object]]] = [
    (
        "arithmetic",
        {"instruction": "What is (17 * 23) + 4 and 2 ** 10? Then multiply the result by 2"},
    ),
    ("memory", {"instruction": "Remember that my city is Lisbon, then recall city"}),
    (
        "summary",
        {
            "instruction": "What is 12.5 * 8? Then divide the result by 4",
            "output": {"summarize": True},
        },
    ),
    (
        "over-budget",
        {
            "instruction": "Compute 1 + 1 then 2 + 2 then 3 + 3 then 4 + 4 then 5 + 5",
            "capability_limits": {"token_cap": 700},
        },
    ),
]


async def run_demo(console: Console, data_dir: Path) -> int:
    started = time.monotonic()
    settings = Settings(nats_url="", data_dir=data_dir, tenants="demo")
    platform = Platform(
        settings,
        default_services(projections=False),
        console=console,
        log_dir=data_dir / "logs",
    )
    console.rule("[bold]jetagent demo[/]")
    console.print(
        "Models: the [bold]offline deterministic planner[/] (a rule-based planner, not an "
        "LLM; it counts tokens honestly and bills the catalog price of `offline-planner`)."
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
            f"{result.cost_usd:.6f}",
            result.output or "",
        )
    console.print(table)
    total = sum((r.cost_usd for r in results.values()), start=Decimal(0))
    console.print(
        f"total: {sum(r.tokens for r in results.values())} tokens, ${total:.6f}; "
        f"demo took {time.monotonic() - started:.1f} s; service logs in {data_dir / 'logs'}"
    )
    expected = {"arithmetic", "memory", "summary"}
    ok = all(results[k].ok for k in expected) and results["over-budget"].reason == "token_cap"
    return 0 if ok else 1


def main() -> int:
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    with tempfile.TemporaryDirectory(prefix="jetagent-demo-") as folder:
        return asyncio.run(run_demo(console, Path(folder)))


if __name__ == "__main__":
    raise SystemExit(main())
