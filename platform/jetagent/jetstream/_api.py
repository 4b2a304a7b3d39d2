"""One JetStream API request that rides leader elections (docs/ARCHITECTURE.md §5, fact 12).

nats-server answers a JetStream API request from the meta leader, or from the leader of
the stream or consumer it names. While that leader is being elected (4-9 s after a
crash) the request gets no answer at all: every server subscribes to ``$JS.API.>``, so no
"no responders" comes back, and the request ends in a timeout. A server without JetStream
has no such subscriber, and "no responders" comes back at once. Hence:

- a timeout is retried in short tries under one deadline (:class:`ApiDeadline`), with
  progress ("waiting for the JetStream meta leader (election in progress)…");
- "no responders" means JetStream is off: :class:`JetStreamNotEnabledError`, at once;
- a reply saying the cluster has no meta leader (10008) is retried like a timeout;
- a request the server refused for the user's permissions would also end in a timeout:
  the server's ``Permissions Violation`` is recognised and said instead
  (:class:`NotPermittedError`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from jetagent.jetstream._errors import (
    JetStreamNotEnabledError,
    JetStreamUnavailableError,
    NotPermittedError,
)
from jetagent.jetstream.headers import ErrorCode

__all__ = ["ApiDeadline", "ApiError", "ApiReply", "api_request"]

log = logging.getLogger("jetagent.jetstream")

META_LEADER = "the JetStream meta leader"
"""What a request that only the meta leader answers waits for (creating, listing)."""

_PROGRESS_EVERY_S = 5.0

NOT_ENABLED = (
    "JetStream is not enabled on the NATS server: nothing answers the JetStream API "
    "($JS.API). Run nats-server with JetStream (`-js`, or a `jetstream {}` block in its "
    "configuration; `jetagent up` runs one), or give the account this user logs in to "
    "JetStream (`jetstream: enabled`)"
)


class ApiError(msgspec.Struct):
    """The ``error`` of a JetStream API reply."""

    code: int = 0
    err_code: int = 0
    description: str = ""


class ApiReply(msgspec.Struct):
    """A JetStream API reply: what every reply type has (an ``error``, or none)."""

    error: ApiError | None = None


_Reply = TypeVar("_Reply", bound=ApiReply)


class ApiDeadline:
    """How long a series of JetStream API requests may keep trying while leaders are
    elected, how long one try waits, and where progress goes.

    One deadline serves every request of a task (all of provisioning), so the whole task
    waits at most ``wait_s``. ``progress`` receives one line when a wait begins and one
    every 5 s while it lasts (default: a warning in the log). ``setting`` names what
    sets ``wait_s``, for the message that ends a wait too long.
    """

    def __init__(
        self,
        wait_s: float,
        *,
        per_try_s: float = 2.0,
        progress: Callable[[str], None] | None = None,
        setting: str | None = None,
    ) -> None:
        self.wait_s = wait_s
        self.per_try_s = per_try_s
        self.progress = progress or log.warning
        self.setting = setting
        self._started = time.monotonic()
        self._end = self._started + wait_s
        self._said: dict[str, float] = {}

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once past it)."""
        return self._end - time.monotonic()

    def try_timeout(self) -> float:
        """How long the next try may wait for its answer."""
        return max(0.05, min(self.per_try_s, self.remaining()))

    def waiting(self, what: str, why: str = "election in progress") -> None:
        """Say that the task is waiting for ``what``: at once, then every 5 s."""
        now = time.monotonic()
        last = self._said.get(what)
        if last is None:
            self.progress(f"waiting for {what} ({why})…")
        elif now - last >= _PROGRESS_EVERY_S:
            self.progress(
                f"still waiting for {what} ({now - self._started:.0f} s so far, "
                f"at most {self.wait_s:g} s)…"
            )
        else:
            return
        self._said[what] = now

    def gave_up(self, what: str, subject: str) -> JetStreamUnavailableError:
        """The error that ends a wait past the deadline."""
        how = f" ({self.setting} sets how long to wait)" if self.setting else ""
        return JetStreamUnavailableError(
            f"{what} did not answer within {self.wait_s:g} s ({subject}): "
            "the cluster may still be electing leaders, or fewer than a majority of its "
            f"servers are running{how}"
        )


def _denied(nc: NATS, subject: str) -> NotPermittedError | None:
    # nats-py reports a Permissions Violation only to the error callback and as
    # last_error (lower-cased); the request itself just times out.
    text = str(nc.last_error or "")
    if "permissions violation" not in text:
        return None
    refused = text.removeprefix("nats: ")
    if subject.lower() in text:
        return NotPermittedError(
            f"the NATS user may not publish to {subject} (the server refused it: {refused}); "
            "grant it in the server's permissions (nats/accounts.conf)"
        )
    if "subscription" in text and "_inbox." in text:
        return NotPermittedError(
            f"the NATS user may not subscribe to its reply inbox, so no JetStream API reply "
            f"can reach it (the server refused it: {refused}); allow it to subscribe to "
            "_INBOX.> in the server's permissions (nats/accounts.conf)"
        )
    return None


async def api_request(
    nc: NATS,
    subject: str,
    body: bytes,
    reply: type[_Reply],
    *,
    deadline: ApiDeadline,
    waiting_for: str = META_LEADER,
) -> _Reply:
    """Send one JetStream API request and decode its reply as ``reply``, riding leader
    elections until ``deadline``; ``waiting_for`` names the leader that answers it.

    Returns the reply, with its ``error`` when the API refused the request (other than
    "no meta leader"). Raises :class:`JetStreamNotEnabledError` when nothing serves the
    JetStream API, :class:`NotPermittedError` when the user may not send it, and
    :class:`JetStreamUnavailableError` when no answer came before the deadline or the
    connection is gone.
    """
    while True:
        try:
            msg = await nc.request(subject, body, timeout=deadline.try_timeout())
        except NoRespondersError as exc:
            raise JetStreamNotEnabledError(NOT_ENABLED) from exc
        except (TimeoutError, NatsTimeoutError) as exc:
            denied = _denied(nc, subject)
            if denied is not None:
                raise denied from exc
            if deadline.remaining() <= 0:
                raise deadline.gave_up(waiting_for, subject) from exc
            if nc.is_reconnecting:
                deadline.waiting("the connection to NATS", "reconnecting")
            else:
                deadline.waiting(waiting_for)
            continue
        except NatsError as exc:
            raise JetStreamUnavailableError(
                f"the JetStream API request {subject} failed "
                f"({type(exc).__name__}: {exc or 'no detail'})"
            ) from exc
        try:
            answer = msgspec.json.decode(msg.data, type=reply)
        except msgspec.DecodeError as exc:
            raise JetStreamUnavailableError(
                f"unreadable reply to the JetStream API request {subject}: {exc}"
            ) from exc
        error = answer.error
        if error is not None and error.err_code == ErrorCode.CLUSTER_NOT_AVAILABLE:
            if deadline.remaining() <= 0:
                raise deadline.gave_up(META_LEADER, subject)
            deadline.waiting(META_LEADER)
            await asyncio.sleep(min(0.25, max(deadline.remaining(), 0.0)))
            continue
        if error is not None and error.err_code == ErrorCode.NOT_ENABLED_FOR_ACCOUNT:
            raise JetStreamNotEnabledError(NOT_ENABLED)
        return answer
