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

import os
import sys
from typing import Annotated, Literal

import typer

from jetagent.cli import _list, _ops, _projections, _replay, _requests, _serve, _status
from jetagent.cli._base import fail, load_settings
from jetagent.cli._examples import TOP_LEVEL, add_examples, epilog
from jetagent.errors import JetagentError

__all__ = ["app", "main"]

HELP = (
    "AI agents as event-sourced microservices on NATS JetStream.\n\n"
    "Every command but up, demo and schemas talks to the NATS server at NATS_URL; when it "
    "is not set, to the server of a running `jetagent up`, which announces its URL in "
    "<data folder>/nats.url (default .jetagent/nats.url) and in the per-user file "
    "~/.local/state/jetagent/up.json ($XDG_STATE_HOME)."
)

app = typer.Typer(
    name="jetagent",
    help=HELP,
    epilog=epilog(TOP_LEVEL),
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
app.add_typer(_list.commands)  # list
app.add_typer(_ops.commands)  # inspect, tail, dlq
app.add_typer(_replay.commands)  # replay
app.add_typer(_status.commands)  # status
app.add_typer(_projections.commands, name="projections")
add_examples(app)


def main() -> None:
    """The ``jetagent`` executable (and ``python -m jetagent.cli``)."""
    if sys.argv[1:] in ([], ["--help"]):
        app.info.help = f"{HELP}\n\n{_now()}"
    try:
        app()
    except JetagentError as exc:  # raised before a command's event loop (settings, args)
        fail(str(exc))
        sys.exit(2)


def _now() -> str:
    """Which server the commands would use now (for the top-level help)."""
    from rich.markup import escape

    from jetagent.discovery import discover, user_file

    try:
        settings = load_settings()
    except JetagentError as exc:
        return f"Now: {escape(str(exc))}"
    if settings.nats_url:
        return f"Now: NATS_URL={escape(settings.nats_url)}"
    running = discover(settings.data_dir)
    if running is None:
        return (
            f"Now: NATS_URL is not set and no `jetagent up` is running "
            f"({escape(str(user_file()))} names none)."
        )
    return (
        f"Now: NATS_URL is not set; commands use {escape(running.url)}, the `jetagent up` "
        f"of {escape(str(running.data_dir))} (pid {running.pid})."
    )
