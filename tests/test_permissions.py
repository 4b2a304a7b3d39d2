"""Each service's NATS credentials allow exactly the subjects it needs (docs/ARCHITECTURE.md §4).

A server runs with nats/accounts.conf; the platform runs under its per-service users
(an operator provisions with the admin user); a workflow completes with no permission
violation in the server's log, and each user is refused what belongs to another.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from jetagent.config import Settings
from jetagent.embedded import EmbeddedServer
from jetagent.jetstream import connect
from tests.support.platform import ROOT, service_processes

PASSWORDS = {
    "admin": "admin-pw",
    "client": "client-pw",
    "orchestrator": "orchestrator-pw",
    "worker-reasoning": "reasoning-pw",
    "worker-tools": "tools-pw",
    "worker-summarize": "summarize-pw",
    "worker-memory": "memory-pw",
    "projections": "projections-pw",
}


@pytest.fixture
def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedServer]:
    for user, password in PASSWORDS.items():
        env = user.upper().replace("-", "_")
        monkeypatch.setenv(f"JETAGENT_{env}_PASSWORD", password)
    accounts = (ROOT / "nats" / "accounts.conf").read_text()
    with EmbeddedServer(tmp_path / "nats", extra_config=accounts) as server:
        yield server


def _url(server: EmbeddedServer, user: str) -> str:
    return f"nats://{user}:{PASSWORDS[user]}@127.0.0.1:{server.port}"


async def _refused(url: str, subject: str) -> bool:
    """Whether publishing to ``subject`` is refused (the server reports a violation)."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(url, error_cb=on_error)
    try:
        await nc.publish(subject, b"{}")
        await nc.flush()
        for _ in range(50):
            if errors:
                break
            await asyncio.sleep(0.02)
    finally:
        await nc.close()
    return any("permissions violation" in str(e).lower() for e in errors)


async def test_services_run_with_exactly_their_permissions(
    secured: EmbeddedServer, tmp_path: Path
) -> None:
    settings = Settings(nats_url=_url(secured, "admin"), tenants="*")
    # An operator provisions; the services only check what exists.
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jetagent.cli", "provision"],
        cwd=ROOT,
        env={**os.environ, "NATS_URL": settings.nats_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    procs = service_processes(_url(secured, "orchestrator"), "ja", tmp_path)
    procs.start("orchestrator", "orchestrator")
    # One worker process per capability, each under its capability's own user.
    for capability in ("reasoning", "tools", "summarize", "memory"):
        procs.url = _url(secured, f"worker-{capability}")
        procs.start(capability, "worker", capability)
    procs.url = _url(secured, "projections")
    procs.env["JETAGENT_METRICS_PORT"] = "0"
    procs.start("projections", "projections", "run")
    from jetagent.client import Client

    client = await Client.connect(_url(secured, "client"), settings=settings)
    try:
        from jetagent.testing import eventually, tools_registered

        async def tools_known() -> bool:
            admin = await connect(settings.nats_url, name="check")
            try:
                return await tools_registered(admin.jetstream(), settings, "calculator")
            finally:
                await admin.close()

        await eventually(tools_known, timeout=30)
        wid = await client.submit(
            instruction='What is 6 * 7? Then call remember {"text": "the answer is 42"}',
            tenant="acme",
            output={"summarize": True},
            capability_limits={"deadline_s": 600},  # arms a durable timer on JA_TIMERS
        )
        result = await client.result(wid, timeout=60)
        assert result.ok, procs.log("orchestrator") + procs.log("reasoning") + procs.log("tools")

        # The client's user lists session views and resolves id prefixes (jetagent list,
        # the gateway's GET /v1/workflows, every command taking an id). The view is the
        # projection service's (its own user): listed once that service has written it
        # (client.session would fold a view the service has not written yet).
        from jetagent.listing import ViewFilter, list_views

        async def listed() -> list[str]:
            listing = await list_views(client.nc, client.names, ViewFilter(tenant="acme"), limit=10)
            return [v.workflow_id for v in listing.views if v.status.value == "finalized"]

        assert await eventually(listed, timeout=30) == [wid]
        assert await client.resolve(wid[:8]) == wid
    finally:
        await client.close()
        procs.stop_all()
    log = secured.log_file.read_text()
    violations = [line for line in log.splitlines() if "Violation" in line]
    assert not violations, "\n".join(violations[:10])

    # And each user is refused what is not its own.
    assert await _refused(_url(secured, "worker-tools"), "ja.wf.x.Started")  # orchestrator's
    assert await _refused(_url(secured, "client"), "ja.step.tools.x.1")  # only workers
    # A worker writes results for its own capability only (a forged reasoning answer from
    # the tools worker's user is refused by the server).
    assert await _refused(_url(secured, "worker-tools"), "ja.step.reasoning.x.1")
    assert await _refused(_url(secured, "worker-reasoning"), "ja.step.tools.x.1")
    assert await _refused(_url(secured, "worker-tools"), "ja.dlq.orchestrator")
    assert not await _refused(_url(secured, "worker-tools"), "ja.step.tools.x.1")
    assert not await _refused(_url(secured, "worker-memory"), "ja.step.memory.x.1")
    assert await _refused(_url(secured, "client"), "ja.wf.x.Finalized")
    assert await _refused(_url(secured, "projections"), "ja.request.acme")
    assert await _refused(_url(secured, "worker-reasoning"), "$JS.API.STREAM.DELETE.JA_WORKFLOWS")
    assert await _refused(_url(secured, "orchestrator"), "$JS.API.STREAM.PURGE.JA_STEPS")
    assert await _refused(_url(secured, "client"), "ja.timer.at.x.deadline")  # orchestrator's
    assert await _refused(_url(secured, "worker-tools"), "ja.timer.due.x.deadline")
    assert await _refused(_url(secured, "worker-tools"), "$JS.API.STREAM.PURGE.JA_TIMERS")
    assert not await _refused(_url(secured, "client"), "ja.request.acme")
