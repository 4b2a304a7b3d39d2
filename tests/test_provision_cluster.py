"""Provisioning on a 3-node cluster: R3 by default, a deployment grown from R1 to R3 with
its data in place, a change the cluster cannot make refused, and a service started while
the JetStream meta leader is being re-elected (real servers, services as processes)."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from jetagent.config import Settings
from jetagent.embedded import EmbeddedCluster, EmbeddedServer, free_port
from jetagent.jetstream import StreamConfigError
from jetagent.jetstream._placement import ClusterShape, cluster_shape
from jetagent.jetstream.provision import provision
from jetagent.testing import ServiceProcesses, eventually, unique_name
from tests.support.cli import arun_cli, cli_env

pytestmark = pytest.mark.cluster

MISLEADING = "is JetStream enabled on the server?"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """One 3-node cluster for the tests that kill nothing (each under its own prefix)."""
    tags = [["az:1"], ["az:2"], ["az:3"]]
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster"), tags=tags) as running:
        yield running


def _prefix() -> str:
    return unique_name("p").lower()[:12]


async def _replicas(nc: NATS, settings: Settings) -> dict[str, tuple[int, int]]:
    """``{stream: (num_replicas, peers the cluster reports)}`` of the prefix's streams
    (its own, KV_ and OBJ_), and of its durable consumers."""
    js = nc.jetstream()
    upper = settings.prefix.upper()
    found: dict[str, tuple[int, int]] = {}
    for info in await js.streams_info():
        name = info.config.name or ""
        if not name.startswith((f"{upper}_", f"KV_{upper}_", f"OBJ_{upper}_")):
            continue
        peers = 1 + len((info.cluster.replicas if info.cluster else None) or [])
        found[name] = (info.config.num_replicas or 1, peers)
        for consumer in await js.consumers_info(name):
            cpeers = 1 + len((consumer.cluster.replicas if consumer.cluster else None) or [])
            found[f"{name}/{consumer.name}"] = (consumer.config.num_replicas or 0, cpeers)
    return found


async def test_a_cluster_gets_r3_everywhere_by_default(cluster: EmbeddedCluster) -> None:
    settings = Settings(nats_url=cluster.url, prefix=_prefix())
    nc = await nats.connect(cluster.urls)
    try:
        assert cluster_shape(nc) == ClusterShape(cluster="jetagent", servers=3)
        await provision(nc, settings)
        found = await _replicas(nc, settings)
    finally:
        await nc.close()
    # 6 streams, 6 KV buckets, 1 object store, 3 consumers.
    assert len(found) == 16, found
    streams = {name: r for name, r in found.items() if "/" not in name}
    consumers = {name: r for name, r in found.items() if "/" in name}
    assert streams == dict.fromkeys(streams, (3, 3)), streams
    # Consumers have no replicas of their own: they follow their stream's three.
    assert consumers == dict.fromkeys(consumers, (0, 3)), consumers


async def _all_current(nc: NATS, settings: Settings) -> bool:
    js = nc.jetstream()
    upper = settings.prefix.upper()
    for info in await js.streams_info():
        name = info.config.name or ""
        if not name.startswith((f"{upper}_", f"KV_{upper}_", f"OBJ_{upper}_")):
            continue
        peers = (info.cluster.replicas if info.cluster else None) or []
        if len(peers) != 2 or not all(p.current for p in peers):
            return False
    return True


async def test_a_deployment_grows_from_r1_to_r3_with_its_data(
    cluster: EmbeddedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = _prefix()
    small = Settings(nats_url=cluster.url, prefix=prefix, replicas=1)
    grown = Settings(nats_url=cluster.url, prefix=prefix)
    names = small.names
    nc = await nats.connect(cluster.urls)
    try:
        js = nc.jetstream()
        # A deployment made when it was R1, with data in its streams and buckets.
        await provision(nc, small)
        assert set((await _replicas(nc, small)).values()) <= {(1, 1), (0, 1)}
        for i in range(50):
            await js.publish(f"{prefix}.request.default", f'{{"n": {i}}}'.encode())
        sessions = await js.key_value(names.bucket("SESSIONS"))
        await sessions.put("wf-1", b'{"status": "finalized"}')
        payloads = await js.object_store(names.bucket("PAYLOADS"))
        await payloads.put("blob", b"x" * 300_000)

        # A service started with "auto" leaves existing streams alone and says so.
        with caplog.at_level(logging.INFO, logger="jetagent.provision"):
            seen = await provision(nc, grown, consumers=False)
        assert {(a.replicas, a.action) for a in seen} == {(1, "in place")}
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 13, warned
        assert all("(replicas 1 → 3 asked, not changed here)" in w for w in warned)
        assert all("`jetagent provision` applies it" in w for w in warned)

        # The operator grows it: every stream and bucket R1 → R3, once.
        env = cli_env(cluster.url, prefix)
        result = await arun_cli("provision", env=env)
        assert result.returncode == 0, result.stderr
        assert "R3 (auto: cluster 'jetagent' of 3 servers)" in result.stdout
        assert result.stdout.count("replicas 1 → 3") == 13, result.stdout
        await eventually(lambda: _all_current(nc, grown), timeout=30)
        found = await _replicas(nc, grown)
        assert {r for n, r in found.items() if "/" not in n} == {(3, 3)}, found
        assert {r for n, r in found.items() if "/" in n} == {(0, 3)}, found

        # Nothing was lost on the way.
        requests = await js.stream_info(names.requests_stream)
        assert requests.state.messages == 50
        assert (await sessions.get("wf-1")).value == b'{"status": "finalized"}'
        assert (await payloads.get("blob")).data == b"x" * 300_000

        # Again: nothing to do.
        again = await provision(nc, grown, change_existing=True)
        assert {(a.replicas, a.action) for a in again} == {(3, "in place")}

        # More replicas than the cluster has servers: refused, and nothing changes.
        five = grown.model_copy(update={"replicas": 5})
        with pytest.raises(StreamConfigError) as refused:
            await provision(nc, five, change_existing=True)
        error = str(refused.value)
        assert error.startswith(f"cannot change stream '{names.requests_stream}'"), error
        assert "(replicas 3 → 5)" in error
        assert "R5 needs 5 running servers" in error
        assert error.endswith("It is unchanged: R3.")
        assert {r for n, r in (await _replicas(nc, grown)).items() if "/" not in n} == {(3, 3)}
    finally:
        await nc.close()


async def _placed(nc: NATS, settings: Settings) -> dict[str, tuple[str | None, int, bool]]:
    """``{stream: (leader, peers, settled)}`` of the prefix's streams, from their leaders."""
    upper = settings.prefix.upper()
    found = {}
    for info in await nc.jetstream().streams_info():
        name = info.config.name or ""
        if not name.startswith((f"{upper}_", f"KV_{upper}_", f"OBJ_{upper}_")):
            continue
        reply = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)
        placed = json.loads(reply.data).get("cluster") or {}
        peers = 1 + len(placed.get("replicas") or [])
        # "desired": a move or a resize not settled yet.
        found[name] = (placed.get("leader"), peers, "desired" not in placed)
    return found


async def test_a_deployment_moves_to_the_servers_its_tags_name(cluster: EmbeddedCluster) -> None:
    on2 = Settings(nats_url=cluster.url, prefix=_prefix(), replicas=1, placement_tags="AZ:2")
    on3 = on2.model_copy(update={"placement_tags": "az:3"})
    nc = await nats.connect(cluster.urls)
    try:
        await provision(nc, on2, consumers=False)
        assert set((await _placed(nc, on2)).values()) == {("jetagent-n2", 1, True)}
        for i in range(20):
            await nc.jetstream().publish(f"{on2.prefix}.request.default", f"{i}".encode())

        # A service configured for az:3 leaves the deployment where it is, and says so.
        seen = await provision(nc, on3, consumers=False)
        assert {a.action for a in seen} == {"in place"}
        assert all(a.attention for a in seen)
        assert {a.detail for a in seen} == {
            "placement tags az:2 → tags az:3 asked, not changed here"
        }

        # The operator applies it: every stream moves, its messages with it.
        moved = await provision(nc, on3, consumers=False, change_existing=True)
        assert {(a.action, a.detail) for a in moved} == {
            ("updated", "placement tags az:2 → tags az:3")
        }

        async def settled() -> bool:
            return set((await _placed(nc, on3)).values()) == {("jetagent-n3", 1, True)}

        await eventually(settled, timeout=30, what="every stream on jetagent-n3")
        assert (await nc.jetstream().stream_info(on3.names.requests_stream)).state.messages == 20
        again = await provision(nc, on3, consumers=False, change_existing=True)
        assert {a.action for a in again} == {"in place"}

        # Tags no server has: refused with the reason, and nothing moves.
        nowhere = on3.model_copy(update={"placement_tags": "az:9"})
        with pytest.raises(StreamConfigError) as raised:
            await provision(nc, nowhere, consumers=False, change_existing=True)
        assert set((await _placed(nc, on3)).values()) == {("jetagent-n3", 1, True)}
    finally:
        await nc.close()
    message = str(raised.value)
    assert message.startswith(f"cannot change stream '{on3.names.requests_stream}'")
    assert "tags not matched ['az:9']" in message
    assert "R1 needs 1 running servers with JetStream and the placement (tags az:9)" in message
    assert message.endswith("It is unchanged: R1, placement tags az:3.")


def _meta_leader(servers: list[EmbeddedServer]) -> str | None:
    for server in servers:
        if not server.running:
            continue
        try:
            with urllib.request.urlopen(server.monitor_url + "/jsz", timeout=1) as reply:
                meta = json.loads(reply.read()).get("meta_cluster") or {}
        except OSError:
            continue
        if meta.get("leader"):
            return str(meta["leader"])
    return None


async def _lead_everything_from(nc: NATS, settings: Settings, node: str) -> bool:
    """Move the leaders of the prefix's streams to ``node``; True once all are there."""
    js = nc.jetstream()
    upper = settings.prefix.upper()
    moved = True
    for info in await js.streams_info():
        name = info.config.name or ""
        if not name.startswith((f"{upper}_", f"KV_{upper}_", f"OBJ_{upper}_")):
            continue
        if info.cluster is None or info.cluster.leader != node:
            moved = False
            body = json.dumps({"placement": {"preferred": node}}).encode()
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{name}", body, timeout=5)
    return moved


async def test_a_service_started_during_a_meta_leader_election_waits_then_serves(
    tmp_path: Path,
) -> None:
    with EmbeddedCluster(tmp_path / "cluster") as cluster:
        settings = Settings(nats_url=cluster.url, prefix=_prefix())
        nc = await nats.connect(cluster.urls)
        try:
            await provision(nc, settings)
            # The meta leader also leads every stream of the platform: its crash leaves
            # every provisioning request of a restarting service without an answer.
            leader = _meta_leader(cluster.servers)
            assert leader is not None
            await eventually(lambda: _lead_everything_from(nc, settings, leader), timeout=30)
        finally:
            await nc.close()
        victim = next(s for s in cluster.servers if s.server_name == leader)
        victim.kill()
        killed = time.monotonic()

        with ServiceProcesses(
            cluster.url,
            settings.prefix,
            tmp_path / "logs",
            env={"JETAGENT_METRICS_PORT": str(free_port())},
        ) as services:
            services.start("projections", "projections", "run")
            # In this process too, from the very moment of the crash: it must wait.
            lines: list[str] = []
            survivors = [s.url for s in cluster.servers if s.running]
            nc = await nats.connect(survivors)
            try:
                applied = await provision(nc, settings, consumers=False, progress=lines.append)
            finally:
                await nc.close()
            waited = time.monotonic() - killed
            assert {a.action for a in applied} == {"in place"}
            assert lines[0] == "waiting for the JetStream meta leader (election in progress)…"
            assert waited > 1.0, "no election to wait for: the test lost its point"

            async def serving() -> bool:
                return "projections serving" in services.log("projections")

            await eventually(
                serving, timeout=45, alive=services.check_alive, what="projections serving"
            )
            log = services.log("projections")
        print(f"election waited {waited:.1f} s in process; the service's log:\n{log}")
        assert MISLEADING not in log
        assert "provisioning: stream" in log
        # Servers the cluster advertised while one was down are fewer than three: "auto"
        # keeps the R3 streams as they are and has nothing to warn about.
        assert "not changed here" not in log
