"""Event encoding with msgspec: clean JSON that any NATS tool can read.

``MsgspecTranscoder`` writes datetimes, UUIDs and decimals as plain JSON strings, never in
the library's ``{"_type_": ..., "_data_": ...}`` wrapper, and is several times faster than
the library's ``JSONTranscoder``. A plain string carries no type, so
``TypedMapper`` gives the types back when it rebuilds an event, from the event class's
annotations (``timestamp: datetime``, ``amount: Decimal``, ``ids: list[UUID]``).

Where an event declares no type (a field annotated ``Any``, like the aggregate state
inside a snapshot), nothing could restore a plain string to a ``Decimal``; there the
mapper keeps the library's tag, so a snapshot rebuilds its aggregate exactly. Other types
registered with ``register()`` keep their tag everywhere, as with ``JSONTranscoder``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import DomainEventProtocol, TAggregateID
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    Transcoding,
    TranscodingNotRegisteredError,
    UUIDAsHex,
)
from eventsourcing.utils import get_topic

__all__ = ["MsgspecTranscoder", "TypedMapper"]

_TAG = b'"_type_"'
_PLAIN_TYPES = (str, int, float, bool, type(None))
_TYPED_SCALARS = (dt.datetime, dt.date, dt.time, dt.timedelta, UUID, Decimal)


class MsgspecTranscoder(JSONTranscoder):
    """A drop-in replacement for ``JSONTranscoder`` built on msgspec."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = msgspec.json.Encoder(enc_hook=self._enc_hook)
        self._decoder = msgspec.json.Decoder()
        # msgspec encodes dataclasses natively; a registered transcoding for one must
        # win, which costs a walk of the object, so it is done only when needed.
        self._native_registered = False
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
            self.register(transcoding)

    def register(self, transcoding: Transcoding) -> None:
        super().register(transcoding)
        if dataclasses.is_dataclass(transcoding.type) or issubclass(
            transcoding.type, msgspec.Struct
        ):
            self._native_registered = True

    def encode(self, obj: Any) -> bytes:
        if self._native_registered:
            obj = self._tag_registered(obj)
        return self._encoder.encode(obj)

    def decode(self, data: bytes) -> Any:
        obj = self._decoder.decode(data)
        if _TAG in data:
            obj = self._untag(obj)
        return obj

    def tag(self, obj: Any) -> Any:
        """``obj`` with datetimes, UUIDs, decimals and registered types tagged (lossless)."""
        if isinstance(obj, _PLAIN_TYPES):
            return obj
        if isinstance(obj, dict) and type(obj) is dict:
            return {k: self.tag(v) for k, v in obj.items()}
        if isinstance(obj, list) and type(obj) is list:
            return [self.tag(v) for v in obj]
        transcoding = self.types.get(type(obj))
        if transcoding is not None:
            return {"_type_": transcoding.name, "_data_": self.tag(transcoding.encode(obj))}
        if isinstance(obj, tuple) and type(obj) is tuple:
            return {"_type_": "tuple_as_list", "_data_": [self.tag(v) for v in obj]}
        return obj

    def _tag_registered(self, obj: Any) -> Any:
        if isinstance(obj, _PLAIN_TYPES):
            return obj
        if type(obj) is dict:
            return {k: self._tag_registered(v) for k, v in obj.items()}
        if type(obj) in (list, tuple):
            return [self._tag_registered(v) for v in obj]
        transcoding = self.types.get(type(obj))
        if transcoding is not None and not isinstance(obj, _TYPED_SCALARS):
            return {
                "_type_": transcoding.name,
                "_data_": self._tag_registered(transcoding.encode(obj)),
            }
        return obj

    def _enc_hook(self, obj: Any) -> Any:
        transcoding = self.types.get(type(obj))
        if transcoding is None:
            raise TranscodingNotRegisteredError(
                f"Object of type {type(obj)} is not serializable. Please define and "
                "register a custom transcoding for this type."
            )
        return {"_type_": transcoding.name, "_data_": transcoding.encode(obj)}

    def _untag(self, obj: Any) -> Any:
        if type(obj) is dict:
            if len(obj) == 2 and "_type_" in obj and "_data_" in obj:
                name = obj["_type_"]
                data = self._untag(obj["_data_"])
                if name == "tuple_as_list":
                    return tuple(data)
                transcoding = self.names.get(name)
                if transcoding is None:
                    raise TranscodingNotRegisteredError(
                        f"Data serialized with name '{name}' is not deserializable. "
                        "Please register a custom transcoding for this type."
                    )
                return transcoding.decode(data)
            return {k: self._untag(v) for k, v in obj.items()}
        if type(obj) is list:
            return [self._untag(v) for v in obj]
        return obj


_Converter = Callable[[Any], Any]


def _needs_types(hint: Any) -> bool:
    """Whether a value of this type loses its type as plain JSON."""
    if hint in _TYPED_SCALARS:
        return True
    if isinstance(hint, type) and (
        dataclasses.is_dataclass(hint) or issubclass(hint, msgspec.Struct)
    ):
        return True
    return any(_needs_types(arg) for arg in typing.get_args(hint))


def _is_schemaless(hint: Any) -> bool:
    if hint is Any or hint is object:
        return True
    return any(_is_schemaless(arg) for arg in typing.get_args(hint))


@dataclasses.dataclass(frozen=True)
class _ClassPlan:
    typed: dict[str, _Converter]
    """Fields whose annotation restores their type from plain JSON."""


def _converter(hint: Any) -> _Converter:
    def convert(value: Any) -> Any:
        try:
            return msgspec.convert(value, hint, strict=False)
        except (msgspec.ValidationError, TypeError):
            return value  # the value does not match its annotation; keep it as it is

    return convert


@lru_cache(maxsize=1024)
def _plan(cls: type) -> _ClassPlan:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        hints = {}
    typed: dict[str, _Converter] = {}
    for name, hint in hints.items():
        if name in ("originator_id", "originator_version") or _is_schemaless(hint):
            continue
        typed[name] = _converter(hint) if _needs_types(hint) else _keep
    return _ClassPlan(typed=typed)


def _keep(value: Any) -> Any:
    return value


class TypedMapper(Mapper[TAggregateID]):
    """A ``Mapper`` that restores annotated types after :class:`MsgspecTranscoder`."""

    def to_stored_event(self, domain_event: DomainEventProtocol[TAggregateID]) -> StoredEvent:
        transcoder = self.transcoder
        if not isinstance(transcoder, MsgspecTranscoder):
            return super().to_stored_event(domain_event)
        cls = type(domain_event)
        plan = _plan(cls)
        event_state = dict(vars(domain_event))
        originator_id = event_state.pop("originator_id")
        originator_version = event_state.pop("originator_version")
        for name, value in event_state.items():
            # No schema for this value (Any, or no annotation): keep its types tagged.
            if name not in plan.typed and not isinstance(value, _PLAIN_TYPES):
                event_state[name] = transcoder.tag(value)
        class_version = getattr(cls, "class_version", 1)
        if class_version > 1:
            event_state["class_version"] = class_version
        stored_state = transcoder.encode(event_state)
        if self.compressor:
            stored_state = self.compressor.compress(stored_state)
        if self.cipher:
            stored_state = self.cipher.encrypt(stored_state)
        return StoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=get_topic(cls),
            state=stored_state,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[TAggregateID]:
        domain_event = super().to_domain_event(stored_event)
        if not isinstance(self.transcoder, MsgspecTranscoder):
            return domain_event
        state = domain_event.__dict__
        for name, convert in _plan(type(domain_event)).typed.items():
            if convert is not _keep:
                value = state.get(name)
                if value is not None:
                    state[name] = convert(value)
        return domain_event
