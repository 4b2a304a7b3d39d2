"""MsgspecTranscoder and TypedMapper: clean JSON, exact round trips."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Transcoding, TranscodingNotRegisteredError
from hypothesis import given
from hypothesis import strategies as st

from jetagent.store import MsgspecTranscoder, TypedMapper
from jetagent.store._subjects import decode_token, encode_token


class Order(Aggregate):
    @event("Placed")
    def __init__(self, customer: UUID, total: Decimal, due: datetime, lines: list[str]) -> None:
        self.customer = customer
        self.total = total
        self.due = due
        self.lines = lines
        self.notes: dict[str, Any] = {}

    @event("Annotated")
    def annotate(self, notes: dict[str, Any]) -> None:
        self.notes = notes


def _mapper() -> TypedMapper[UUID]:
    return TypedMapper(transcoder=MsgspecTranscoder())


def test_typed_fields_are_plain_json_values() -> None:
    due = datetime(2026, 11, 25, 12, 30, tzinfo=UTC)
    customer = uuid4()
    order = Order(customer=customer, total=Decimal("12.50"), due=due, lines=["a"])
    stored = _mapper().to_stored_event(order.collect_events()[0])
    data = json.loads(stored.state)
    # No {"_type_": ...} wrappers: datetimes, UUIDs and decimals are plain strings.
    assert data["customer"] == str(customer)
    assert data["total"] == "12.50"
    assert data["due"] == "2026-11-25T12:30:00Z"
    assert "_type_" not in stored.state.decode()


def test_events_round_trip_with_their_types() -> None:
    mapper = _mapper()
    order = Order(customer=uuid4(), total=Decimal("1.10"), due=datetime.now(UTC), lines=[])
    original = order.collect_events()[0]
    copy = mapper.to_domain_event(mapper.to_stored_event(original))
    assert copy == original
    assert isinstance(copy.timestamp, datetime)
    assert isinstance(copy.__dict__["total"], Decimal)
    assert isinstance(copy.__dict__["customer"], UUID)


def test_schemaless_values_keep_their_types() -> None:
    # A field typed Any has no schema, so its decimals and datetimes are tagged.
    mapper = _mapper()
    order = Order(customer=uuid4(), total=Decimal(1), due=datetime.now(UTC), lines=[])
    order.collect_events()
    when = datetime(2026, 1, 2, tzinfo=UTC)
    order.annotate({"amount": Decimal("3.30"), "when": when, "tags": ("x", "y")})
    annotated = order.collect_events()[0]
    copy = mapper.to_domain_event(mapper.to_stored_event(annotated))
    assert copy.__dict__["notes"] == {"amount": Decimal("3.30"), "when": when, "tags": ("x", "y")}


def test_snapshot_rebuilds_the_aggregate_exactly() -> None:
    mapper = _mapper()
    order = Order(customer=uuid4(), total=Decimal("9.99"), due=datetime.now(UTC), lines=["l"])
    order.collect_events()
    snapshot = Aggregate.Snapshot.take(order)
    rebuilt = mapper.to_domain_event(mapper.to_stored_event(snapshot)).mutate(None)  # type: ignore[attr-defined]
    assert rebuilt.__dict__ == order.__dict__


@dataclass(frozen=True)
class Email:
    address: str


class EmailAsStr(Transcoding):
    type = Email
    name = "email"

    def encode(self, obj: Email) -> str:
        return obj.address

    def decode(self, data: str) -> Email:
        return Email(data)


def test_registered_transcodings_still_apply() -> None:
    transcoder = MsgspecTranscoder()
    transcoder.register(EmailAsStr())
    value = {"to": Email("a@example.com"), "cc": [Email("b@example.com")]}
    assert transcoder.decode(transcoder.encode(value)) == value


def test_unregistered_types_are_a_clear_error() -> None:
    class Unknown:
        pass

    with pytest.raises(TranscodingNotRegisteredError, match="is not serializable"):
        MsgspecTranscoder().encode({"x": Unknown()})
    with pytest.raises(TranscodingNotRegisteredError, match="is not deserializable"):
        MsgspecTranscoder().decode(b'{"_type_":"nope","_data_":1}')


def test_json_transcoder_cases_that_apply() -> None:
    transcoder = MsgspecTranscoder()
    for obj in ("a", "🐈 哈哈", {}, {"a": {"b": {"c": 1}}}, [[1, "a"]], {"_type_": 1, "x": 2}):
        assert transcoder.decode(transcoder.encode(obj)) == obj
    assert transcoder.encode("🐈 哈哈") == '"🐈 哈哈"'.encode()


@given(st.text(min_size=1, max_size=40))
def test_subject_tokens_round_trip(value: str) -> None:
    token = encode_token(value)
    assert "." not in token
    assert " " not in token
    assert token not in ("*", ">")
    assert decode_token(token) == value
