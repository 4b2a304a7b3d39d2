"""The private event-loop thread behind the synchronous recorder API.

The eventsourcing library calls recorders from ordinary threads. nats-py is asyncio-only,
so one daemon thread runs one event loop for every synchronous store in the process and
callers hand it coroutines (docs/ARCHITECTURE.md §6: a deliberate bridge, never
``asyncio.run`` per call).
"""

from __future__ import annotations

import _thread
import asyncio
import atexit
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread", "shared_loop"]

T = TypeVar("T")


class LoopThread:
    """An event loop running forever on its own daemon thread."""

    def __init__(self, name: str = "jetagent-store-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread and return its result to the calling thread."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "a synchronous jetagent.store method was called from the store's own "
                "event-loop thread; use the async API (AsyncStore) there"
            )
        # A bare lock is the cheapest cross-thread wake-up; run_coroutine_threadsafe's
        # chained futures and condition variable cost ~30 µs more per call (bench/).
        finished = _thread.allocate_lock()
        finished.acquire()
        tasks: list[asyncio.Task[T]] = []

        def start() -> None:
            task = self.loop.create_task(coro)
            task.add_done_callback(lambda _: finished.release())
            tasks.append(task)

        self.loop.call_soon_threadsafe(start)
        if not finished.acquire(timeout=-1 if timeout is None else timeout):
            self.loop.call_soon_threadsafe(lambda: tasks and tasks[0].cancel())
            raise TimeoutError(f"the store did not answer within {timeout} s")
        return tasks[0].result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


_shared: LoopThread | None = None
_shared_lock = threading.Lock()


def shared_loop() -> LoopThread:
    """The process-wide loop thread, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.loop.is_running():
            _shared = LoopThread()
            atexit.register(_shared.stop)
        return _shared
