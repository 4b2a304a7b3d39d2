"""What every ``jetagent`` command shares: the consoles, settings, the NATS connection,
and the one way a command runs its event loop and ends.

An expected failure (no server, a bad URL, an unknown id, a platform not provisioned,
bad arguments) ends a command with one line on stderr and a non-zero status (README,
"Command line"): every ``JetagentError``, and nats-py / pydantic errors translated by
``jetagent._translate``. A traceback means a bug.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import typer
from rich.console import Console

from jetagent.config import Settings
from jetagent.errors import ConfigError, JetagentError

__all__ = [
    "configure_logging",
    "connect",
    "console",
    "err",
    "fail",
    "load_settings",
    "need_url",
    "note",
    "resolve_id",
    "run",
]

console = Console()
# soft_wrap: an error is one line however narrow the terminal (a wrapped line reads as two).
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line (a JSON log line when the service logs JSON, so the reason a
    service stopped reaches the log collector like its other lines); return the
    ``typer.Exit`` to raise."""
    from rich.markup import escape

    from jetagent import logs

    if logs.json_lines():
        logging.getLogger("jetagent.cli").error("error: %s", message)
        return typer.Exit(code)
    err.print(f"[red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def note(message: str) -> None:
    """A remark on stderr (stdout stays the command's output), folded to the width."""
    from rich.text import Text

    from jetagent.cli._layout import console_width, fold

    text = Text.assemble(("note: ", "yellow"), message)
    for line in fold(text, console_width(err)):
        err.print(line, highlight=False)


def load_settings() -> Settings:
    """The settings from the environment; ConfigError (one line naming each variable and
    what is wrong with its value) when they are invalid."""
    import pydantic

    try:
        return Settings()
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{_variable(error['loc'])}={error.get('input')!r}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
    except Exception as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable a settings field is read from."""
    from pydantic import AliasChoices

    name = str(loc[0]) if loc else "?"
    if name.isupper():
        return name  # already the variable (an alias)
    field = Settings.model_fields.get(name)
    alias = field.validation_alias if field is not None else None
    if isinstance(alias, AliasChoices) and alias.choices:
        return str(alias.choices[0])
    return f"JETAGENT_{name.upper()}"


def need_url(settings: Settings) -> str:
    """``NATS_URL``, else the URL a running ``jetagent up`` announced
    (``jetagent.discovery``), checked; ConfigError saying how to get one otherwise."""
    from jetagent._translate import check_nats_url
    from jetagent.discovery import discover, url_file

    if settings.nats_url:
        return check_nats_url(settings.nats_url)
    running = discover(settings.data_dir)
    if running is None:
        raise ConfigError(
            "NATS_URL is not set and no `jetagent up` is running (none announced itself in "
            f"{url_file(settings.data_dir)} or the per-user file): start the platform with "
            "`jetagent up`, or point NATS_URL at your NATS server"
        )
    return check_nats_url(running.url)


def configure_logging(verbose: bool = False) -> None:
    """Log to stdout, as services do (INFO; DEBUG with ``--verbose``), as text or JSON lines
    (``--log-format`` / ``JETAGENT_LOG_FORMAT``, :mod:`jetagent.logs`); the service's name
    on each line is set when the command runs (:func:`run`)."""
    from jetagent import logs

    logs.configure(log_format=load_settings().log_format, verbose=verbose, service="jetagent")


def run(
    main: Callable[[asyncio.Event], Awaitable[int | None]],
    *,
    service: str = "cli",
    name: str | None = None,
) -> None:
    """Run ``main(stop)`` on a fresh loop; SIGINT/SIGTERM set ``stop``.

    ``name`` names the process in traces and log lines (default ``jetagent-<service>`` for
    a service, ``jetagent-cli`` for a command; ``OTEL_SERVICE_NAME`` wins): a worker is
    named by its capabilities."""
    from jetagent import logs
    from jetagent.cli import _telemetry

    default_name = name or (f"jetagent-{service}" if service in _LONG_RUNNING else "jetagent-cli")
    if logs.configured():  # a service's log lines name it (the name the traces use)
        logs.set_service(_telemetry.service_name(default_name))
    provider = _telemetry.setup(default_name, short_lived=service not in _LONG_RUNNING)

    async def runner() -> int | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    from jetagent._translate import translate

    if service in _SERVICES:
        _fast_event_loop()
    try:
        code = asyncio.run(runner())
    except typer.Exit:
        raise
    except JetagentError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:
        # The last edge: a dependency's error no inner edge translated.
        translated = translate(exc, prefix=os.environ.get("JETAGENT_PREFIX", "ja"))
        if translated is None:
            raise  # a bug: the traceback is the useful output
        raise fail(str(translated)) from None
    finally:
        if provider is not None:
            # Flushes the spans still batched; bounded by the exporter's timeout (short
            # for commands like `submit`, jetagent.cli._telemetry), so an unreachable
            # collector costs at most that.
            provider.shutdown()
    raise typer.Exit(code or 0)


_SERVICES = frozenset({"up", "orchestrator", "worker", "projections"})
"""Commands that serve, and run on uvloop for throughput; the others are short-lived or
wait for a person, gain nothing from it, and keep asyncio's own loop."""
_LONG_RUNNING = _SERVICES | {"gateway"}
"""Commands that run until stopped: their span exports may take longer (a collector
that is slow for a while) than those of a short command, whose exit they would delay."""


def _fast_event_loop() -> None:
    """Services run on uvloop (libuv): asyncio's own loop is a quarter of a step's CPU.
    ``JETAGENT_UVLOOP=0`` keeps the standard loop."""
    if os.environ.get("JETAGENT_UVLOOP", "1") == "0":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def resolve_id(client: Any, text: str, *, missing_ok: bool = False) -> str:
    """The workflow id ``text`` names — the id, or a unique prefix of one — through
    ``Client.resolve`` (``jetagent.ids``); an unknown or ambiguous one ends the command
    with one line and status 1. ``missing_ok``: an unknown one is returned as it is (a
    workflow that may start later)."""
    from jetagent.errors import AmbiguousWorkflowIdError, WorkflowNotFoundError

    try:
        resolved: str = await client.resolve(text)
    except WorkflowNotFoundError as exc:
        if missing_ok:
            return text
        raise fail(str(exc), 1) from None
    except AmbiguousWorkflowIdError as exc:
        raise fail(str(exc), 1) from None
    return resolved


async def connect(settings: Settings, name: str) -> Any:
    """A NATS connection named ``name`` with the settings' URL and credentials."""
    from jetagent.jetstream import connect as connect_nats

    return await connect_nats(
        need_url(settings),
        name=name,
        creds=settings.nats_creds,
        user=settings.nats_user,
        password=settings.nats_password(),
        **settings.connection_options(),
    )
