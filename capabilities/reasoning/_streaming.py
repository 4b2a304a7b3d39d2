"""Streaming a gateway call's text live while only the winner's text counts.

One gateway call may run several provider calls: hedges racing each other, retries
after a failure. Each call gets its own sink; the first call to produce text owns the
live stream and the others' text is only buffered. When the race picks a winner that is
not the owner (the owner failed, was cancelled, or lost), the subscriber is told to
drop what it saw (a ``restart`` delta) and gets the winner's text. So a subscriber ends
up with exactly the winning answer's text, and never two answers interleaved.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["StreamGate", "TokenSink"]


class TokenSink(Protocol):
    """Where live text goes (``jetagent.token_stream.TokenPublisher``)."""

    async def delta(self, text: str, *, model: str = "") -> None: ...

    async def restart(self) -> None: ...

    async def done(self) -> None: ...


class StreamGate:
    """Winner-only live text of one gateway call (see the module docstring)."""

    def __init__(self, sink: TokenSink, *, replaces: bool = False) -> None:
        """``replaces``: an earlier delivery of the same step may have shown text (the
        step runs again after its worker failed mid-call), so the first text restarts."""
        self._sink = sink
        self._buffers: dict[int, list[str]] = {}
        self._models: dict[int, str] = {}
        self._owner: int | None = None
        self._shown = replaces
        """Some text is on the subscriber's screen that a restart must clear."""

    def open(self, model: str) -> tuple[int, Callable[[str], Awaitable[None]]]:
        """A new call's key and its delta sink."""
        key = len(self._buffers)
        self._buffers[key] = []
        self._models[key] = model

        async def on_delta(text: str) -> None:
            self._buffers[key].append(text)
            if self._owner is None:
                await self._take(key)
            elif self._owner == key:
                await self._sink.delta(text, model=model)
                self._shown = True

        return key, on_delta

    async def _take(self, key: int) -> None:
        if self._shown:
            await self._sink.restart()
        self._owner = key
        text = "".join(self._buffers[key])
        if text:
            await self._sink.delta(text, model=self._models[key])
        self._shown = bool(text)

    def lost(self, key: int) -> None:
        """The call ``key`` ended without an answer: another may take the stream."""
        if self._owner == key:
            self._owner = None

    async def settle(self, winner: int | None) -> None:
        """A race ended; ``winner`` is the call whose answer counts (None: no answer)."""
        if winner is not None and winner != self._owner:
            await self._take(winner)
        self._owner = None

    async def finish(self) -> None:
        await self._sink.done()
