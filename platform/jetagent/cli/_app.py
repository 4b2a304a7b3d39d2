"""The ``jetagent`` command line, assembled from its groups of commands.

``up`` runs the whole platform locally; ``orchestrator`` and ``worker`` run one service
(as deployments do); ``submit`` and ``watch`` talk to it; ``provision`` and ``schemas``
prepare it; ``list``, ``inspect``, ``replay``, ``tail``, ``dlq`` and ``status`` operate
and debug it. Each
command owns one event loop (``asyncio.run``) and stops cleanly on Ctrl-C / SIGTERM
(``jetagent.cli._base``). Every group is a module of its own with its own ``Typer``;
they are added here in the order ``jetagent --help`` lists them.
"""

from __future__ import annotations

import sys

import typer

from jetagent.cli import _list, _ops, _projections, _replay, _requests, _serve, _status
from jetagent.cli._base import fail
from jetagent.errors import JetagentError

__all__ = ["app", "main"]

app = typer.Typer(
    name="jetagent",
    help="AI agents as event-sourced microservices on NATS JetStream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Without a name, a group's commands join the top level, in this order.
app.add_typer(_serve.commands)  # up, orchestrator, worker, gateway, provision
app.add_typer(_requests.commands)  # submit, watch, schemas, demo
app.add_typer(_list.commands)  # list
app.add_typer(_ops.commands)  # inspect, tail, dlq
app.add_typer(_replay.commands)  # replay
app.add_typer(_status.commands)  # status
app.add_typer(_projections.commands, name="projections")


def main() -> None:
    """The ``jetagent`` executable (and ``python -m jetagent.cli``)."""
    try:
        app()
    except JetagentError as exc:  # raised before a command's event loop (settings, args)
        fail(str(exc))
        sys.exit(2)
