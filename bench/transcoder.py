"""Suite ``transcoder``: MsgspecTranscoder and TypedMapper vs the library's JSON ones.

The baseline is what an eventsourcing ``Application`` uses by default: ``JSONTranscoder``
with ``UUIDAsHex``, ``DecimalAsStr`` and ``DatetimeAsISO`` registered (as
``Application.register_transcodings`` does), inside the library's ``Mapper``.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from decimal import Decimal
from functools import partial
from typing import Any

from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    UUIDAsHex,
)

from jetagent.store import MsgspecTranscoder, TypedMapper

from ._harness import Benchmark, Contenders, Env, Round, Suite

__all__ = ["SUITE"]

MSGSPEC = "MsgspecTranscoder"
JSON = "JSONTranscoder"
TYPED_MAPPER = "TypedMapper + MsgspecTranscoder"
LIB_MAPPER = "Mapper + JSONTranscoder"


class Order(Aggregate):
    """An aggregate whose event has the field types events usually carry."""

    class Placed(Aggregate.Event):
        customer: str
        customer_id: uuid.UUID
        sku: str
        quantity: int
        unit_price: Decimal
        currency: str
        placed_at: dt.datetime
        channel: str
        note: str
        lines: list[dict[str, Any]]
        tags: list[str]
        priority: int

        def apply(self, aggregate: Aggregate) -> None:
            pass


FIELDS: dict[str, Any] = {
    "customer": "Ada Lovelace",
    "customer_id": uuid.UUID("6f1c2a9e-3b7d-4e0a-9c51-2d8f4b6a7e13"),
    "sku": "SKU-88172",
    "quantity": 3,
    "unit_price": Decimal("19.99"),
    "currency": "EUR",
    "placed_at": dt.datetime(2025, 11, 25, 15, 47, 12, 123456, tzinfo=dt.UTC),
    "channel": "web",
    "note": "leave the parcel at the door, ring twice",
    "lines": [
        {"sku": "SKU-88172", "qty": 3, "price": "19.99", "name": "Analytical Engine manual"},
        {"sku": "SKU-1009", "qty": 1, "price": "4.50", "name": "Punched cards, 100"},
        {"sku": "SKU-4431", "qty": 2, "price": "12.00", "name": "Brass gears"},
    ],
    "tags": ["gift", "priority", "eu"],
    "priority": 2,
}
"""A realistic event state: a dozen fields of the usual types."""


def json_transcoder() -> JSONTranscoder:
    """The library's transcoder as an ``Application`` sets it up."""
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return transcoder


def placed_event() -> DomainEventProtocol[uuid.UUID]:
    order = Order()
    order.trigger_event(Order.Placed, **FIELDS)
    event: DomainEventProtocol[uuid.UUID] = order.collect_events()[-1]
    return event


def ops_per_second(fn: Callable[[], object], seconds: float) -> float:
    """Calls of ``fn`` per second, over about ``seconds`` of calls."""
    n = 1
    while True:  # calibrate: how many calls take 20 ms
        started = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - started
        if elapsed >= 0.02:
            break
        n *= 2
    loops = max(n, int(n * seconds / elapsed))
    started = time.perf_counter()
    for _ in range(loops):
        fn()
    return loops / (time.perf_counter() - started)


def _rate(fn: Callable[[], object], env: Env) -> Round:
    seconds = 0.05 if env.quick else 0.3
    return lambda: ops_per_second(fn, seconds)


@contextmanager
def _encode(env: Env) -> Iterator[Contenders]:
    fast, lib = MsgspecTranscoder(), json_transcoder()
    yield {
        MSGSPEC: _rate(lambda: fast.encode(FIELDS), env),
        JSON: _rate(lambda: lib.encode(FIELDS), env),
    }


@contextmanager
def _decode(env: Env) -> Iterator[Contenders]:
    fast, lib = MsgspecTranscoder(), json_transcoder()
    fast_data, lib_data = fast.encode(FIELDS), lib.encode(FIELDS)
    yield {
        MSGSPEC: _rate(lambda: fast.decode(fast_data), env),
        JSON: _rate(lambda: lib.decode(lib_data), env),
    }


def _mappers() -> dict[str, Mapper[uuid.UUID]]:
    return {
        TYPED_MAPPER: TypedMapper(transcoder=MsgspecTranscoder()),
        LIB_MAPPER: Mapper(transcoder=json_transcoder()),
    }


def _through(
    mapper: Mapper[uuid.UUID], event: DomainEventProtocol[uuid.UUID]
) -> DomainEventProtocol[uuid.UUID]:
    return mapper.to_domain_event(mapper.to_stored_event(event))


def _check_round_trip(
    name: str, mapper: Mapper[uuid.UUID], event: DomainEventProtocol[uuid.UUID]
) -> None:
    back = _through(mapper, event)
    if back != event:
        raise RuntimeError(f"{name} does not give the event back: {back!r} != {event!r}")


@contextmanager
def _round_trip(env: Env) -> Iterator[Contenders]:
    event = placed_event()
    rounds = {}
    for name, mapper in _mappers().items():
        _check_round_trip(name, mapper, event)
        rounds[name] = _rate(partial(_through, mapper, event), env)
    yield rounds


@contextmanager
def _to_stored(env: Env) -> Iterator[Contenders]:
    event = placed_event()
    yield {name: _rate(partial(m.to_stored_event, event), env) for name, m in _mappers().items()}


@contextmanager
def _to_domain(env: Env) -> Iterator[Contenders]:
    event = placed_event()
    rounds = {}
    for name, mapper in _mappers().items():
        _check_round_trip(name, mapper, event)
        stored = mapper.to_stored_event(event)
        rounds[name] = _rate(partial(mapper.to_domain_event, stored), env)
    yield rounds


def _benchmarks(env: Env) -> list[Benchmark]:
    def rate(
        name: str,
        subject: str,
        baseline: str,
        contenders: Callable[[Env], AbstractContextManager[Contenders]],
        note: str,
    ) -> Benchmark:
        return Benchmark(
            name=name,
            unit="ops/s",
            better="higher",
            subject=subject,
            baselines=(baseline,),
            contenders=contenders,
            note=note,
        )

    return [
        rate("encode", MSGSPEC, JSON, _encode, "`transcoder.encode(state)` of the 12-field dict."),
        rate(
            "decode",
            MSGSPEC,
            JSON,
            _decode,
            "`transcoder.decode(data)` of its own encoding. Not like for like: "
            "JSONTranscoder gives back UUID, Decimal and datetime objects here, "
            "MsgspecTranscoder plain strings (TypedMapper restores the types), so the "
            "mapper rows are the fair comparison.",
        ),
        rate(
            "mapper: event → stored",
            TYPED_MAPPER,
            LIB_MAPPER,
            _to_stored,
            "`mapper.to_stored_event(event)` of an `Aggregate.Event` with those fields.",
        ),
        rate(
            "mapper: stored → event",
            TYPED_MAPPER,
            LIB_MAPPER,
            _to_domain,
            "`mapper.to_domain_event(stored)`, types restored (checked equal first).",
        ),
        rate(
            "mapper round trip",
            TYPED_MAPPER,
            LIB_MAPPER,
            _round_trip,
            "`to_domain_event(to_stored_event(event))`; the result is checked equal to "
            "the event before timing.",
        ),
    ]


SUITE = Suite(
    name="transcoder",
    title="MsgspecTranscoder / TypedMapper vs the library's JSONTranscoder / Mapper",
    description=(
        "Encoding and decoding of one realistic event state (12 fields: strings, ints, a "
        "datetime, a UUID, a Decimal, a list of strings, a nested list of dicts), with "
        "no server. Rates are single-threaded calls per second."
    ),
    benchmarks=_benchmarks,
)
