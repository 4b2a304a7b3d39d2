"""The nats-py client with a faster message-header parser.

Every stored record read back carries about ten headers (the expected-sequence checks
it was written with, plus those direct get adds), and nats-py's parser spends more than
half of a notification read in a per-character whitespace scan of each header name.
This parser keeps its semantics (UTF-8 values with replacement, ASCII names without
whitespace, lines without a colon skipped) in a few string operations per line; it
raised the notification read rate from ~36,000 to ~57,000 per second here (bench/).
"""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.aio.client import Client as NATS

from jetagent.jetstream._errors import JetStreamUnavailableError

__all__ = ["FastHeaderClient", "connect"]

log = logging.getLogger("jetagent.jetstream")


class FastHeaderClient(Client):
    """``nats.aio.client.Client`` whose header parsing is cheaper (same results)."""

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep:
                continue
            key = name.strip()
            if not key or not key.isascii() or " " in key or "\t" in key or "\ufffd" in key:
                continue
            out[key] = value.strip()
        return out


async def connect(
    url: str,
    *,
    name: str,
    creds: str | None = None,
    user: str | None = None,
    password: str | None = None,
    timeout: float = 2.0,
) -> NATS:
    """Connect to NATS, failing fast with a message a person can act on. ``creds`` is a
    credentials file; ``user`` and ``password`` (read from a file by the caller) log in
    to a server with user/password authorization."""

    connected = False

    async def on_error(exc: Exception) -> None:
        # Before the first connection the raised JetStreamUnavailableError says it all; a
        # warning per attempt would only repeat it.
        if connected:
            log.warning("NATS connection %s: %s", name, exc)

    try:
        # nats-py retries a first connection forever when reconnects are unlimited:
        # allow one retry per server to fail fast, then reconnect without limit.
        nc = FastHeaderClient()
        await nc.connect(
            servers=[u.strip() for u in url.split(",") if u.strip()],
            name=name,
            # nats-py annotates these as int but uses them as seconds of any kind.
            connect_timeout=timeout,  # type: ignore[arg-type]
            user_credentials=creds,
            user=user,
            password=password,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]
            error_cb=on_error,
        )
        nc.options["max_reconnect_attempts"] = -1
        connected = True
        return nc
    except Exception as exc:
        raise JetStreamUnavailableError(
            f"cannot connect to NATS at {url} ({type(exc).__name__}: {exc or 'no answer'}). "
            "Is nats-server running there? Start one with `jetagent up`, or point "
            "NATS_URL at a running server."
        ) from exc
