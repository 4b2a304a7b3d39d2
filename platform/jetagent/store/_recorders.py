"""The eventsourcing recorder interfaces, synchronous, over :class:`AsyncStore`."""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

from jetagent.jetstream import LoopThread
from jetagent.store._async import EVENTS, AsyncStore

__all__ = [
    "NatsAggregateRecorder",
    "NatsApplicationRecorder",
    "NatsProcessRecorder",
    "NatsSubscription",
    "NatsTrackingRecorder",
]


class _NatsRecorder:
    def __init__(self, store: AsyncStore, loop: LoopThread, *, kind: str = EVENTS) -> None:
        self.store = store
        self.kind = kind
        self._loop = loop


class NatsAggregateRecorder(_NatsRecorder, AggregateRecorder):
    """Aggregate events (or snapshots) of one application's stream."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        self._insert(stored_events, **kwargs)
        return None

    def _insert(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        tracking: Tracking | None = kwargs.get("tracking")
        return self._loop.run(
            self.store.insert_events(stored_events, tracking=tracking, kind=self.kind)
        )

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        return self._loop.run(
            self.store.select_events(
                originator_id, gt=gt, lte=lte, desc=desc, limit=limit, kind=self.kind
            )
        )


class NatsApplicationRecorder(NatsAggregateRecorder, ApplicationRecorder):
    """Aggregate events plus the application sequence (notification id = stream seq)."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        return self._insert(stored_events, **kwargs)

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        return self._loop.run(
            self.store.select_notifications(
                start, limit, stop, topics, inclusive_of_start=inclusive_of_start
            )
        )

    def max_notification_id(self) -> int | None:
        return self._loop.run(self.store.max_notification_id())

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return NatsSubscription(self, gt=gt, topics=topics)


class NatsTrackingRecorder(_NatsRecorder, TrackingRecorder):
    """Tracking records: which notification of an upstream application was processed."""

    def insert_tracking(self, tracking: Tracking) -> None:
        self._loop.run(self.store.insert_tracking(tracking))

    def max_tracking_id(self, application_name: str) -> int | None:
        return self._loop.run(self.store.max_tracking_id(application_name))


class NatsProcessRecorder(NatsTrackingRecorder, NatsApplicationRecorder, ProcessRecorder):
    """Events and the tracking record of the notification that caused them, atomically."""


_END = object()


class NatsSubscription(Subscription[ApplicationRecorder]):
    """Notifications after ``gt``, then live ones, from an ordered JetStream consumer."""

    def __init__(
        self,
        recorder: NatsApplicationRecorder,
        gt: int | None = None,
        topics: Sequence[str] = (),
    ) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=1000)
        self._error: BaseException | None = None
        loop = recorder._loop.loop
        self._future = asyncio.run_coroutine_threadsafe(self._pump(recorder.store), loop)

    async def _pump(self, store: AsyncStore) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for notification in store.subscribe(self._last_notification_id, self._topics):
                try:
                    self._queue.put_nowait(notification)
                except queue.Full:
                    # The reader is behind: wait for room off the loop thread.
                    await loop.run_in_executor(None, self._queue.put, notification)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._error = exc
        finally:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_END)

    def stop(self) -> None:
        super().stop()
        self._future.cancel()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_END)

    def __next__(self) -> Notification:
        while not self._has_been_stopped:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is _END:
                break
            assert isinstance(item, Notification)
            self._last_notification_id = item.id
            return item
        if self._error is not None:
            raise self._error
        raise StopIteration
