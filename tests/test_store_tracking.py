"""Tracking positions are exclusive across stores, not only within one process.

Two ``NatsFactory`` instances on one stream stand for two processes (each has its own
connection and its own ``AsyncStore``): a position of an upstream application that one
has recorded must be refused to the other, by the server, whatever the other believes.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from eventsourcing.persistence import IntegrityError, ProcessRecorder, StoredEvent, Tracking
from eventsourcing.utils import Environment

from jetagent.store import NatsFactory


@pytest.fixture
def two_stores(nats_url: str) -> Iterator[tuple[ProcessRecorder, ProcessRecorder]]:
    """Two process recorders on one stream, through two connections."""
    stream = "TRK_" + uuid.uuid4().hex[:10]
    env = {"NATS_URL": nats_url, "NATS_STREAM": stream}
    first = NatsFactory(Environment(name="Tracking", env=env))
    second = NatsFactory(Environment(name="Tracking", env=env))
    try:
        yield first.process_recorder(), second.process_recorder()
    finally:
        first.close()
        second.close()


def _event(version: int = 1) -> list[StoredEvent]:
    return [
        StoredEvent(originator_id=uuid.uuid4(), originator_version=version, topic="t:E", state=b"")
    ]


def test_a_position_recorded_by_one_store_is_refused_to_the_other(
    two_stores: tuple[ProcessRecorder, ProcessRecorder],
) -> None:
    a, b = two_stores
    # Both stores have worked for upstream "up" before, so each knows where it stood.
    a.insert_events(_event(), tracking=Tracking("up", 1))
    b.insert_events(_event(), tracking=Tracking("up", 2))
    a.insert_events(_event(), tracking=Tracking("up", 3))
    # b then works for another upstream, which brings its view of the stream up to date
    # without telling it anything new about "up".
    b.insert_events(_event(), tracking=Tracking("other", 1))
    # Position 3 of "up" is taken: b must be refused, with or without events.
    with pytest.raises(IntegrityError):
        b.insert_events(_event(), tracking=Tracking("up", 3))
    with pytest.raises(IntegrityError):
        b.insert_tracking(Tracking("up", 3))
    assert a.max_tracking_id("up") == b.max_tracking_id("up") == 3


def test_an_untracked_write_does_not_make_a_stale_view_pass(
    two_stores: tuple[ProcessRecorder, ProcessRecorder],
) -> None:
    a, b = two_stores
    b.insert_tracking(Tracking("up", 1))
    a.insert_tracking(Tracking("up", 2))
    # An event written without tracking moves b's view of the stream on.
    b.insert_events(_event())
    with pytest.raises(IntegrityError):
        b.insert_events(_event(), tracking=Tracking("up", 2))
    assert b.max_tracking_id("up") == 2


def test_a_write_of_several_events_is_refused_a_taken_position(
    two_stores: tuple[ProcessRecorder, ProcessRecorder],
) -> None:
    a, b = two_stores
    b.insert_events(_event() + _event(), tracking=Tracking("up", 1))
    a.insert_events(_event() + _event(), tracking=Tracking("up", 2))
    b.insert_events(_event(), tracking=Tracking("other", 1))
    with pytest.raises(IntegrityError):
        b.insert_events(_event() + _event(), tracking=Tracking("up", 2))
    # Nothing of the refused write was stored.
    notifications = a.select_notifications(start=None, limit=100)
    assert len(notifications) == 5


def test_another_writer_moving_the_stream_does_not_block_a_tracked_write(
    two_stores: tuple[ProcessRecorder, ProcessRecorder],
) -> None:
    a, b = two_stores
    for position in range(1, 6):
        # b writes in between, with no tracking: a's view of the stream position is
        # stale each time, and its write of the next position must still go through.
        b.insert_events(_event())
        ids = a.insert_events(_event(), tracking=Tracking("up", position))
        assert ids is not None
        assert len(ids) == 1
    assert b.max_tracking_id("up") == 5
    assert len(a.select_notifications(start=None, limit=100)) == 10


def test_racing_stores_each_position_is_recorded_once(
    two_stores: tuple[ProcessRecorder, ProcessRecorder],
) -> None:
    # Two threads per store race through the same 60 positions of one upstream, as
    # competing replicas of a process application following one upstream would, with
    # every shape of write: one event, several, a tracking record alone, and writes
    # without tracking in between.
    positions = range(1, 61)
    accepted: list[tuple[int, int]] = []
    lock = threading.Lock()

    def race(recorder: ProcessRecorder) -> None:
        for position in positions:
            events = [_event(), _event() + _event(), []][position % 3]
            try:
                recorder.insert_events(events, tracking=Tracking("up", position))
            except IntegrityError:
                continue
            finally:
                if position % 5 == 0:
                    recorder.insert_events(_event())
            with lock:
                accepted.append((position, len(events)))

    threads = [threading.Thread(target=race, args=(r,)) for r in two_stores * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Tracking ids only grow, so a position may be skipped, but none is accepted twice.
    taken = [position for position, _ in accepted]
    assert len(taken) == len(set(taken))
    a, _ = two_stores
    assert a.max_tracking_id("up") == max(taken)
    # Every accepted event is stored, and only those (plus the untracked ones).
    untracked = 4 * len([p for p in positions if p % 5 == 0])
    notifications = a.select_notifications(start=None, limit=1000)
    assert len(notifications) == sum(n for _, n in accepted) + untracked
