"""Running the ``comparison`` workload both ways and measuring what each run did.

:class:`Comparison` owns the scripted server (``bench._comparison_server``, a process),
the tool ledger file, and — on first use — the jetagent deployment
(``bench._comparison_platform``). :meth:`Comparison.run` runs one schedule of sessions
on one architecture at one arrival rate, with faults on or off, and returns a
:class:`RunStats`: latency percentiles, failed and corrupted sessions (every answer is
checked against :func:`expected_answer`), throughput, provider calls per logical call
(from the server's own ledger), tool runs per tool call (from the tool ledger) and the
cost each architecture attributed to each capability next to what the provider billed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ._comparison_platform import ComparisonPlatform, Deployment, PlatformRun, catalog_toml
from ._comparison_tools import LEDGER_ENV, SERVER_ENV, crunch_impl
from ._comparison_workload import Params, Session, expected_answer, schedule
from ._engine_platform import percentile
from ._serving import ROOT, start_server

__all__ = ["Comparison", "RunStats", "calibrate_crunch", "comparison"]

MONOLITH = "monolith"
JETAGENT = "jetagent"
MONOLITH_TIMEOUT_S = 10.0
"""The per-attempt timeout: what a careful developer sets for the monolith (the OpenAI
SDK's default is 600 s), and the scripted model's ``timeouts.read_s`` / ``total_s`` in
jetagent's catalog — the same for both."""
MONOLITH_ATTEMPTS = 5
TYPICAL_LATENCY_S = 0.4
"""The catalog's ``typical_latency_s`` for the scripted model (≈ p83 of the latency
distribution): jetagent hedges a call after twice this."""


@dataclass
class RunStats:
    """One run: one architecture, one arrival rate, faults on or off."""

    arch: str
    rate: float
    faults: bool
    sessions: int
    answers: dict[str, str | None] = field(default_factory=dict)
    """Per session id: its answer (``None``: failed)."""
    latencies: dict[str, float] = field(default_factory=dict)
    """Per answered session id: seconds from its scheduled arrival to its answer."""
    failed: int = 0
    corrupted: int = 0
    errors: list[str] = field(default_factory=list)
    p50_s: float = 0.0
    p99_s: float = 0.0
    sessions_per_s: float = 0.0
    provider_calls: int = 0
    logical_calls: int = 0
    provider_outcomes: dict[str, int] = field(default_factory=dict)
    tool_runs: int = 0
    tool_calls: int = 0
    cost_usd: dict[str, float] = field(default_factory=dict)
    """USD attributed per capability by the architecture itself."""
    billed_usd: float = 0.0
    """USD the provider billed (its ledger: every answered call)."""
    recorded_calls: dict[str, int] = field(default_factory=dict)
    """jetagent: provider calls recorded in StepResults, by outcome."""
    tool_errors: dict[str, int] = field(default_factory=dict)
    """Tool errors the model was shown, by tool and message."""

    @property
    def label(self) -> str:
        return f"{self.arch}{'' if self.faults else ', no faults'}"

    @property
    def calls_per_logical(self) -> float:
        return self.provider_calls / self.logical_calls if self.logical_calls else 0.0

    @property
    def runs_per_tool_call(self) -> float:
        return self.tool_runs / self.tool_calls if self.tool_calls else 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def calibrate_crunch(target_s: float = 0.3) -> int:
    """Iterations of ``crunch`` that take about ``target_s`` on this machine now."""
    n = 200_000
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        crunch_impl(n, 1, "calibration")
        best = min(best, time.perf_counter() - started)
    return max(10_000, round(n * target_s / best))


class _Server:
    def __init__(self, folder: Path) -> None:
        self.process, self.port = start_server("bench._comparison_server", folder, "server")
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=30.0, trust_env=False)

    def configure(self, params: Params) -> None:
        self.http.post("/configure", json=params.describe()).raise_for_status()

    def ledger(self) -> dict[str, Any]:
        response = self.http.get("/ledger")
        response.raise_for_status()
        ledger: dict[str, Any] = response.json()
        return ledger

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.http.close()
        self.process.close(timeout=10)


class Comparison:
    """The server, the ledger, the jetagent deployment; runs of either architecture."""

    def __init__(
        self,
        nats_url: str,
        folder: Path,
        params: Params,
        deployment: Deployment,
        *,
        processes: int = 2,
    ) -> None:
        self.nats_url = nats_url
        self.folder = folder
        self.params = params
        self.deployment = deployment
        self.processes = processes
        """Process-pool size of the monolith (the same as jetagent's crunch pool)."""
        self.ledger_path = folder / "tool-ledger.txt"
        self.server = _Server(folder / "server")
        self.platform: ComparisonPlatform | None = None
        self.last_platform_run: PlatformRun | None = None
        """The last jetagent run's raw outcome (per-session steps), for attribution."""
        self.env = {
            SERVER_ENV: self.server.url,
            LEDGER_ENV: str(self.ledger_path),
            "PYTHONPATH": str(ROOT),
        }

    def _platform(self) -> ComparisonPlatform:
        if self.platform is None:
            catalog = self.folder / "models.toml"
            scale = self.params.time_scale
            catalog.write_text(
                catalog_toml(
                    self.server.port,
                    TYPICAL_LATENCY_S * scale,
                    MONOLITH_TIMEOUT_S * max(scale, 0.1),
                )
            )
            env = {
                **self.env,
                "JETAGENT_MODELS": str(catalog),
                "JETAGENT_TOOLS": "bench._comparison_tools:TOOLS",
            }
            prefix = f"cmp{uuid.uuid4().hex[:8]}"
            self.platform = ComparisonPlatform(
                self.nats_url, prefix, self.folder / "logs", env, self.deployment
            )
        return self.platform

    def close(self) -> None:
        try:
            if self.platform is not None:
                self.platform.close()
        finally:
            self.server.close()

    def run(self, arch: str, rate: float, *, faults: bool) -> RunStats:
        params = self.params if faults else self.params.without_faults()
        tag = f"{arch[0]}{'f' if faults else 'n'}{int(rate)}-{uuid.uuid4().hex[:6]}"
        sessions = schedule(tag, rate, params)
        self.server.configure(params)
        self.ledger_path.write_text("")
        if arch == MONOLITH:
            out = self._monolith(sessions, params)
            outcomes, cost, recorded = out["sessions"], out["cost_usd"], {}
            tool_errors = out["tool_errors"]
        else:
            platform = self._platform()
            timeout = 120.0 * max(params.time_scale, 0.25)
            result = platform.run(sessions, timeout_s=timeout)
            self.last_platform_run = result
            outcomes, cost, recorded = result.outcomes, result.cost_usd, result.call_outcomes
            tool_errors = result.tool_errors
        stats = self._stats(arch, rate, faults, params, sessions, outcomes, cost, recorded)
        stats.tool_errors = tool_errors
        return stats

    def _monolith(self, sessions: list[Session], params: Params) -> dict[str, Any]:
        config = {
            "server": self.server.url,
            "params": params.describe(),
            "sessions": [asdict(s) for s in sessions],
            "timeout_s": MONOLITH_TIMEOUT_S * max(params.time_scale, 0.1),
            "max_attempts": MONOLITH_ATTEMPTS,
            "processes": self.processes,
        }
        config_path = self.folder / "monolith.json"
        out_path = self.folder / "monolith-out.json"
        config_path.write_text(json.dumps(config))
        out_path.unlink(missing_ok=True)
        log = (self.folder / "monolith.log").open("ab")
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench._comparison_monolith",
                    str(config_path),
                    str(out_path),
                ],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=sessions[-1].arrival_s + 600,
            )
        finally:
            log.close()
        out: dict[str, Any] = json.loads(out_path.read_text())
        return out

    def _stats(
        self,
        arch: str,
        rate: float,
        faults: bool,
        params: Params,
        sessions: list[Session],
        outcomes: dict[str, dict[str, Any]],
        cost: dict[str, float],
        recorded: dict[str, int],
    ) -> RunStats:
        stats = RunStats(arch=arch, rate=rate, faults=faults, sessions=len(sessions))
        latencies, ends = [], []
        for session in sessions:
            outcome = outcomes.get(session.sid) or {}
            answer = outcome.get("answer")
            stats.answers[session.sid] = answer
            if answer is None:
                stats.failed += 1
                if len(stats.errors) < 5:
                    stats.errors.append(f"{session.sid}: {outcome.get('error')}")
                continue
            if answer.strip() != expected_answer(session.seed, params):
                stats.corrupted += 1
                if len(stats.errors) < 5:
                    stats.errors.append(
                        f"{session.sid}: answered {answer!r}, expected "
                        f"{expected_answer(session.seed, params)!r}"
                    )
            latencies.append(float(outcome["latency_s"]))
            stats.latencies[session.sid] = latencies[-1]
            ends.append(float(outcome["done_s"]))
        if latencies:
            stats.p50_s = percentile(latencies, 0.50)
            stats.p99_s = percentile(latencies, 0.99)
            stats.sessions_per_s = len(latencies) / max(ends)
        ledger = self.server.ledger()
        sids = {s.sid for s in sessions}
        calls = {k: v for k, v in ledger["calls"].items() if k.split(":")[0] in sids}
        stats.provider_calls = sum(calls.values())
        stats.logical_calls = len(calls)
        stats.provider_outcomes = ledger["outcomes"]
        stats.billed_usd = (
            ledger["input_tokens"] * params.input_per_mtok
            + ledger["output_tokens"] * params.output_per_mtok
        ) / 1e6
        runs = Counter(
            line.split()[1] for line in self.ledger_path.read_text().splitlines() if line
        )
        stats.tool_runs = sum(runs.values())
        stats.tool_calls = len(runs)  # distinct calls that ran at least once
        stats.cost_usd = {k: round(v, 6) for k, v in cost.items()}
        stats.recorded_calls = recorded
        return stats


@contextlib.contextmanager
def comparison(
    nats_url: str, folder: Path, params: Params, deployment: Deployment
) -> Iterator[Comparison]:
    runner = Comparison(nats_url, folder, params, deployment)
    try:
        yield runner
    finally:
        runner.close()
