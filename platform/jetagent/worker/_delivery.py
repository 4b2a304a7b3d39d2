"""In-progress acks while a step runs: a timer, not a task per step."""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

__all__ = ["Heartbeat"]


class Heartbeat:
    """Sends ``in_progress()`` every ``interval`` seconds until stopped (timer, no task)."""

    def __init__(self, msg: Msg, interval: float) -> None:
        self._msg = msg
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._sending: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(interval, self._beat)

    def _beat(self) -> None:
        self._sending = self._loop.create_task(self.send())
        self._handle = self._loop.call_later(self._interval, self._beat)

    async def send(self) -> None:
        """Send one now (a handler's ``StepContext.heartbeat()``); errors are ignored."""
        with contextlib.suppress(NatsError):
            await self._msg.in_progress()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._sending is not None and not self._sending.done():
            self._sending.cancel()
