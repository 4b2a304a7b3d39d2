"""Provisioning on one node: what it says it did, the replicas it plans, the changes it
refuses, and its answers when JetStream is off, silent or forbidden (real servers)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType

from jetagent.config import Settings
from jetagent.embedded import EmbeddedServer
from jetagent.errors import ConfigError
from jetagent.jetstream import (
    JetStreamNotEnabledError,
    JetStreamUnavailableError,
    NotPermittedError,
    StreamConfigError,
)
from jetagent.jetstream._placement import ClusterShape, plan_replicas
from jetagent.jetstream.provision import consumer_changes, provision
from tests.support.cli import arun_cli, cli_env

MISLEADING = "is JetStream enabled on the server?"


def _settings(url: str, unique: str, **extra: object) -> Settings:
    return Settings(nats_url=url, prefix=unique.lower()[:12], **extra)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def core_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A nats-server without JetStream."""
    with EmbeddedServer(tmp_path_factory.mktemp("core"), jetstream=False) as server:
        yield server


async def test_a_server_without_jetstream_is_said_to_be_one_at_once(
    core_nats: EmbeddedServer, unique: str
) -> None:
    nc = await nats.connect(core_nats.url)
    try:
        started = time.monotonic()
        with pytest.raises(JetStreamNotEnabledError) as raised:
            await provision(nc, _settings(core_nats.url, unique))
        # "no responders" comes back at once: no waiting for an election that is not one.
        assert time.monotonic() - started < 1.0
        assert "JetStream is not enabled on the NATS server" in str(raised.value)
        assert "-js" in str(raised.value)
    finally:
        await nc.close()


async def test_an_api_that_does_not_answer_is_waited_for_then_said_not_misleadingly(
    core_nats: EmbeddedServer, unique: str
) -> None:
    # Something subscribes to the JetStream API and never answers: what a client sees of
    # a cluster while its meta leader is elected (no reply, no "no responders").
    nc = await nats.connect(core_nats.url)
    silent = await nc.subscribe("$JS.API.>")
    lines: list[str] = []
    try:
        started = time.monotonic()
        with pytest.raises(JetStreamUnavailableError) as raised:
            await provision(
                nc,
                _settings(core_nats.url, unique, provision_wait_s=2.5),
                timeout=0.5,
                progress=lines.append,
            )
        waited = time.monotonic() - started
    finally:
        await silent.unsubscribe()
        await nc.close()
    message = str(raised.value)
    assert MISLEADING not in message
    assert not isinstance(raised.value, JetStreamNotEnabledError)
    assert "did not answer within 2.5 s" in message
    assert "JETAGENT_PROVISION_WAIT_S" in message
    # It kept trying up to its deadline, and said so while it waited.
    assert 2.4 <= waited < 4.0
    assert lines[0] == "waiting for the JetStream meta leader (election in progress)…"


async def test_the_cli_says_it_waits_then_gives_up_with_the_reason(
    core_nats: EmbeddedServer, unique: str
) -> None:
    nc = await nats.connect(core_nats.url)
    silent = await nc.subscribe("$JS.API.>")
    try:
        env = cli_env(core_nats.url, unique.lower()[:12], JETAGENT_PROVISION_WAIT_S="3")
        result = await arun_cli("provision", env=env)
    finally:
        await silent.unsubscribe()
        await nc.close()
    assert result.returncode == 2, result.stderr
    assert "waiting for the JetStream meta leader (election in progress)…" in result.stderr
    assert "did not answer within 3 s" in result.stderr
    assert MISLEADING not in result.stderr
    assert "Traceback" not in result.stderr


async def test_a_forbidden_api_subject_is_said_not_waited_out(tmp_path: Path, unique: str) -> None:
    accounts = """
accounts {
  APP {
    jetstream: enabled
    users: [
      {user: "svc", password: "svc-pw",
       permissions: {publish: {allow: ["$JS.API.INFO"]}, subscribe: {allow: ["_INBOX.>"]}}}
      {user: "deaf", password: "deaf-pw",
       permissions: {publish: {allow: [">"]}, subscribe: {deny: ["_INBOX.>"]}}}
    ]
  }
}
"""
    with EmbeddedServer(tmp_path / "nats", extra_config=accounts) as server:
        nc = await nats.connect(server.url, user="svc", password="svc-pw")
        try:
            started = time.monotonic()
            with pytest.raises(NotPermittedError) as raised:
                await provision(nc, _settings(server.url, unique), timeout=0.5)
            # One try's timeout, not the whole JETAGENT_PROVISION_WAIT_S (60 s).
            assert time.monotonic() - started < 3.0
        finally:
            await nc.close()
        # A user who may not hear replies: every request would time out.
        nc = await nats.connect(server.url, user="deaf", password="deaf-pw")
        try:
            with pytest.raises(NotPermittedError) as deaf:
                await provision(nc, _settings(server.url, unique), timeout=0.5)
        finally:
            await nc.close()
    assert "may not publish to $JS.API.STREAM.INFO." in str(raised.value)
    assert "may not subscribe to its reply inbox" in str(deaf.value)


async def test_one_node_gets_r1_and_each_item_is_said_once_then_found_in_place(
    nats_url: str, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(nats_url, unique)
    assert settings.replicas == "auto"
    nc = await nats.connect(nats_url)
    try:
        with caplog.at_level(logging.INFO, logger="jetagent.provision"):
            first = await provision(nc, settings)
        second = await provision(nc, settings)
    finally:
        await nc.close()
    names = settings.names
    # 6 streams, 6 KV buckets, 1 object store, 3 consumers; each said in one INFO line.
    assert len(first) == 16
    assert {a.action for a in first} == {"created"}
    assert {a.replicas for a in first} == {1}
    assert {a.action for a in second} == {"in place"}
    lines = [r.getMessage() for r in caplog.records if r.name == "jetagent.provision"]
    assert "provisioning under prefix" in lines[0]
    assert "R1 for new streams (auto: a single server)" in lines[0]
    for applied in first:
        assert sum(f"{applied.kind} {applied.name} R1: created" in line for line in lines) == 1
    assert f"stream {names.steps_stream} R1: created" in "\n".join(lines)
    assert "kv " + names.bucket("SESSIONS") + " R1: created" in "\n".join(lines)


async def test_more_replicas_than_one_node_holds_are_refused_before_anything_is_made(
    nats_url: str, unique: str
) -> None:
    settings = _settings(nats_url, unique, replicas=3)
    nc = await nats.connect(nats_url)
    try:
        with pytest.raises(ConfigError) as raised:
            await provision(nc, settings)
        names = [si.config.name for si in await nc.jetstream().streams_info()]
    finally:
        await nc.close()
    assert "JETAGENT_REPLICAS=3 needs a JetStream cluster" in str(raised.value)
    assert "runs alone" in str(raised.value)
    assert settings.names.steps_stream not in names


async def test_a_stream_of_another_storage_type_is_refused_with_the_reason(
    nats_url: str, unique: str
) -> None:
    settings = _settings(nats_url, unique)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        dlq = settings.names.dlq_stream
        await js.add_stream(
            name=dlq, subjects=[f"{settings.prefix}.dlq.>"], storage=StorageType.MEMORY
        )
        with pytest.raises(StreamConfigError) as raised:
            await provision(nc, settings, change_existing=True)
        kept = await js.stream_info(dlq)
    finally:
        await nc.close()
    message = str(raised.value)
    assert f"stream {dlq!r} exists but cannot be used" in message
    assert "storage is 'memory'" in message
    assert "cannot change a stream's storage in place" in message
    assert str(getattr(kept.config.storage, "value", kept.config.storage)) == "memory"


async def test_the_provision_command_prints_a_table_and_json(nats_url: str, unique: str) -> None:
    env = cli_env(nats_url, unique.lower()[:12])
    created = await arun_cli("provision", env=env)
    assert created.returncode == 0, created.stderr
    out = created.stdout
    assert "R1 (auto: a single server)" in out
    assert out.count("created") == 16
    settings = _settings(nats_url, unique)
    for line in out.splitlines():
        if settings.names.steps_stream in line:
            assert line.split()[:4] == [settings.names.steps_stream, "stream", "R1", "created"]
    again = await arun_cli("provision", "--json", env=env)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["replicas"] == 1
    assert report["reason"] == "auto: a single server"
    kinds = [row["kind"] for row in report["applied"]]
    assert kinds.count("stream") == 6
    assert kinds.count("kv") == 6
    assert kinds.count("object store") == 1
    assert kinds.count("consumer") == 3
    assert {row["action"] for row in report["applied"]} == {"in place"}


@pytest.mark.parametrize("value", ["0", "6", "three", "2.5", "", "-1"])
def test_a_bad_replicas_setting_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="must be 'auto' or a number from 1 to 5"):
        Settings(replicas=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "wanted"), [("auto", "auto"), (" AUTO ", "auto"), ("3", 3)])
def test_a_replicas_setting(value: str, wanted: object) -> None:
    assert Settings(replicas=value).replicas == wanted  # type: ignore[arg-type]


async def test_a_bad_replicas_setting_is_one_clear_line_from_the_cli(nats_url: str) -> None:
    result = await arun_cli("provision", env=cli_env(nats_url, JETAGENT_REPLICAS="three"))
    assert result.returncode == 2
    assert "must be 'auto' or a number from 1 to 5, not 'three'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_replica_plan() -> None:
    alone = ClusterShape(cluster=None, servers=1)
    three = ClusterShape(cluster="c", servers=3)
    assert plan_replicas("auto", alone).replicas == 1
    assert plan_replicas("auto", three).replicas == 3
    assert plan_replicas("auto", ClusterShape(cluster="c", servers=5)).replicas == 3
    # A cluster that does not advertise its servers is still a cluster.
    assert plan_replicas("auto", ClusterShape(cluster="c", servers=None)).replicas == 3
    two = plan_replicas("auto", ClusterShape(cluster="c", servers=2))
    assert two.replicas == 1
    assert "fewer than the 3 R3 needs" in two.reason
    assert plan_replicas(1, three).replicas == 1
    assert not plan_replicas(1, three).auto
    assert plan_replicas(5, three).replicas == 5  # the server says whether it can place it
    with pytest.raises(ConfigError, match="runs alone"):
        plan_replicas(2, alone)


def test_consumer_changes_see_what_the_server_normalised() -> None:
    wanted = {
        "durable_name": "cap-x",
        "ack_wait": 30_000_000_000,
        "filter_subjects": ["ja.wf.*.StepScheduled.x"],
        "num_replicas": 0,
    }
    # nats-server keeps a single filter as filter_subject and reports num_replicas 0.
    actual = {
        "durable_name": "cap-x",
        "ack_wait": 30_000_000_000,
        "filter_subject": "ja.wf.*.StepScheduled.x",
        "num_replicas": 0,
        "replay_policy": "instant",
    }
    assert consumer_changes(actual, wanted) == []
    assert consumer_changes({**actual, "num_replicas": 3}, wanted) == ["num_replicas 3 → 0"]
    assert consumer_changes({**actual, "backoff": [1]}, wanted) == ["backoff removed"]
    assert consumer_changes({**actual, "filter_subject": "other"}, wanted) == ["filter subjects"]
