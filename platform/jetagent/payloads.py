"""Claim checks: large payloads live in the JetStream Object Store, events carry a reference.

A reference is ``{"$ref": "<bucket>/<sha256>", "sha256": ..., "size": ..., "tokens": ...}``.
Objects are named by their SHA-256, so storing the same payload twice stores it once and
a retried step cannot leave two copies. Inside conversation messages (whose content is a
string) a reference is the string ``ja-ref:`` + its JSON, and :func:`message_ref_tokens`
lets token estimates count what the reference stands for without fetching it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from jetagent.errors import PermanentError
from jetagent.tokens import MESSAGE_REF_PREFIX, count_tokens, message_ref_tokens

__all__ = ["MESSAGE_REF_PREFIX", "PayloadStore", "is_ref", "message_ref_tokens"]

_encoder = msgspec.json.Encoder(decimal_format="string")


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and "$ref" in value and "sha256" in value


class PayloadStore:
    """Puts payloads above ``threshold`` bytes into an object store and resolves refs."""

    def __init__(self, js: JetStreamContext, *, bucket: str, threshold: int) -> None:
        self._js = js
        self.bucket = bucket
        self.threshold = threshold
        self._obs: ObjectStore | None = None

    async def _store(self) -> ObjectStore:
        if self._obs is None:
            self._obs = await self._js.object_store(self.bucket)
        return self._obs

    async def put(self, data: bytes, *, tokens: int = 0) -> dict[str, Any]:
        """Store ``data`` (content-addressed) and return its reference."""
        digest = hashlib.sha256(data).hexdigest()
        obs = await self._store()
        try:
            await obs.get_info(digest)
        except NotFoundError:
            await obs.put(digest, data)
        return {
            "$ref": f"{self.bucket}/{digest}",
            "sha256": digest,
            "size": len(data),
            "tokens": tokens,
        }

    async def get(self, ref: dict[str, Any]) -> bytes:
        """The payload a reference stands for, checked against its digest."""
        obs = await self._store()
        try:
            result = await obs.get(str(ref["sha256"]))
        except NotFoundError as exc:
            raise PermanentError(f"payload {ref['$ref']} is missing from the object store") from exc
        data = result.data or b""
        if hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise PermanentError(f"payload {ref['$ref']} does not match its digest")
        return data

    async def shrink(self, value: dict[str, Any]) -> dict[str, Any]:
        """``value`` itself when small; else a reference to its JSON in the object store."""
        data = _encoder.encode(value)
        if len(data) <= self.threshold:
            return value
        return await self.put(data)

    async def shrink_text(self, text: str) -> str:
        """A message content: itself when small, else a ``ja-ref:`` string."""
        data = text.encode()
        if len(data) <= self.threshold:
            return text
        ref = await self.put(data, tokens=count_tokens(text))
        return MESSAGE_REF_PREFIX + _encoder.encode(ref).decode()

    async def expand(self, value: Any) -> Any:
        """``value`` with every reference (and message-content reference) resolved."""
        if is_ref(value):
            return msgspec.json.decode(await self.get(value))
        if isinstance(value, dict):
            return {k: await self.expand(v) for k, v in value.items()}
        if isinstance(value, list):
            return [await self.expand(v) for v in value]
        if isinstance(value, str) and value.startswith(MESSAGE_REF_PREFIX):
            ref = msgspec.json.decode(value[len(MESSAGE_REF_PREFIX) :])
            return (await self.get(ref)).decode()
        return value
