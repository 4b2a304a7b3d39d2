"""A durable consumer's messages taken round robin across keys (tenants), not in stream order.

A consumer delivers in stream order: a thousand steps of one tenant stored ahead of another
tenant's one step are delivered first. :class:`FairFeed` pulls a window of messages ahead
of those being handled (``lookahead``), keeps them in one queue per key, and hands out the
next message round robin across keys — oldest first within a key — at the moment a handler
is free. So a tenant's message waits behind at most one message of each other tenant once
it is in the window; it is in the window as soon as fewer than ``lookahead`` messages are
ahead of it (tenant quotas bound how many one tenant has ahead: docs/ARCHITECTURE.md §9).

Turns are not enough where handling is what is contended: a handler shares its process
(its event loop, its connection) with every other one in progress, so another tenant's
one input takes as long as the burst's many in progress make it. :class:`Shares` bounds
how many of one key's messages are handled at once: many for a key alone (throughput),
a few each while other keys are present (latency: another key's input is handled within
a small multiple of its time on an idle process). Measured in ``bench/quotas.py``
(docs/ARCHITECTURE.md §9).

Messages waiting in the window are the process's: each gets an in-progress ack every
``heartbeat_s`` (well inside the consumer's ack wait), so the server redelivers none of
them to another replica while this one lives, and one that stops naks every message it
has not started, so another replica gets them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from jetagent.jetstream.consume import Puller

__all__ = ["FairFeed", "FairQueue", "Shares"]

log = logging.getLogger("jetagent.fair")

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Items under keys, taken round robin across keys and oldest first within a key."""

    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[T]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def put(self, key: str, item: T) -> None:
        """Add ``item`` behind the other items of ``key``; a new key comes last in the turn."""
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(item)
        self._size += 1

    def take(self, skip: Callable[[str], bool] | None = None) -> tuple[str, T] | None:
        """``(key, item)``: the oldest item of the first key in turn that ``skip`` does not
        pass over (None when there is none); that key goes to the end of the turn."""
        for key, queue in self._queues.items():
            if skip is not None and skip(key):
                continue
            item = queue.popleft()
            del self._queues[key]
            if queue:
                self._queues[key] = queue
            self._size -= 1
            return key, item
        return None

    def items(self) -> list[T]:
        """Every item waiting, in no particular order."""
        return [item for queue in self._queues.values() for item in queue]

    def keys(self) -> list[str]:
        """The keys with items waiting, in turn order."""
        return list(self._queues)


class Shares:
    """How many messages of one key each feed sharing this hands out at once.

    ``alone`` while no other key is present, ``shared`` (at most ``alone``) while another
    is. A key is present while a feed sharing this holds messages of it (waiting or being
    handled), and for ``linger_s`` after the last was handled: another tenant's next
    input — its next step's result, a moment later — finds the burst's share still small
    rather than a crowd it has to wait through again.
    """

    def __init__(
        self,
        *,
        alone: int,
        shared: int,
        linger_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.alone = max(alone, 1)
        self.shared = max(min(shared, self.alone), 1)
        self._linger_s = linger_s
        self._clock = clock
        self._held: dict[str, int] = {}
        self._left: OrderedDict[str, float] = OrderedDict()
        """Keys holding nothing now, with when their last message was handled: oldest
        first (a key enters at the end), so the ones gone are pruned from the front."""

    def limit(self) -> int:
        """Messages of one key a feed may hand out at once now."""
        return self.shared if self.present() > 1 else self.alone

    def present(self) -> int:
        """How many keys are present."""
        left = self._left
        if left:
            gone = self._clock() - self._linger_s
            while left and next(iter(left.values())) < gone:
                left.popitem(last=False)
        return len(self._held) + len(left)

    def enter(self, key: str) -> None:
        """A feed holds one more message of ``key``."""
        self._held[key] = self._held.get(key, 0) + 1
        self._left.pop(key, None)

    def leave(self, key: str) -> None:
        """A feed holds one message of ``key`` less (handled, or given back)."""
        left = self._held.get(key, 0) - 1
        if left > 0:
            self._held[key] = left
            return
        self._held.pop(key, None)
        self._left[key] = self._clock()


class FairFeed:
    """Messages of a :class:`Puller` in round-robin order of ``key(msg)``.

    Use as ``async with FairFeed(puller, key=...) as feed:`` and ``await feed.next()``
    each time a handler is free (None once the puller stopped). The puller's
    ``max_in_flight`` is the window: handlers plus lookahead. Handled messages are
    released with ``puller.done()`` as before (and :meth:`release`, with ``shares``:
    at most :meth:`Shares.limit` messages of one key handled at once); messages never
    handed out are nak'd on exit.
    """

    def __init__(
        self,
        puller: Puller,
        *,
        key: Callable[[Msg], str],
        heartbeat_s: float,
        shares: Shares | None = None,
    ) -> None:
        self._puller = puller
        self._key = key
        self._heartbeat_s = heartbeat_s
        self._shares = shares
        self._queue: FairQueue[Msg] = FairQueue()
        self._changed = asyncio.Event()
        self._ended = False
        self._tasks: list[asyncio.Task[None]] = []
        self._active: dict[str, int] = {}
        self._keys: dict[int, str] = {}

    @property
    def waiting(self) -> int:
        """Messages pulled and not handed out yet."""
        return len(self._queue)

    async def __aenter__(self) -> FairFeed:
        self._tasks = [
            asyncio.create_task(self._feed(), name="fair-feed"),
            asyncio.create_task(self._heartbeats(), name="fair-heartbeats"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Not started here: give them back now rather than after the ack wait.
        while (taken := self._queue.take()) is not None:
            if self._shares is not None:
                self._shares.leave(taken[0])
            with contextlib.suppress(NatsError):
                await taken[1].nak()
            await self._puller.done()

    async def next(self) -> Msg | None:
        """The next message in turn, waiting for one; None once the puller has stopped.

        With ``shares``, a key with its share of messages handed out and not yet released
        (:meth:`release`) waits its turn until one of them is."""
        while True:
            if self._shares is None:
                taken = self._queue.take()
            else:
                taken = self._queue.take(self._over(self._shares.limit()))
            if taken is not None:
                key, msg = taken
                if self._shares is not None:
                    self._active[key] = self._active.get(key, 0) + 1
                    self._keys[id(msg)] = key
                return msg
            if self._ended and not len(self._queue):
                return None
            self._changed.clear()
            await self._changed.wait()

    def _over(self, limit: int) -> Callable[[str], bool]:
        active = self._active
        return lambda key: active.get(key, 0) >= limit

    def release(self, msg: Msg) -> None:
        """``msg`` (handed out by :meth:`next`) was handled: its key may have another."""
        key = self._keys.pop(id(msg), None)
        if key is None:
            return
        left = self._active.get(key, 0) - 1
        if left > 0:
            self._active[key] = left
        else:
            self._active.pop(key, None)
        if self._shares is not None:
            self._shares.leave(key)
        self._changed.set()

    async def _feed(self) -> None:
        try:
            async for msg in self._puller.messages():
                try:
                    key = self._key(msg)
                except Exception:  # an unreadable key is no reason to stall: one turn
                    key = ""
                if self._shares is not None:
                    self._shares.enter(key)
                self._queue.put(key, msg)
                self._changed.set()
        finally:
            self._ended = True
            self._changed.set()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            for msg in self._queue.items():
                try:
                    await msg.in_progress()
                except NatsError as exc:  # the server redelivers it; nothing else to do
                    log.debug("in-progress ack of a waiting message failed: %s", exc)
