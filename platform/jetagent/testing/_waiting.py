"""Waiting on real state with a deadline: the one way tests and benchmarks wait.

A test never sleeps for a fixed time and hopes; it polls what it waits for (a consumer
exists, a checkpoint moved, a log line appeared) until it holds or a deadline passes.
:func:`eventually` is the coroutine form, :func:`wait_until` the blocking one. Both can
watch the processes the state depends on (``alive``): a service that died fails the
wait at once with its log, not after the whole timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from jetagent.errors import JetagentError

__all__ = ["WaitTimeout", "eventually", "wait_until"]

T = TypeVar("T")


class WaitTimeout(JetagentError, TimeoutError):
    """What was waited for did not happen before the deadline."""

    def __init__(self, what: str, timeout: float, last: object) -> None:
        super().__init__(f"{what} not met within {timeout:g} s (last: {last!r})")
        self.timeout = timeout
        self.last = last
        """The last value the check returned."""


async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    alive: Callable[[], None] | None = None,
    what: str = "condition",
) -> T:
    """Await ``check()`` until it returns a truthy value, and return that value.

    ``alive`` is called before each check: raise from it to give up at once (for
    example :meth:`ServiceProcesses.check_alive`). Raises :class:`WaitTimeout` after
    ``timeout`` seconds (monotonic clock), naming ``what`` and the last value seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        if alive is not None:
            alive()
        value = await check()
        if value:
            return value
        last = value
        if time.monotonic() >= deadline:
            raise WaitTimeout(what, timeout, last)
        await asyncio.sleep(interval)


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    alive: Callable[[], None] | None = None,
    what: str = "condition",
) -> T:
    """:func:`eventually` for code without an event loop: blocks this thread."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        if alive is not None:
            alive()
        value = check()
        if value:
            return value
        last = value
        if time.monotonic() >= deadline:
            raise WaitTimeout(what, timeout, last)
        time.sleep(interval)
