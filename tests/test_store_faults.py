"""jetagent.store under faults: SIGKILL of the server, lost acknowledgements, bad config."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import nats
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking
from eventsourcing.utils import Environment
from nats.errors import TimeoutError as NatsTimeoutError

from jetagent.embedded import EmbeddedServer
from jetagent.jetstream import _writes
from jetagent.store import (
    AsyncStore,
    NatsFactory,
    StoreSettings,
    StoreUnavailableError,
    StreamConfigError,
    WriteTooLargeError,
)


def _factory(url: str, stream: str, **extra: str) -> NatsFactory:
    return NatsFactory(
        Environment(name="Faults", env={"NATS_URL": url, "NATS_STREAM": stream, **extra})
    )


def _events(originator: uuid.UUID, versions: range) -> list[StoredEvent]:
    return [
        StoredEvent(originator_id=originator, originator_version=v, topic="t:E", state=b"{}")
        for v in versions
    ]


def _lose_acks(monkeypatch: pytest.MonkeyPatch, count: int) -> dict[str, int]:
    """Make the server store the next ``count`` writes but their acknowledgements never
    arrive; returns a counter of the acknowledgements lost so far."""
    publish = _writes._publish
    lost = {"count": 0}

    async def publish_then_lose_the_ack(*args):  # type: ignore[no-untyped-def]
        ack = await publish(*args)
        if lost["count"] < count:
            lost["count"] += 1
            raise NatsTimeoutError
        return ack

    monkeypatch.setattr(_writes, "_publish", publish_then_lose_the_ack)
    return lost


def test_events_survive_sigkill_of_the_server(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nats").start()
    factory = _factory(server.url, "RESTART")
    recorder = factory.application_recorder()
    a, b = uuid.uuid4(), uuid.uuid4()
    ids_a = recorder.insert_events(_events(a, range(1, 51)))
    ids_b = recorder.insert_events(_events(b, range(1, 2)))
    factory.close()

    # Crash the server, then start it again on the same store folder and port.
    server.kill()
    server = EmbeddedServer(tmp_path / "nats", port=server.port).start()
    try:
        factory = _factory(server.url, "RESTART")
        recorder = factory.application_recorder()
        assert [e.originator_version for e in recorder.select_events(a)] == list(range(1, 51))
        notifications = recorder.select_notifications(start=None, limit=100)
        assert [n.id for n in notifications] == [*ids_a, *ids_b]  # type: ignore[misc]
        assert recorder.max_notification_id() == ids_b[-1]  # type: ignore[index]
        # Writing goes on after the restart, with optimistic concurrency intact.
        with pytest.raises(IntegrityError):
            recorder.insert_events(_events(a, range(50, 51)))
        assert recorder.insert_events(_events(a, range(51, 52))) == [ids_b[-1] + 1]  # type: ignore[index]
        factory.close()
    finally:
        server.stop()


def test_a_write_waits_through_a_server_restart(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "nats").start()
    factory = _factory(server.url, "OUTAGE", NATS_TIMEOUT="0.5")
    recorder = factory.application_recorder()
    recorder.insert_events(_events(uuid.uuid4(), range(1, 2)))
    server.kill()
    restarted: list[EmbeddedServer] = []

    import threading

    def restart() -> None:
        # Bring the server back while the write below is retrying.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not restarted:
            try:
                restarted.append(EmbeddedServer(tmp_path / "nats", port=server.port).start())
            except Exception:
                time.sleep(0.1)

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        originator = uuid.uuid4()
        ids = recorder.insert_events(_events(originator, range(1, 3)))
        assert ids == [2, 3]
        assert len(recorder.select_events(originator)) == 2
    finally:
        thread.join()
        factory.close()
        for s in restarted:
            s.stop()


async def test_a_lost_ack_is_resolved_without_a_false_conflict(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = await nats.connect(nats_url)
    store = AsyncStore(nc, StoreSettings(stream="LOSTACK_" + uuid.uuid4().hex[:8], root="lostack"))
    # The server stores each write, but its acknowledgement never arrives.
    lost = _lose_acks(monkeypatch, 2)
    one, batch = uuid.uuid4(), uuid.uuid4()
    assert await store.insert_events(_events(one, range(1, 2))) == [1]
    assert await store.insert_events(_events(batch, range(1, 4))) == [2, 3, 4]
    assert lost["count"] == 2
    # Each write is stored once, with the ids the store reported.
    notifications = await store.select_notifications(None, 10)
    assert [(n.id, n.originator_id) for n in notifications] == [
        (1, one),
        (2, batch),
        (3, batch),
        (4, batch),
    ]
    await store.close()
    await nc.close()


async def test_a_lost_ack_on_a_tracked_write(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = await nats.connect(nats_url)
    store = AsyncStore(nc, StoreSettings(stream="LOSTTRK_" + uuid.uuid4().hex[:8], root="losttrk"))
    _lose_acks(monkeypatch, 1)
    ids = await store.insert_events(_events(uuid.uuid4(), range(1, 2)), tracking=Tracking("up", 7))
    assert ids == [1]
    assert await store.max_tracking_id("up") == 7
    with pytest.raises(IntegrityError):
        await store.insert_events((), tracking=Tracking("up", 7))
    await store.close()
    await nc.close()


def test_unreachable_nats_url_fails_fast_with_a_clear_message() -> None:
    from jetagent.embedded import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="cannot connect to NATS at") as info:
        _factory(url, "NOWHERE")
    assert url in str(info.value)
    assert time.monotonic() - started < 10  # fails fast, does not hang


async def test_a_stream_with_incompatible_settings_is_refused(nats_url: str) -> None:
    name = "BAD_" + uuid.uuid4().hex[:8]
    nc = await nats.connect(nats_url)
    # Created by someone else: no atomic publish, and an age limit that deletes events.
    await nc.jetstream().add_stream(name=name, subjects=[f"{name}.>"], max_age=3600)
    await nc.close()
    with pytest.raises(StreamConfigError) as info:
        _factory(nats_url, name)
    message = str(info.value)
    assert "allow_atomic is off" in message
    assert "max_age is 3600 s" in message


async def test_the_store_works_with_a_stream_another_process_created(nats_url: str) -> None:
    name = "OTHER_" + uuid.uuid4().hex[:8]
    first = _factory(nats_url, name)
    first.application_recorder().insert_events(_events(uuid.uuid4(), range(1, 2)))
    second = _factory(nats_url, name, NATS_CREATE_STREAM="n")
    assert second.application_recorder().max_notification_id() == 1
    first.close()
    second.close()


def test_a_missing_stream_with_creation_off_is_a_clear_error(nats_url: str) -> None:
    with pytest.raises(StreamConfigError, match="does not exist"):
        _factory(nats_url, "MISSING_" + uuid.uuid4().hex[:8], NATS_CREATE_STREAM="n")


def test_a_write_larger_than_one_batch_is_refused_whole(nats_url: str) -> None:
    factory = _factory(nats_url, "BIG_" + uuid.uuid4().hex[:8])
    recorder = factory.application_recorder()
    originator = uuid.uuid4()
    with pytest.raises(WriteTooLargeError, match="at most 1000"):
        recorder.insert_events(_events(originator, range(1001)))
    assert recorder.select_events(originator) == []
    factory.close()


async def test_an_aggregate_append_with_a_lost_ack_is_resolved(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jetagent.jetstream import AggregateStream, ConcurrencyConflict, NewRecord
    from jetagent.jetstream._streams import ensure_stream

    nc = await nats.connect(nats_url)
    name = "AGG_" + uuid.uuid4().hex[:8]
    await ensure_stream(
        nc,
        {
            "name": name,
            "subjects": [f"{name.lower()}.>"],
            "allow_direct": True,
            "allow_atomic": True,
        },
    )
    stream = AggregateStream(nc, stream=name, root=name.lower())
    await stream.open()
    _lose_acks(monkeypatch, 1)
    first = await stream.append("w1", [NewRecord("Started", b"{}")], expected_seq=0)
    assert first.seqs == [1]
    # The lost ack was recognised: one message stored, and the CAS chain goes on from it.
    second = await stream.append("w1", [NewRecord("Finalized", b"{}")], expected_seq=1)
    assert second.seqs == [2]
    with pytest.raises(ConcurrencyConflict) as info:
        await stream.append("w1", [NewRecord("Finalized", b"{}")], expected_seq=1)
    assert info.value.actual == 2
    assert [r.seq for r in await stream.read("w1")] == [1, 2]
    await stream.close()
    await nc.close()


async def test_write_once_stores_a_subject_once_through_a_lost_ack(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jetagent.jetstream import Message, write_once
    from jetagent.jetstream._streams import ensure_stream

    nc = await nats.connect(nats_url)
    name = "ONCE_" + uuid.uuid4().hex[:8]
    await ensure_stream(nc, {"name": name, "subjects": [f"{name}.>"], "allow_direct": True})
    _lose_acks(monkeypatch, 1)
    subject = f"{name}.result"
    # The first try landed but its ack was lost: the retry finds the subject taken.
    assert not await write_once(
        nc, Message(subject, b"1"), timeout=2.0, deadline_s=10.0, what="record"
    )
    assert await write_once(
        nc, Message(f"{name}.other", b"2"), timeout=2.0, deadline_s=10.0, what="record"
    )
    assert not await write_once(
        nc, Message(subject, b"3"), timeout=2.0, deadline_s=10.0, what="record"
    )
    info = await nc.jetstream().stream_info(name)
    assert info.state.messages == 2
    await nc.close()
