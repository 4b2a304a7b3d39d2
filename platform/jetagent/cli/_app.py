"""The ``jetagent`` command line, assembled from its groups of commands.

``up`` runs the whole platform locally; ``orchestrator`` and ``worker`` run one service
(as deployments do); ``submit`` and ``watch`` talk to it; ``provision`` and ``schemas``
prepare it; ``inspect``, ``replay``, ``tail`` and ``dlq`` operate and debug it. Each
command owns one event loop (``asyncio.run``) and stops cleanly on Ctrl-C / SIGTERM
(``jetagent.cli._base``). Every group is a module of its own with its own ``Typer``;
they are added here in the order ``jetagent --help`` lists them.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Literal

import typer

from jetagent.cli import _ops, _projections, _requests, _serve
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


@app.callback()
def _options(
    log_format: Annotated[
        Literal["text", "json"] | None,
        typer.Option(
            "--log-format",
            help="Services' log lines: text (default) or json, one object per line with "
            "the workflow, step, capability, tool and tenant ids (also JETAGENT_LOG_FORMAT). "
            "Before the command: jetagent --log-format json worker tools",
            show_default=False,
        ),
    ] = None,
) -> None:
    # An option of the whole command, so `up` passes it on to the services it starts: they
    # inherit the environment (README "Logs").
    if log_format is not None:
        os.environ["JETAGENT_LOG_FORMAT"] = log_format


# Without a name, a group's commands join the top level, in this order.
app.add_typer(_serve.commands)  # up, orchestrator, worker, gateway, provision
app.add_typer(_requests.commands)  # submit, watch, schemas, demo
app.add_typer(_ops.commands)  # inspect, replay, tail, dlq
app.add_typer(_projections.commands, name="projections")


def main() -> None:
    """The ``jetagent`` executable (and ``python -m jetagent.cli``)."""
    try:
        app()
    except JetagentError as exc:  # raised before a command's event loop (settings, args)
        fail(str(exc))
        sys.exit(2)
