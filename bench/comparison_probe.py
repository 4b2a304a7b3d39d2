"""One configuration of the ``comparison`` suite, run alone, with each slow session's
time attributed: ``python -m bench.comparison_probe --rate 30 [--sessions N]``.

It runs jetagent with faults and then without (the same sessions: seeds depend only on
position), while sampling the box's load average and CPU use, and prints for the
slowest sessions where their time went: waiting before their first step, inside
reasoning and tool steps (with each step's calls, timeouts, 429s, hedges and
redeliveries), and between steps (the orchestrator and the workers' queues). The raw
per-session data goes to ``--out`` as JSON. The suite itself (``python -m bench
comparison``) is what BENCHMARKS.md reports; this is for finding out why.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from jetagent.embedded import EmbeddedServer

from ._comparison_platform import Deployment
from ._comparison_runs import JETAGENT, MONOLITH, Comparison, RunStats, calibrate_crunch
from ._comparison_workload import Params

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@dataclass
class LoadSampler:
    """The box's 1-minute load average and busy CPU share, once a second."""

    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _cpu(self) -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    def _loop(self) -> None:
        busy0, total0 = self._cpu()
        while not self._stop.wait(1.0):
            busy, total = self._cpu()
            share = (busy - busy0) / max(total - total0, 1)
            busy0, total0 = busy, total
            self.samples.append((os.getloadavg()[0], share))

    def __enter__(self) -> LoadSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "no samples"
        loads = [s[0] for s in self.samples]
        busy = sorted(s[1] for s in self.samples)
        return (
            f"load average {min(loads):.1f}-{max(loads):.1f}; CPU busy median "
            f"{busy[len(busy) // 2]:.0%}, {sum(b > 0.95 for b in busy)}/{len(busy)} s "
            "above 95%"
        )


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def attribute(latency: float, arrival: float, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Where one session's time went: before its first step, in steps of each
    capability (overlaps counted once), between steps, and after its last one."""
    steps = sorted(steps, key=lambda s: s["started"])
    end = arrival + latency
    spans = [(s["started"], s["finished"]) for s in steps]
    reasoning = _union(
        [(s["started"], s["finished"]) for s in steps if s["capability"] == "reasoning"]
    )
    in_steps = _union(spans)
    calls = [c for s in steps for c in s["calls"]]
    return {
        "latency_s": round(latency, 2),
        "before_first_s": round(steps[0]["started"] - arrival, 2) if steps else None,
        "reasoning_s": round(reasoning, 2),
        "tools_s": round(in_steps - reasoning, 2),
        "between_steps_s": round(latency - in_steps, 2),
        "after_last_s": round(end - max(b for _, b in spans), 2) if spans else None,
        "steps": len(steps),
        "redelivered": sum(s["deliveries"] > 1 or s["attempt"] > 1 for s in steps),
        "calls": {o: sum(c[0] == o for c in calls) for o in {c[0] for c in calls}},
        "routing": [r for s in steps for r in s["routing"]],
        "slowest_step": max(
            (
                {
                    "capability": s["capability"],
                    "tool": s["tool"],
                    "s": round(s["finished"] - s["started"], 2),
                    "calls": s["calls"],
                    "routing": s["routing"],
                    "attempt": s["attempt"],
                    "deliveries": s["deliveries"],
                    "error": s["error"],
                }
                for s in steps
            ),
            key=lambda d: float(d["s"]),
            default=None,
        ),
    }


def _run(runner: Comparison, arch: str, rate: float, faults: bool) -> tuple[RunStats, Any]:
    with LoadSampler() as load:
        stats = runner.run(arch, rate, faults=faults)
    return stats, load


@app.command()
def main(
    rate: Annotated[float, typer.Option(help="Arrivals per second.")] = 30.0,
    sessions: Annotated[int, typer.Option(help="Sessions per run.")] = 300,
    slowest: Annotated[int, typer.Option(help="Slow sessions to print.")] = 8,
    floor: Annotated[bool, typer.Option(help="Also run without faults.")] = True,
    monolith: Annotated[bool, typer.Option(help="Also run the monolith.")] = False,
    reasoning: Annotated[int, typer.Option(help="reasoning worker replicas")] = 2,
    tools: Annotated[int, typer.Option(help="tools worker replicas")] = 2,
    out: Annotated[Path | None, typer.Option(help="Write per-session data here.")] = None,
) -> None:
    params = Params(sessions=sessions, crunch_iterations=calibrate_crunch())
    deployment = Deployment(reasoning=reasoning, tools=tools)
    tmp = Path(tempfile.mkdtemp(prefix="jetagent-probe-"))
    server = EmbeddedServer(tmp / "nats").start()
    report: dict[str, Any] = {"deployment": deployment.describe(), "runs": {}}
    runner = Comparison(server.url, tmp / "comparison", params, deployment)
    try:
        configs = [(JETAGENT, True)] + ([(JETAGENT, False)] if floor else [])
        configs += [(MONOLITH, True)] if monolith else []
        for arch, faults in configs:
            stats, load = _run(runner, arch, rate, faults)
            label = f"{arch} {'faults' if faults else 'no faults'} {rate:g}/s"
            print(
                f"{label}: P50 {stats.p50_s:.2f} s, P99 {stats.p99_s:.2f} s, failed "
                f"{stats.failed}, corrupted {stats.corrupted}, calls/logical "
                f"{stats.calls_per_logical:.3f}, tool runs/call {stats.runs_per_tool_call:.2f}; "
                f"{load.summary()}; server outcomes {stats.provider_outcomes}"
            )
            entry: dict[str, Any] = {"stats": stats.to_json(), "load": load.samples}
            platform_run = runner.last_platform_run if arch == JETAGENT else None
            if platform_run is not None:
                per = {
                    sid: attribute(lat, platform_run.arrivals[sid], platform_run.steps.get(sid, []))
                    for sid, lat in stats.latencies.items()
                }
                entry["sessions"] = per
                ranked = sorted(per.items(), key=lambda kv: -kv[1]["latency_s"])
                for sid, info in ranked[:slowest]:
                    print(f"  {sid}: {json.dumps(info)}")
                fast = [v for _, v in ranked[len(ranked) // 2 :]]
                for key in ("before_first_s", "between_steps_s", "reasoning_s", "tools_s"):
                    top = [v[key] or 0.0 for _, v in ranked[: max(3, len(ranked) // 100)]]
                    print(
                        f"  {key}: slowest 1% mean {sum(top) / len(top):.2f} s, "
                        f"faster half mean {sum(v[key] or 0.0 for v in fast) / len(fast):.2f} s"
                    )
            report["runs"][label] = entry
    finally:
        runner.close()
        server.stop()
    if out is not None:
        out.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    app()
