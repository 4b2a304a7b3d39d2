"""Poison messages on the streams the projections read: skipped, recorded, never a crash.

Anyone allowed to publish on ``ja.wf.>`` or ``ja.step.>`` can store a message that is not
a valid event. The projection service (and its rebuild) skips each such message, counts
it in ``jetagent_projection_poison_messages_total``, writes one dead letter with the reason
(``jetagent dlq`` lists it) and goes on serving.
"""

from __future__ import annotations

import asyncio
import urllib.request
from datetime import UTC, datetime

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from jetagent.config import Settings
from jetagent.embedded import free_port
from jetagent.events import StepResult, encode
from jetagent.jetstream import connect
from jetagent.testing import eventually
from projections.service import ProjectionService
from tests.support.cli import arun_cli, cli_env
from tests.support.platform import InProcessPlatform


def _poison(settings: Settings) -> list[tuple[str, bytes]]:
    prefix = settings.names.prefix
    now = datetime.now(UTC)
    star = StepResult(
        workflow_id="*",
        step_id="s1",
        capability="tools",
        tenant="acme",
        ok=True,
        started_at=now,
        finished_at=now,
    )
    return [
        (f"{prefix}.wf.poison-empty.Started", b"[]"),  # issue 9, item 2
        (f"{prefix}.step.poison-star.s1", encode(star)),  # issue 9, item 3
        (f"{prefix}.wf.poison-bytes.Started", b"\xff\x00garbage"),
        (f"{prefix}.wf.poison-deep.Started", b"[" * 5000 + b"]" * 5000),
    ]


async def _scrape(port: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def test_poison_messages_are_skipped_counted_and_dead_lettered(settings: Settings) -> None:
    settings = settings.model_copy(update={"metrics_port": free_port()})
    names = settings.names
    platform = await InProcessPlatform(settings).start()
    nc = await connect(settings.nats_url, name="test-poison")
    js = nc.jetstream()
    stop = asyncio.Event()
    live = ProjectionService(nc, settings)
    task = asyncio.create_task(live.run(stop))
    try:
        # The poison goes in first: everything after it must still be projected.
        poison = _poison(settings)
        for subject, data in poison:
            await js.publish(subject, data)
        workflow_id = await platform.client.submit(instruction="What is 6 * 7?", tenant="acme")
        await platform.client.result(workflow_id, timeout=30)

        async def projected() -> bool:
            assert not task.done(), task.exception()
            view = await platform.client.session(workflow_id)
            return view.status.value == "finalized"

        await eventually(projected, timeout=30)

        # Counted: one poison message per bad message, by stream.
        async def counted() -> dict[str, float]:
            assert not task.done(), task.exception()
            samples = await _scrape(settings.metrics_port)
            return {
                key: value
                for key, value in samples.items()
                if key.startswith("jetagent_projection_poison_messages_total")
            }

        expected = {
            f"jetagent_projection_poison_messages_total{{stream={names.workflows_stream}}}": 3.0,
            f"jetagent_projection_poison_messages_total{{stream={names.steps_stream}}}": 1.0,
            # Known label sets are shown from the start, at 0.
            f"jetagent_projection_poison_messages_total{{stream={names.dlq_stream}}}": 0.0,
        }

        async def all_counted() -> bool:
            return await counted() == expected

        await eventually(all_counted, timeout=30)

        # Dead-lettered, with the reason; `jetagent dlq` lists them.
        async def dead_lettered() -> bool:
            info = await js.stream_info(names.dlq_stream)
            return (info.state.subjects or {}).get(names.dlq("projections"), 0) >= 4 or (
                info.state.messages >= 4
            )

        await eventually(dead_lettered, timeout=30)
        listed = await arun_cli(
            "dlq", "--limit", "50", env=cli_env(settings.nats_url, settings.prefix)
        )
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.count(names.dlq("projections")) == len(poison), listed.stdout
        assert "poison-empty" in listed.stdout
        assert "non-empty array" in listed.stdout  # the reason, as the decoder says it
        assert "poison-star" in listed.stdout
        assert "workflow id '*' is not a valid id" in listed.stdout
    finally:
        stop.set()
        await task
    live_totals = live.metrics.totals()
    dlq_before = (await js.stream_info(names.dlq_stream)).state.messages

    # A rebuild survives the same messages, reaches the same totals, and does not
    # dead-letter them a second time.
    rebuilt = ProjectionService(nc, settings)
    await rebuilt.rebuild()
    assert rebuilt.metrics.totals() == live_totals
    assert rebuilt.metrics.poison == {names.workflows_stream: 3, names.steps_stream: 1}
    assert (await js.stream_info(names.dlq_stream)).state.messages == dlq_before
    await nc.close()
    await platform.stop()


async def test_rebuild_of_a_poisoned_stream_as_the_installed_cli(settings: Settings) -> None:
    """``jetagent projections rebuild``, run as a user runs it (issue 9, items 1 and 2)."""
    nc = await connect(settings.nats_url, name="test-poison-cli")
    env = cli_env(settings.nats_url, settings.prefix)
    try:
        provisioned = await arun_cli("provision", env=env)
        assert provisioned.returncode == 0, provisioned.stderr
        for subject, data in _poison(settings):
            await nc.jetstream().publish(subject, data)
        rebuilt = await arun_cli("projections", "rebuild", env=env)
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        assert "Traceback" not in rebuilt.stderr
        assert "rebuilt 0 session views" in rebuilt.stdout
        assert "skipped 4 poison messages" in rebuilt.stdout
    finally:
        await nc.close()


_ = msgspec


async def test_replay_skips_and_reports_poison_under_a_workflow(engine: InProcessPlatform) -> None:
    """`jetagent replay` of a history with garbage stored under its subjects."""
    settings = engine.settings
    workflow_id = await engine.client.submit(instruction="What is 6 * 7?", tenant="acme")
    await engine.client.result(workflow_id, timeout=30)
    events = await engine.client.events(workflow_id)
    for data in (b"\xff garbage", b"[]", b"null"):
        await engine.client.js.publish(f"{settings.names.prefix}.wf.{workflow_id}.Garbage", data)
    await engine.client.js.publish(f"{settings.names.prefix}.step.{workflow_id}.s9", b"{}")
    # The client reads past them: the same events, the same view.
    assert await engine.client.events(workflow_id) == events
    assert (await engine.client.fold_session(workflow_id)).status.value == "finalized"
    env = cli_env(settings.nats_url, settings.prefix)
    for command in (["watch", workflow_id], ["inspect", workflow_id]):
        shown = await arun_cli(*command, env=env)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "finalized" in shown.stdout
    replayed = await arun_cli("replay", workflow_id, "--verify", env=env)
    output = replayed.stdout + replayed.stderr
    assert "Traceback" not in output, output
    assert replayed.returncode == 0, output  # the workflow's own events still verify
    assert "finalized" in replayed.stdout
    # All three are listed as not events.
    assert replayed.stdout.count("skipped (not an event)") == 3, output
