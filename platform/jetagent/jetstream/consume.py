"""Continuous pull from a durable JetStream consumer, with bounded messages in flight.

nats-py's ``fetch(batch=n)`` waits for all ``n`` messages (or its timeout) once the
first has arrived, which puts a whole timeout of latency on a lightly loaded step. This
keeps standing pull requests instead (as the Go client's ``Consume`` does): the server
pushes each message the moment it is available, and new requests are issued as handlers
finish, so at most ``max_in_flight`` messages are ever held by this process.

Standing requests die with the server: after a restart (or a JetStream that is not yet
ready, which answers 503) the server no longer knows them. They are re-issued on the
client's reconnected callback, after a 503 (a pull sent while the consumer has no
leader), and after a ``409 Leadership Change`` (sent by a newly elected consumer leader
to the requests its predecessor held), not after missed idle heartbeats, so delivery
resumes as soon as the consumer has a leader again; heartbeat silence is the last
resort.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from jetagent.jetstream.headers import Header

__all__ = ["Puller", "on_reconnect"]

log = logging.getLogger("jetagent.consume")

_EXPIRES_S = 30.0
_HEARTBEAT_S = 1.0
"""Idle heartbeat of a standing request; three missed ones mean the server lost it (a
cluster's consumer leader moved without our connection dropping, and no ``409 Leadership
Change`` came, as for a request sent during the election): the last resort, since a new
leader sends a 409 to the requests it knows of (docs/ARCHITECTURE.md §5.5)."""
_NOT_READY_RETRY_S = 0.2
"""Pause before asking again when JetStream answered 503 (restarting, electing)."""

_Listener = Callable[[], Awaitable[None]]
_LISTENERS = "_jetagent_reconnect_listeners"


def on_reconnect(nc: NATS, listener: _Listener) -> Callable[[], None]:
    """Call ``listener`` each time ``nc`` has reconnected; returns the unsubscribe.

    nats-py takes one ``reconnected_cb`` at connect time; this chains onto it, so every
    puller on a shared connection hears of a reconnect (and the original callback, if
    any, still runs first).
    """
    listeners: list[_Listener] | None = getattr(nc, _LISTENERS, None)
    if listeners is None:
        listeners = []
        setattr(nc, _LISTENERS, listeners)
        original: _Listener | None = getattr(nc, "_reconnected_cb", None)
        chained = listeners

        async def reconnected() -> None:
            if original is not None:
                await original()
            for listener in list(chained):
                try:
                    await listener()
                except Exception:  # one listener must not keep the others from hearing
                    log.exception("a reconnect listener failed")

        nc._reconnected_cb = reconnected
    listeners.append(listener)
    registered = listeners

    def remove() -> None:
        if listener in registered:
            registered.remove(listener)

    return remove


class Puller:
    """Messages of one durable pull consumer, as they arrive."""

    def __init__(self, nc: NATS, *, stream: str, consumer: str, max_in_flight: int = 64) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._max = max(1, max_in_flight)
        self._queue: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._requested = 0  # asked for, not yet received or expired
        self._in_flight = 0  # received, not yet released by done()
        self._sub: Subscription | None = None
        self._inbox = ""
        self._last_activity = time.monotonic()
        self._closed = False
        self._pull_lock = asyncio.Lock()
        self._unlisten: Callable[[], None] | None = None
        self._again: asyncio.TimerHandle | None = None
        self._asking: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)
        self._unlisten = on_reconnect(self._nc, self.reissue)
        await self._top_up()

    async def reissue(self) -> None:
        """The server forgot our requests (it restarted, or was not ready): ask again."""
        self._requested = 0
        self._last_activity = time.monotonic()
        await self._top_up()

    def _reissue_soon(self) -> None:
        if self._again is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._again = loop.call_later(_NOT_READY_RETRY_S, self._reissue_now)

    def _reissue_now(self) -> None:
        self._again = None
        if not self._closed and (self._asking is None or self._asking.done()):
            self._asking = asyncio.get_running_loop().create_task(self.reissue())

    async def _on_message(self, msg: Msg) -> None:
        self._last_activity = time.monotonic()
        headers = msg.headers or {}
        status = headers.get(Header.STATUS)
        if status is not None:
            if status == "503":
                # No responders: JetStream is not up yet (restart, election); the
                # request is gone. Ask again shortly rather than after heartbeat silence.
                self._requested = 0
                self._reissue_soon()
                return
            if status in ("404", "408", "409"):
                # A request ended unfulfilled (expired, or the consumer moved):
                # the server says how many of its messages were not delivered.
                pending = int(headers.get(Header.PENDING_MESSAGES, "0") or 0)
                self._requested = max(0, self._requested - pending) if pending else 0
                await self._top_up()
            return  # 100: idle heartbeat
        self._requested = max(0, self._requested - 1)
        self._in_flight += 1
        self._queue.put_nowait(msg)

    async def _top_up(self) -> None:
        if self._closed:
            return
        async with self._pull_lock:
            want = self._max - self._in_flight - self._requested
            if want <= 0 or (want < self._max // 2 and self._requested > 0):
                return  # plenty outstanding; avoid a request per message
            request = {
                "batch": want,
                "expires": int(_EXPIRES_S * 1e9),
                "idle_heartbeat": int(_HEARTBEAT_S * 1e9),
            }
            self._requested += want
            try:
                await self._nc.publish(
                    self._next_subject, json.dumps(request).encode(), reply=self._inbox
                )
            except NatsError as exc:
                self._requested -= want
                log.warning("pull request on %s failed: %s", self._next_subject, exc)

    async def done(self) -> None:
        """A message was handled (acked, nak'd or termed): its slot is free again."""
        self._in_flight = max(0, self._in_flight - 1)
        want = self._max - self._in_flight - self._requested
        if want >= self._max // 2 or (want > 0 and self._requested == 0):
            await self._top_up()

    async def messages(self) -> AsyncIterator[Msg]:
        """Yield messages until :meth:`stop`; re-issues requests if the server went quiet."""
        while True:
            try:
                # Messages already here are taken without a turn of the event loop each
                # (wait_for costs one or two): on a busy loop, a burst would otherwise
                # arrive at the rate of loop turns, and everything behind it would wait.
                msg = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                pass
            else:
                if msg is None:
                    return
                yield msg
                continue
            try:
                msg = await asyncio.wait_for(self._queue.get(), timeout=_HEARTBEAT_S)
            except TimeoutError:
                if time.monotonic() - self._last_activity > 3 * _HEARTBEAT_S:
                    # No heartbeat: the server lost our requests (restart, failover).
                    self._requested = 0
                    self._last_activity = time.monotonic()
                await self._top_up()
                continue
            if msg is None:
                return
            yield msg

    async def stop(self) -> None:
        """Stop receiving; messages already yielded stay the caller's to finish."""
        self._closed = True
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self._again is not None:
            self._again.cancel()
            self._again = None
        if self._asking is not None and not self._asking.done():
            self._asking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._asking
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
            self._sub = None
        self._queue.put_nowait(None)
