"""Dependency errors turned into jetagent's own, at the client's and the CLI's edge.

nats-py and pydantic raise their own types with messages written for their developers
("nats: no responders available for request", a pydantic error table). A user of the
client or the CLI gets one ``JetagentError`` (``jetagent.errors``) saying what is wrong
and what to do.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pydantic
from nats.errors import BadSubjectError, NoRespondersError
from nats.errors import Error as NatsError
from nats.js.errors import (
    BucketNotFoundError,
    InvalidKeyError,
    NoStreamResponseError,
    NotFoundError,
)

from jetagent.errors import (
    ConfigError,
    InvalidRequestError,
    JetagentError,
    NotProvisionedError,
    UnavailableError,
)

__all__ = ["check_nats_url", "invalid_request", "nats_errors", "translate"]

_SCHEMES = ("nats", "tls", "ws", "wss")
_HOST_PORT = re.compile(r"[A-Za-z0-9.\-\[\]:]+")


def check_nats_url(url: str) -> str:
    """``url`` if every comma-separated part is a NATS server URL, else ``ConfigError``."""
    for part in (p.strip() for p in url.split(",")):
        scheme = part.split("://", 1)[0] if "://" in part else ""
        ok = bool(part) and (
            (scheme in _SCHEMES and bool(urlsplit(part).hostname))
            or (not scheme and bool(_HOST_PORT.fullmatch(part)) and ":" in part)
        )
        if not ok:
            raise ConfigError(
                f"NATS_URL {part!r} is not a NATS URL: use nats://host:4222 "
                f"(schemes {', '.join(_SCHEMES)}; several servers comma-separated)"
            )
    return url


def invalid_request(exc: pydantic.ValidationError) -> InvalidRequestError:
    """A pydantic validation error as the reasons a person reads."""
    reasons = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "request"
        reasons.append(f"{where}: {error['msg']}")
    return InvalidRequestError(reasons)


def translate(exc: BaseException, *, prefix: str) -> JetagentError | None:
    """The jetagent error for a dependency's error, or None if it is not one."""
    if isinstance(exc, JetagentError):
        return exc
    if isinstance(exc, pydantic.ValidationError):
        return invalid_request(exc)
    if isinstance(exc, BadSubjectError | InvalidKeyError):
        # An id or name that cannot be a subject token or key: the caller's mistake.
        return InvalidRequestError([f"not a valid subject or key ({_text(exc)})"])
    unprovisioned = NotProvisionedError(
        f"the platform is not provisioned under the prefix {prefix!r} ({_text(exc)}): "
        "run `jetagent provision` (or `jetagent up`), or set JETAGENT_PREFIX"
    )
    if isinstance(exc, NoRespondersError | BucketNotFoundError | NoStreamResponseError):
        return unprovisioned
    if isinstance(exc, NotFoundError):  # a stream or consumer that does not exist
        return unprovisioned
    if isinstance(exc, NatsError | asyncio.TimeoutError | OSError):
        return UnavailableError(f"NATS did not answer ({_text(exc)}); is the server running?")
    return None


@contextmanager
def nats_errors(*, prefix: str) -> Iterator[None]:
    """Raise nats-py and pydantic errors of the block as ``JetagentError``."""
    try:
        yield
    except (NatsError, pydantic.ValidationError) as exc:
        translated = translate(exc, prefix=prefix)
        if translated is None:  # pragma: no cover - translate covers both families
            raise
        raise translated from exc


def _text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
