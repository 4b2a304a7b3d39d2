"""Every query of the shipped Grafana dashboard, asked of a real Prometheus scraping a
live platform: none may come back empty.

``jetagent up`` runs every service as a process against the test's nats-server, each with
its own ``/metrics`` port (printed by ``up``); Debian's ``prometheus`` scrapes them all
every second. A workload gives every panel something to show, failures included: plain
workflows (reasoning, tools), a tool step that fails once and is retried, a tool that is
always down (retried, failed, dead-lettered), a model whose endpoint refuses connections
(provider calls fail, its circuit opens), and a request that cannot be read (rejected).
Then each PromQL expression of ``deploy/grafana/dashboards/jetagent.json`` is asked as
Grafana asks it (range queries for time series, instant queries for stats, the template
variables set to All) until every one has data, or the deadline lists those without.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.embedded import free_port
from jetagent.testing import SupervisedProcess, eventually, tools_registered
from tests.support.cli import JETAGENT, cli_env
from tests.support.prometheus import Prometheus, Series, prometheus_binary

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "jetagent.json"
DOWN_MODEL = "down-model"

# Queries allowed to come back empty, with the reason (none today: the workload feeds all).
EMPTY_ALLOWED: dict[tuple[str, str], str] = {}

# Panels the failure workload must move above zero: a panel fed only by zeros would pass
# "has data" without showing that failures reach it.
POSITIVE = {
    ("Dead letters in range", "A"),
    ("Circuits not closed", "A"),
    ("Step failure ratio", "A"),
    ("Step retries/s by capability", "A"),
    ("Provider error ratio by provider", "A"),
    ("Dead letters per minute by source", "A"),
    ("Termination reasons in range", "A"),
    ("Deliveries/s by outcome", "A"),
    ("Worker retries/s by reason", "A"),
    ("Worker dead letters per minute", "A"),
    ("Provider calls/s of every run by outcome", "A"),
    ("Decisions/s by input and outcome", "A"),
    ("Gateway requests/s by status", "A"),
}


@dataclass(frozen=True)
class Target:
    panel: str
    ref: str
    expr: str
    instant: bool

    @property
    def name(self) -> str:
        return f"{self.panel} [{self.ref}]"


def _targets() -> list[Target]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        Target(panel["title"], t["refId"], t["expr"], bool(t.get("instant")))
        for panel in dashboard["panels"]
        if panel["type"] != "row"
        for t in panel["targets"]
    ]


def _variables() -> dict[str, str]:
    """The query variables' ``label_values(match, label)``: name → match."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"])
            assert match is not None, variable["query"]
            found[variable["name"]] = _as_grafana_sends(match.group(1), range_s=60)
    return found


def _as_grafana_sends(expr: str, *, range_s: int) -> str:
    """``expr`` with Grafana's variables replaced as Grafana would: every template
    variable at "All" (``.*``), ``$__rate_interval`` at four scrape intervals and more
    (Grafana's rule, with a margin for a loaded machine), ``$__range`` the whole run."""
    expr = expr.replace("$__rate_interval", "20s").replace("$__interval", "2s")
    expr = expr.replace("$__range", f"{range_s}s")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def _catalog(folder: Path) -> Path:
    """The shipped catalog plus a model whose endpoint refuses every connection, with a
    breaker that opens at the first failure and stays open through the test."""
    builtin = (ROOT / "platform" / "jetagent" / "models.toml").read_text()
    path = folder / "models.toml"
    path.write_text(
        builtin
        + f"""
[models.{DOWN_MODEL}]
provider = "openai"
base_url = "http://127.0.0.1:{free_port()}/v1"
api_key_env = "JA_TEST_DOWN_KEY"
context_window = 8192
max_output_tokens = 256
input_per_mtok = 1.0
output_per_mtok = 2.0

[models.{DOWN_MODEL}.timeouts]
connect_s = 1.0
total_s = 5.0

[models.{DOWN_MODEL}.breaker]
failure_threshold = 1
cool_down_s = 600.0
"""
    )
    return path


def _metrics_targets(output: str) -> dict[str, str]:
    """Service name → ``host:port`` of its /metrics, from what ``up`` printed."""
    found = {}
    for line in output.splitlines():
        match = re.match(r"started (\S+) .*metrics http://(127\.0\.0\.1:\d+)/metrics", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


async def _workload(client: Client, settings: Settings, gateway: str) -> list[str]:
    """Submit what gives every panel data; return the ids of the workflows."""
    ids = [
        await client.submit(instruction="What is 2 ** 10? Then add 24 to the result"),
        await client.submit(instruction="Compute 6 * 7", tenant="acme"),
        # A tool that fails for now on its first run: a retry, then success.
        await client.submit(
            instruction='call flaky_once {"note": "x"}', allowed_tools=["flaky_once"]
        ),
        # A tool that is always down: retried, failed, dead-lettered; the workflow ends.
        await client.submit(
            instruction='call down_always {"note": "x"}', allowed_tools=["down_always"]
        ),
        # A model whose endpoint refuses connections: failed calls, an open circuit.
        await client.submit(instruction="Say hello", model_preferences={"models": [DOWN_MODEL]}),
    ]
    # A request nobody can read: rejected.
    await client.js.publish(
        settings.names.request("default"), b"{not json", headers={"Nats-Msg-Id": "unreadable-1"}
    )
    # The gateway: an answered request and a refused one.
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get(f"/v1/workflows/{ids[0]}")).status_code == 401
    return ids


async def _empty(prometheus: Prometheus, targets: list[Target], *, start: float) -> dict[str, str]:
    """The targets without data now (and why), as Grafana would ask for them."""
    end = time.time()
    range_s = int(end - start) + 5
    missing = {}
    for target in targets:
        expr = _as_grafana_sends(target.expr, range_s=range_s)
        series: list[Series]
        if target.instant:
            series = await prometheus.query(expr, at=end)
        else:
            series = await prometheus.query_range(expr, start=start, end=end, step=1.0)
        values = [v for s in series for v in s.finite]
        if not values:
            missing[target.name] = f"{expr} → {len(series)} series, no finite value"
        elif (target.panel, target.ref) in POSITIVE and max(values) <= 0:
            missing[target.name] = f"{expr} → never above 0 (the workload should move it)"
    return missing


@pytest.mark.timeout(300)
async def test_every_dashboard_query_has_data_from_a_live_platform(
    nats_url: str, unique: str, tmp_path: Path
) -> None:
    prometheus_binary()  # a skip (or on CI a failure) before anything starts
    began = time.monotonic()
    prefix = unique.lower()[:12]
    gateway_port = free_port()
    env = cli_env(
        nats_url,
        prefix,
        JETAGENT_TENANTS="default,acme",
        JETAGENT_METRICS_PORT="0",
        JETAGENT_GATEWAY_PORT=str(gateway_port),
        JETAGENT_GATEWAY_TOKENS="tok-dashboard-1=default",
        JETAGENT_TOOLS="tests.support.tools:TEST_TOOLS",
        JETAGENT_MODELS=str(_catalog(tmp_path)),
        JA_TEST_DOWN_KEY="sk-test-down",
        JETAGENT_STEP_MAX_DELIVER="2",
        JETAGENT_MAX_STEP_ATTEMPTS="1",
        JETAGENT_STEP_RETRY_BASE_S="0.2",
        JETAGENT_SHUTDOWN_GRACE_S="2",
        PYTHONPATH=str(ROOT),  # the test tools, for every service `up` starts
    )
    settings = Settings(nats_url=nats_url, prefix=prefix, tenants="default,acme")
    up = SupervisedProcess(
        "up",
        [str(JETAGENT), "up", "--data-dir", str(tmp_path / "data")],
        log_file=tmp_path / "up.log",
        env=env,
        cwd=ROOT,
    )
    prometheus: Prometheus | None = None
    client: Client | None = None
    with up:
        output = await asyncio.to_thread(up.wait_for_output, "jetagent is up", timeout=120)
        services = _metrics_targets(output)
        expected = {"orchestrator", "reasoning", "tools", "summarize", "memory"}
        expected |= {"projections", "gateway"}
        assert set(services) == expected, f"`jetagent up` printed:\n{output}"
        prometheus = Prometheus(tmp_path / "prometheus", sorted(services.values()))
        try:
            await prometheus.start()
            client = await Client.connect(nats_url, settings=settings)
            await eventually(
                lambda: tools_registered(client.js, settings, "flaky_once", "down_always"),
                timeout=60,
                alive=up.check_alive,
                what="the tools worker",
            )
            # Every target scraped once before anything happens: a counter's first
            # increment then has a sample to increase from.
            await eventually(
                prometheus.scraped, timeout=60, alive=up.check_alive, what="every target scraped"
            )
            start = time.time() - 5
            ready_s = time.monotonic() - began
            ids = await _workload(client, settings, f"http://127.0.0.1:{gateway_port}")
            for workflow_id in ids:
                await client.result(workflow_id, timeout=90)

            targets = _targets()
            missing: dict[str, str] = {}

            async def all_have_data() -> bool:
                nonlocal missing
                missing = await _empty(prometheus, targets, start=start)  # type: ignore[arg-type]
                for key in list(missing):
                    panel, ref = key.rsplit(" [", 1)
                    if (panel, ref.rstrip("]")) in EMPTY_ALLOWED:
                        del missing[key]
                return not missing

            try:
                await eventually(all_have_data, timeout=60, interval=1.0, alive=up.check_alive)
            except TimeoutError:
                have = len(targets) - len(missing)
                lines = "\n".join(f"  {name}: {why}" for name, why in sorted(missing.items()))
                pytest.fail(
                    f"{have} of {len(targets)} dashboard queries have data; without:\n{lines}\n"
                    f"targets: {await prometheus.targets_up()}"
                )
            for name, match in _variables().items():
                values = await prometheus.label_values(name, match)
                assert values, f"template variable ${name} ({match}) lists nothing"
            # The first dead letter of each worker counts in increase() (its series was
            # there at 0 before it): one each, from the always-down tool and model.
            window = f"[{int(time.time() - start) + 5}s]"
            for capability in ("tools", "reasoning"):
                letters = "jetagent_worker_dead_letters_total"
                expr = f'sum(increase({letters}{{capability="{capability}"}}{window}))'
                [series] = await prometheus.query(expr)
                assert series.values[0] >= 1, (expr, series)
            # Every call of every run, live (the worker) and recorded (the projection).
            calls = {}
            for metric in ("jetagent_worker_provider_calls_total", "jetagent_provider_calls_total"):
                expr = f'sum({metric}{{model="{DOWN_MODEL}", outcome="failed"}})'
                [series] = await prometheus.query(expr)
                calls[metric] = series.values[0]
            assert calls["jetagent_worker_provider_calls_total"] >= 1, calls
            print(
                f"{len(targets)} queries with data; failed calls of {DOWN_MODEL}: {calls}; "
                f"services {sorted(services)}; "
                f"ready after {ready_s:.1f} s, total {time.monotonic() - began:.1f} s"
            )
        finally:
            if client is not None:
                await client.close()
            await prometheus.close()
