"""Reads that decide are consistent: a follower that answers stale costs no input.

On an R3 stream any replica answers a direct get, and one that is behind answers with
what it has (nats-server 2.15 ignores ``min_last_seq``, docs/ARCHITECTURE.md §5.8). The
cluster here has such a follower for good: node 3 applies replicated writes 250 ms late
(tests/support/lagging_cluster.py) while it answers direct gets at once. Two orchestrator
replicas share the workflows, so one often folds the result of a step the other
scheduled, reading that step back right after it was written.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest

from jetagent.config import Settings
from jetagent.dead_letter import DeadLetter
from jetagent.jetstream import DirectGetter, connect
from jetagent.orchestrator import Orchestrator
from tests.support.checks import assert_no_decision_recorded_twice, assert_one_result_per_step
from tests.support.cluster import lead_elsewhere, provision_patiently
from tests.support.lagging_cluster import LaggingCluster
from tests.support.platform import InProcessPlatform

pytestmark = pytest.mark.cluster

LAG_S = 0.4
WORKFLOWS = 30


async def _stale_replies(nc: object, stream: str, subject: str, tries: int = 40) -> int:
    """Direct gets, each 50 ms after an acknowledged write, that returned an older message
    (the probe's subject is a workflow nobody runs)."""
    js = nc.jetstream()  # type: ignore[attr-defined]
    reader = DirectGetter(nc, stream, timeout=5)  # type: ignore[arg-type]
    await reader.open()
    stale = 0
    try:
        for _ in range(tries):
            ack = await js.publish(subject, b"probe")
            await asyncio.sleep(0.05)
            record = await reader.last(subject)
            stale += record is None or record.seq < ack.seq
    finally:
        await reader.close()
    return stale


@pytest.mark.timeout(240)
async def test_a_follower_that_answers_stale_loses_no_step_result(
    tmp_path: Path, unique: str
) -> None:
    cluster = LaggingCluster(tmp_path / "nats", delay=LAG_S)
    await asyncio.to_thread(cluster.start)
    try:
        settings = Settings(
            nats_url=cluster.url,
            prefix=unique.lower()[:12],
            tenants="*",
            replicas=3,
            step_ack_wait_s=30.0,
        )
        names = settings.names
        nc = await connect(cluster.url, name="test-stale")
        await provision_patiently(nc, settings)
        # The lagging node follows; the leaders (who are never behind) are elsewhere.
        for stream in (names.workflows_stream, names.steps_stream, names.dlq_stream):
            await lead_elsewhere(nc, stream, cluster.lagging.server_name)
        assert cluster.system_routes_delayed >= 2
        # The lagging follower serves direct gets of the workflows stream, stale (a
        # follower joins the direct-get group when it is current after a leader change:
        # step the leader down again until it has).
        probe = f"{names.workflow_root}.probe-{unique}.Probe"
        for _ in range(5):
            if await _stale_replies(nc, names.workflows_stream, probe) > 0:
                break
            await lead_elsewhere(nc, names.workflows_stream, cluster.lagging.server_name, move=True)
        else:
            pytest.fail("the lagging follower never answered a direct get stale")

        platform = await InProcessPlatform(settings, orchestrators=2, workers=1).start()
        try:
            client = platform.client
            ids = {
                await client.submit(
                    instruction=f"What is {i} + {i}? Then multiply the result by 3",
                    tenant="acme",
                ): i
                for i in range(1, WORKFLOWS + 1)
            }
            deadline = time.monotonic() + 120
            stuck = []
            for wid, i in ids.items():
                try:
                    result = await client.result(wid, timeout=max(deadline - time.monotonic(), 1))
                except TimeoutError:
                    stuck.append(wid)
                    continue
                assert result.ok, result
                assert result.output.endswith(f"Final answer: {(2 * i) * 3}"), result.output
            # Nothing was set aside: a real result is never taken for an untrusted one.
            letters = DirectGetter(nc, names.dlq_stream, timeout=5)
            await letters.open()
            dead = [
                msgspec.json.decode(r.data, type=DeadLetter)
                for r in await letters.scan(names.all_dead_letters)
            ]
            await letters.close()
            assert not dead, [(d.kind, d.reason) for d in dead]
            assert not stuck, f"{len(stuck)} of {WORKFLOWS} workflows never ended"
            steps = await assert_one_result_per_step(client, settings, list(ids))
            assert steps == 5 * WORKFLOWS
            for wid in ids:
                await assert_no_decision_recorded_twice(client, settings, wid)
            # The orchestrators did meet replies that were behind, and read on.
            readers = [
                s.aggregates.reader for s in platform.services if isinstance(s, Orchestrator)
            ]
            retried = sum(r.retried for r in readers)
            from_leader = sum(r.from_leader for r in readers)
            print(
                f"\nstale replies asked again: {retried}; reads the leader answered: {from_leader}"
            )
            assert retried > 0
        finally:
            await platform.stop()
            await nc.close()
    finally:
        await asyncio.to_thread(cluster.stop)
