"""How an application's records map to subjects of its stream.

Generic layout (any eventsourcing application)::

    <root>.e.<originator>.<version>.<topic>.<tracking>   an aggregate event
    <root>.s.<originator>.<version>.<topic>.<tracking>   a snapshot
    <root>.t._._._.<tracking>                            a tracking marker (a record with
                                                         no events, or heading a batch)

The version is a subject token so that "no event with this version yet" is one
server-side check with no read before the write (docs/ARCHITECTURE.md §5.1, option 1). The
last token names the upstream application whose notification caused the write ("_" when
none), so the newest tracking record of an upstream is one last-by-subject lookup; the
record's ``Ja-Tracking-Id`` header holds the notification id.

Tokens are readable where possible: ``[A-Za-z0-9_:-]`` stays as it is and ``.`` becomes
``,`` (a Python topic ``pkg.mod:Cls.Event`` reads ``pkg,mod:Cls,Event``). Anything else is
written as ``~`` and the base32 of its UTF-8 bytes, so every token decodes exactly.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from functools import lru_cache
from uuid import UUID

__all__ = ["NONE_TOKEN", "TRACKING_HEADER", "SubjectLayout", "decode_token", "encode_token"]

NONE_TOKEN = "_"
TRACKING_HEADER = "Ja-Tracking-Id"
"""The header holding a tracking record's notification id."""
_READABLE = re.compile(r"[A-Za-z0-9_:,-]+")
_PLAIN = re.compile(r"[A-Za-z0-9_:.-]+")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@lru_cache(maxsize=4096)
def encode_token(value: str) -> str:
    """Encode ``value`` as one subject token that :func:`decode_token` reverses."""
    if (
        value
        and value != NONE_TOKEN
        and _PLAIN.fullmatch(value)
        and ".." not in value
        and not value.startswith(".")
        and not value.endswith(".")
    ):
        return value.replace(".", ",")
    encoded = base64.b32encode(value.encode()).decode().rstrip("=").lower()
    return "~" + encoded


@lru_cache(maxsize=4096)
def decode_token(token: str) -> str:
    """Reverse :func:`encode_token`."""
    if token.startswith("~"):
        data = token[1:].upper()
        return base64.b32decode(data + "=" * (-len(data) % 8)).decode()
    return token.replace(",", ".")


def originator_token(originator_id: UUID | str) -> str:
    return encode_token(str(originator_id))


def parse_originator(token: str) -> UUID | str:
    """The originator id a token names: a canonical UUID string comes back as a UUID."""
    value = decode_token(token)
    if _CANONICAL_UUID.fullmatch(value):
        return UUID(value)
    return value


def is_valid_root(root: str) -> bool:
    return all(_READABLE.fullmatch(part) for part in root.split("."))


@dataclass(frozen=True)
class SubjectLayout:
    """The subjects of one application's stream under ``root``."""

    root: str

    def __post_init__(self) -> None:
        if not is_valid_root(self.root):
            raise ValueError(f"{self.root!r} is not a valid subject prefix")

    @property
    def all(self) -> str:
        return f"{self.root}.>"

    def kind_filter(self, kind: str) -> str:
        """Every record of one kind (``e`` events, ``s`` snapshots)."""
        return f"{self.root}.{kind}.>"

    def record(
        self, kind: str, originator_id: UUID | str, version: int, topic: str, tracking: str | None
    ) -> str:
        return (
            f"{self.root}.{kind}.{originator_token(originator_id)}.{version}."
            f"{encode_token(topic)}.{encode_token(tracking) if tracking else NONE_TOKEN}"
        )

    def version_filter(self, kind: str, originator_id: UUID | str, version: int) -> str:
        return f"{self.root}.{kind}.{originator_token(originator_id)}.{version}.>"

    def originator_filter(self, kind: str, originator_id: UUID | str) -> str:
        return f"{self.root}.{kind}.{originator_token(originator_id)}.>"

    def topic_filter(self, kind: str, topic: str) -> str:
        return f"{self.root}.{kind}.*.*.{encode_token(topic)}.*"

    def tracking_marker(self, upstream: str) -> str:
        return f"{self.root}.t.{NONE_TOKEN}.{NONE_TOKEN}.{NONE_TOKEN}.{encode_token(upstream)}"

    def tracking_filter(self, upstream: str) -> str:
        return f"{self.root}.*.*.*.*.{encode_token(upstream)}"

    def parse(self, subject: str) -> tuple[str, UUID | str, int, str]:
        """``(kind, originator_id, version, topic)`` of a record subject."""
        tokens = subject[len(self.root) + 1 :].split(".")
        kind, originator, version, topic = tokens[0], tokens[1], tokens[2], tokens[3]
        return kind, parse_originator(originator), int(version), decode_token(topic)
