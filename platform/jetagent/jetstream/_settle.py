"""Acks, naks and terms that the server confirms, sent again until it has.

nats-py's ``msg.ack()``, ``nak()`` and ``term()`` are plain publishes: one sent while
the consumer elects a new leader (or on a connection that just died) is lost without
a sign. A lost nak makes the step wait the whole ack wait instead of its delay; a lost
ack redelivers work that was done; a lost term redelivers poison (docs/ARCHITECTURE.md
§5.15). nats-server answers any of them sent with a reply subject, with an empty
message once it has taken it; while the consumer has no leader nobody listens, and the
answer is a ``503`` no-responders status at once.

A :class:`Settler` sends each with a reply subject on one inbox of its own and returns
at once: the handler's slot is free, the hot path costs one publish and one small
reply. Unanswered ones are sent again by one sweeper task — after a ``503`` in a tenth
of a second, after silence in a second — until the server confirms them or
``deadline_s`` passes (then the consumer's ack wait is the last resort, and a warning
says so). A delayed nak counts its delay from the moment the server took it.

Acks go by stream sequence, not by delivery: a nak sent again after its confirmation
was lost (the server had taken it) could reach the message's *next* delivery. A delayed
nak sent again a second later only restarts its delay, as the next delivery is not due
yet; a nak without delay is sent again only after a ``503``, which proves it was not
taken.
:meth:`Settler.close` waits, within a grace period, for what is still unconfirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from jetagent.jetstream.headers import Header

__all__ = ["Settler"]

log = logging.getLogger("jetagent.jetstream")

_ACK = b"+ACK"
_TERM = b"+TERM"
_SWEEP_S = 0.1
_SILENT_S = 1.0
"""How long a settle waits for its confirmation before it is sent again."""
_NOT_READY_S = 0.1
"""Pause after a 503 (the consumer has no leader) before it is sent again."""


@dataclass(slots=True)
class _Pending:
    reply: str
    body: bytes
    what: str
    first: float
    next_try: float
    again_if_silent: bool
    tries: int = 1


class Settler:
    """Confirmed, retried acks, naks and terms of JetStream messages on one connection."""

    def __init__(self, nc: NATS, *, deadline_s: float = 60.0) -> None:
        self._nc = nc
        self._deadline_s = deadline_s
        self._prefix = ""
        self._sub: Subscription | None = None
        self._pending: dict[str, _Pending] = {}
        self._settled = asyncio.Event()
        """Set whenever nothing is pending."""
        self._ids = itertools.count(1)
        self._sweeper: asyncio.Task[None] | None = None
        self.confirmed = 0
        """Settles the server confirmed."""
        self.resent = 0
        """Settles sent more than once (unanswered, or no consumer leader)."""
        self.abandoned = 0
        """Settles never confirmed within the deadline."""

    async def start(self) -> None:
        """Open the inbox and start the sweeper (idempotent)."""
        if self._sub is None:
            self._prefix = self._nc.new_inbox() + "."
            self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep(), name="jetagent-settler"
            )

    @property
    def unconfirmed(self) -> int:
        """Settles sent and not yet confirmed."""
        return len(self._pending)

    async def ack(self, msg: Msg) -> None:
        """Acknowledge ``msg``: done, never to be delivered again."""
        await self._settle(msg, _ACK, "ack")

    async def nak(self, msg: Msg, delay: float | None = None) -> None:
        """Have ``msg`` delivered again, after ``delay`` seconds (from the server's
        confirmation) if given."""
        body = b"-NAK"
        if delay is not None and delay > 0:
            body += b" " + msgspec.json.encode({"delay": int(delay * 1e9)})
        await self._settle(msg, body, "nak", again_if_silent=delay is not None and delay >= 1)

    async def term(self, msg: Msg) -> None:
        """Never deliver ``msg`` again (it was answered otherwise: a dead letter)."""
        await self._settle(msg, _TERM, "term")

    async def _settle(
        self, msg: Msg, body: bytes, what: str, *, again_if_silent: bool = True
    ) -> None:
        if not msg.reply:
            return  # not a JetStream delivery: nothing to settle
        if self._sub is None:
            await self.start()
        now = time.monotonic()
        token = str(next(self._ids))
        self._pending[token] = _Pending(
            msg.reply, body, what, now, now + _SILENT_S, again_if_silent
        )
        self._settled.clear()
        await self._send(token, msg.reply, body)

    async def _send(self, token: str, reply: str, body: bytes) -> None:
        try:
            await self._nc.publish(reply, body, reply=self._prefix + token)
        except NatsError as exc:  # closed or draining: the sweeper tries again
            log.debug("settle %s not sent: %s", token, exc)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) :]
        pending = self._pending.get(token)
        if pending is None:
            return
        status = (msg.headers or {}).get(Header.STATUS)
        if status == "503":
            # No one listens on the ack subject: the consumer is electing a leader.
            pending.next_try = time.monotonic() + _NOT_READY_S
            pending.again_if_silent = True  # it was not taken: sending it again is safe
            return
        # Any other answer (the empty confirmation, or an error about a message the
        # server no longer holds) ends it: sending again could not change it.
        del self._pending[token]
        self.confirmed += 1
        if not self._pending:
            self._settled.set()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_S)
            if not self._pending:
                continue
            now = time.monotonic()
            for token, pending in list(self._pending.items()):
                if pending.next_try > now:
                    continue
                if not pending.again_if_silent:
                    # Sent once, unanswered: it may have been taken (see the docstring).
                    del self._pending[token]
                    continue
                if now - pending.first > self._deadline_s:
                    del self._pending[token]
                    self.abandoned += 1
                    log.warning(
                        "a %s was not confirmed within %.0f s (%d tries); the message "
                        "will come back after its consumer's ack wait",
                        pending.what,
                        self._deadline_s,
                        pending.tries,
                    )
                    continue
                pending.tries += 1
                pending.next_try = now + _SILENT_S
                self.resent += 1
                await self._send(token, pending.reply, pending.body)
            if not self._pending:
                self._settled.set()

    async def close(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` s for the unconfirmed settles, then stop."""
        if self._pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), timeout)
        if self._pending:
            log.warning("%d acks/naks/terms unconfirmed at shutdown", len(self._pending))
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()
