"""The projection checkpoint in ``JA_PROJECTIONS``, whatever its size.

A checkpoint holds every running workflow's tenant and open step, so it grows with the
number of live sessions (about 120 bytes each) and passes nats-server's default
``max_payload`` of 1 MiB near 8,500 of them. A small checkpoint is one KV value; a large
one is written in parts to one of two slots (``<key>.a.<i>`` / ``<key>.b.<i>``), and
then the head (``<key>``) names the slot, the part count and the SHA-256 of the whole.
The head is written last, so a crash in the middle leaves the previous checkpoint whole;
slots alternate, so the parts the head names are never the ones being overwritten.

With a connection (``nc``), every put is retried through an election of the bucket's
stream (``jetagent.jetstream.kv_put``): a put repeated after a lost acknowledgement only
adds a revision, and the order (parts, then head) holds because each put is retried in
place.
"""

from __future__ import annotations

import asyncio
import hashlib

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from jetagent.errors import JetagentError
from jetagent.jetstream import kv_put

__all__ = ["PART_BYTES", "CheckpointError", "CheckpointStore"]

PART_BYTES = 512 * 1024
"""Half of nats-server's default ``max_payload``: parts fit any server's configuration."""


class CheckpointError(JetagentError, RuntimeError):
    """A stored checkpoint is incomplete or does not match its digest."""


class _Head(msgspec.Struct):
    # An inline checkpoint decodes to parts == 0 (its own fields are ignored here).
    parts: int = 0
    slot: str = ""
    sha256: str = ""


_head_decoder = msgspec.json.Decoder(_Head)
_head_encoder = msgspec.json.Encoder()


class CheckpointStore:
    """Saves and loads one checkpoint (encoded bytes) under ``key`` in a KV bucket
    (``bucket`` names it; with ``nc`` puts are retried through elections)."""

    def __init__(
        self,
        kv: KeyValue,
        key: str,
        *,
        part_bytes: int = PART_BYTES,
        nc: NATS | None = None,
        bucket: str | None = None,
    ) -> None:
        self.kv = kv
        self.key = key
        self.part_bytes = part_bytes
        self._nc = nc
        self._bucket = bucket
        self._slot = ""  # the slot the current head names, once known

    async def load(self) -> bytes | None:
        """The last saved checkpoint, or None when there is none."""
        value = await self._get(self.key)
        if not value:
            return None
        head = _head_decoder.decode(value)
        if head.parts == 0:
            return value
        self._slot = head.slot
        names = [self._part(head.slot, i) for i in range(head.parts)]
        parts = await asyncio.gather(*(self._get(name) for name in names))
        missing = [name for name, part in zip(names, parts, strict=True) if part is None]
        if missing:
            raise CheckpointError(f"checkpoint {self.key!r} is missing {', '.join(missing)}")
        whole = b"".join(part or b"" for part in parts)
        if hashlib.sha256(whole).hexdigest() != head.sha256:
            raise CheckpointError(
                f"checkpoint {self.key!r} does not match its digest: another process may "
                "be writing the same checkpoint (run one projection service per prefix)"
            )
        return whole

    async def save(self, value: bytes) -> None:
        """Write ``value`` as the checkpoint (the previous one stays whole until the
        head is written)."""
        if len(value) <= self.part_bytes:
            await self._put(self.key, value)
            return
        if not self._slot:
            await self.load()  # learn which slot the head names, to write the other one
        slot = "b" if self._slot == "a" else "a"
        chunks = [value[i : i + self.part_bytes] for i in range(0, len(value), self.part_bytes)]
        await asyncio.gather(
            *(self._put(self._part(slot, i), chunk) for i, chunk in enumerate(chunks))
        )
        head = _Head(parts=len(chunks), slot=slot, sha256=hashlib.sha256(value).hexdigest())
        await self._put(self.key, _head_encoder.encode(head))
        self._slot = slot

    async def _put(self, key: str, value: bytes) -> None:
        if self._nc is not None and self._bucket is not None:
            await kv_put(self._nc, self._bucket, key, value)
        else:
            await self.kv.put(key, value)

    def _part(self, slot: str, index: int) -> str:
        return f"{self.key}.{slot}.{index}"

    async def _get(self, key: str) -> bytes | None:
        try:
            entry = await self.kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            return None
        return entry.value
