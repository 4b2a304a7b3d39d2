"""Smoke runs of the ``scaling`` and ``cluster`` benchmarks' measuring parts, small.

No timing is asserted — speed is the benchmark's business, not the test suite's. What is
asserted is that the measurements are made and are whole: every workflow of a round
counted, every service's memory read, both sides of a leader kill measured at the same
kill, the killed node back with every replica current.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from bench._cluster import provision_at
from bench._engine_platform import engine_platform
from bench._failover import Failover
from bench._harness import Target
from bench._scaling import PROCESSES, WORKLOAD, open_point
from jetagent.config import Settings
from jetagent.embedded import EmbeddedCluster, EmbeddedServer


def test_a_target_with_a_margin_compares_with_the_baseline_plus_the_margin() -> None:
    target = Target("<=", baseline="server", plus=1.0)
    assert target.met(5.9, {"server": 5.0}) is True
    assert target.met(6.1, {"server": 5.0}) is False
    assert target.met(math.nan, {"server": 5.0}) is False
    assert target.describe("s") == "<= server + 1.00 s"
    with pytest.raises(ValueError, match="margin"):
        Target("<=", value=1.0, plus=1.0)


@pytest.mark.timeout(120)
def test_a_scaling_round_counts_every_workflow_and_every_process(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    n = 5
    with open_point(
        nats_server.url, tmp_path / "logs", n, server_pid=nats_server.pid, bound_s=60
    ) as point:
        # Every service and the server were found, and idle before the round.
        assert set(point.idle_mib) == set(PROCESSES)
        result = point.run()
    assert result.finished
    assert (result.ended, result.steps) == (n, n * WORKLOAD.steps)
    assert result.p50_ms <= result.p99_ms
    assert set(result.peak_mib) == set(PROCESSES)
    assert all(mib > 0 for mib in result.peak_mib.values())
    assert set(result.cpu_s) == set(PROCESSES)
    assert result.projections_lag_s is not None


@pytest.mark.timeout(240)
def test_a_leader_kill_is_measured_on_both_sides_and_the_node_comes_back(
    nats_cluster: EmbeddedCluster, tmp_path: Path
) -> None:
    url = nats_cluster.url
    settings = Settings(nats_url=url, prefix="fo", replicas=3, tenants="*")
    asyncio.run(provision_at(url, settings))
    with engine_platform(
        url, "fo", tmp_path / "logs", env={"JETAGENT_REPLICAS": "3"}, warm_up=1
    ) as platform:
        failover = Failover(nats_cluster, platform, in_flight=5, drain_s=60)
        kill = failover.kill()
    # The node killed led the workflows stream; the same kill was measured both ways.
    assert kill.node in {s.server_name for s in nats_cluster.servers}
    assert any(name.endswith("_WORKFLOWS") for name in kill.led.streams)
    assert kill.server_failover_s is not None
    assert kill.server_failover_s > 0
    assert kill.platform_stall_s is not None
    assert kill.platform_stall_s > 0
    assert kill.longest_gap_s >= kill.platform_stall_s
    assert kill.workflows > 0
    # Back: every node running, every replica current (the round waited for it).
    assert all(s.running for s in nats_cluster.servers)
    assert kill.current_after_s > 0
