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
import sys
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
    "run",
]

console = Console()
# soft_wrap: an error is one line however narrow the terminal (a wrapped line reads as two).
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one error line; return the ``typer.Exit`` to raise."""
    from rich.markup import escape

    err.print(f"[red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def load_settings() -> Settings:
    """The settings from the environment; ConfigError (one line) when they are invalid."""
    try:
        return Settings()
    except Exception as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def need_url(settings: Settings) -> str:
    """``NATS_URL``, checked; ConfigError saying how to get one when it is not set."""
    from jetagent._translate import check_nats_url

    if not settings.nats_url:
        raise ConfigError(
            "NATS_URL is not set: start the platform with `jetagent up` (it prints the URL) "
            "or point NATS_URL at your NATS server"
        )
    return check_nats_url(settings.nats_url)


def configure_logging(verbose: bool = False) -> None:
    """Log to stdout, as services do (INFO; DEBUG with ``--verbose``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    # One INFO line per provider call and per NATS reconnect attempt would bury the
    # services' own log; their warnings still show (and everything with --verbose).
    for noisy in ("nats", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def run(main: Callable[[asyncio.Event], Awaitable[int | None]], *, service: str = "cli") -> None:
    """Run ``main(stop)`` on a fresh loop; SIGINT/SIGTERM set ``stop``."""
    from jetagent.telemetry import setup_from_environment

    provider = setup_from_environment(service)

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
            provider.shutdown()  # flush spans still batched
    raise typer.Exit(code or 0)


_SERVICES = frozenset({"up", "orchestrator", "worker", "projections"})
"""Commands that serve, and run on uvloop for throughput; the others are short-lived or
wait for a person, gain nothing from it, and keep asyncio's own loop."""


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
