"""Memories in the ``<PREFIX>_MEMORY`` KV bucket, and a per-worker cache of their indexes.
(A little over 400 lines: the store and its cache are one idea — a recall reads through
the cache, which follows the bucket's changes — and the key layout below binds both.)

Key layout (KV keys are subject-like; every token here is ``[A-Za-z0-9_-]``)::

    <tenant>.t.<memory_id>               tenant scope: every session of the tenant
    <tenant>.s-<session_id>.<memory_id>  session scope: one session

The tenant is always the first token and comes from the step (the orchestrator's
``StepScheduled``), never from the tool's arguments, and so does the session (the step's
``input.session_id``); every read is a subject filter under ``<tenant>.``, so one
tenant's reads never even touch another's keys. The simple ``memory_store`` tool of the
tools worker shares the bucket with two-token keys (``<tenant>.<key>``), which these
three-token filters never match.

A value is a :class:`MemoryRecord` as JSON. A text above the payload threshold goes to the
object store (``<PREFIX>_PAYLOADS``, content-addressed) and the record keeps its claim check.
A memory's id is a hash of (workflow id, tool call id, text) and the key is written with
``create`` (write-once), so a redelivered or retried ``remember`` finds its own memory
instead of storing it twice.

The cache: per (tenant, scope) the worker keeps the memories it has read and the stream
sequence of the newest change it has seen. A ``recall`` first asks the server for the
sequence of the newest message under the scope's filter (one request); when it moved, the
worker reads only the changes after the one it knows (or the whole scope again, when many
changed), and the retriever is rebuilt for the new set. So a memory written by any
replica is seen by the next ``recall`` on every replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

import msgspec
from nats.errors import Error as NatsError
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from capabilities.memory._retrieval import BM25Retriever, Retriever, RetrieverFactory
from jetagent import StepContext, TransientError

__all__ = [
    "MAX_LIMIT",
    "MAX_QUERY_CHARS",
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "MAX_TEXT_BYTES",
    "MEMORY_BUCKET",
    "MemoryRecord",
    "MemoryStore",
    "RecallScope",
    "Recalled",
    "Remembered",
    "Scope",
    "memory_id",
    "memory_key",
]

log = logging.getLogger("capabilities.memory")

MEMORY_BUCKET = "MEMORY"
"""The KV bucket's short name (``<PREFIX>_MEMORY``, nats/kv/buckets.json)."""
MAX_TEXT_BYTES = 1024 * 1024
"""The longest text one memory may hold (UTF-8 bytes)."""
MAX_QUERY_CHARS = 4096
MAX_TAGS = 16
MAX_TAG_CHARS = 64
MAX_LIMIT = 50

Scope = Literal["session", "tenant"]
RecallScope = Literal["session", "tenant", "both"]

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TENANT_TOKEN = "t"
_SESSION_PREFIX = "s-"
_KV_OPERATION = "KV-Operation"


class MemoryRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One memory as stored (the KV value, JSON)."""

    v: int = 1
    """Schema version of this record's shape."""
    scope: str
    text: str = ""
    """The text, when it is small enough to keep inline."""
    text_ref: dict[str, Any] | None = None
    """A claim check (object store reference) for a text above the payload threshold."""
    tags: list[str] = msgspec.field(default_factory=list)
    remembered_at: datetime
    session_id: str | None = None
    workflow_id: str
    call_id: str
    """The tool call that stored it (with the workflow id, what makes it unique)."""


class Remembered(TypedDict):
    """What ``remember`` answers."""

    id: str
    scope: str
    remembered_at: str


class Recalled(TypedDict):
    """One ``recall`` result."""

    text: str
    score: float
    scope: str
    tags: list[str]
    remembered_at: str


_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(MemoryRecord)


def memory_id(workflow_id: str, call_id: str, text: str) -> str:
    """The id of the memory a tool call stores: the same for every retry of that call."""
    digest = hashlib.sha256("\x00".join((workflow_id, call_id, text)).encode()).hexdigest()
    return "m" + digest[:32]


def memory_key(tenant: str, scope: Scope, session_id: str | None, memory: str) -> str:
    """The KV key of a memory (see the module's key layout)."""
    return f"{_checked(tenant, 'tenant')}.{_scope_token(scope, session_id)}.{memory}"


def _scope_token(scope: Scope, session_id: str | None) -> str:
    if scope == "tenant":
        return _TENANT_TOKEN
    if session_id is None:
        raise ValueError("a session-scope memory needs a session id")
    return _SESSION_PREFIX + _checked(session_id, "session id")


def _checked(value: str, what: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a key token ([A-Za-z0-9_-]{{1,64}})")
    return value


@dataclass(slots=True)
class _Memory:
    key: str
    text: str
    scope: str
    tags: list[str]
    remembered_at: datetime

    @property
    def indexed(self) -> str:
        """What the retriever sees: the text, and the tags as words of it."""
        return f"{self.text}\n{' '.join(self.tags)}" if self.tags else self.text


@dataclass(slots=True)
class _ScopeCache:
    """The memories of one (tenant, scope) as of stream sequence ``seq``."""

    key_filter: str
    seq: int = 0
    memories: dict[str, _Memory] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True, slots=True)
class _View:
    """A retriever indexed over the memories of some scopes, as of their sequences."""

    version: tuple[int, ...]
    memories: list[_Memory]
    retriever: Retriever


class MemoryStore:
    """Stores and recalls memories for one worker; caches indexes between steps.

    ``max_changes`` is how many changes a cached scope reads one by one before it is
    cheaper to read the whole scope again.
    """

    def __init__(
        self,
        *,
        retriever: RetrieverFactory = BM25Retriever,
        max_scopes: int = 1024,
        max_views: int = 256,
        max_changes: int = 32,
    ) -> None:
        self.retriever = retriever
        self._max_scopes = max_scopes
        self._max_views = max_views
        self._max_changes = max_changes
        self._scopes: OrderedDict[str, _ScopeCache] = OrderedDict()
        self._views: OrderedDict[tuple[str, ...], _View] = OrderedDict()
        self.reloads = 0
        """How many times a scope was read whole (for tests and diagnostics)."""

    # ------------------------------------------------------------------ sessions

    @staticmethod
    def session_id(ctx: StepContext) -> str:
        """The session of the step's workflow, as the step carries it (``input.session_id``:
        the request's ``session_context.session_id``, else the workflow's own id, so a
        later request continues it by naming that id as its session).

        A step scheduled before steps carried their session has none: a session-scope
        call then fails (the model reads why) rather than guess another session.
        """
        given = ctx.input.get("session_id")
        if not isinstance(given, str) or not given:
            raise ValueError(
                "this step carries no session id (scheduled by an orchestrator older "
                "than session ids in steps); only the tenant scope is available"
            )
        return _checked(given, "session id")

    # ------------------------------------------------------------------ writing

    async def remember(
        self, ctx: StepContext, *, text: str, scope: Scope, tags: Sequence[str]
    ) -> Remembered:
        """Store ``text`` once for this tool call (a retry finds the stored memory)."""
        data = text.encode()
        if not text.strip():
            raise ValueError("there is no text to remember")
        if len(data) > MAX_TEXT_BYTES:
            raise ValueError(f"the text is longer than {MAX_TEXT_BYTES} bytes")
        if len(tags) > MAX_TAGS or not all(0 < len(t) <= MAX_TAG_CHARS for t in tags):
            raise ValueError(f"at most {MAX_TAGS} tags of 1 to {MAX_TAG_CHARS} characters")
        session = self.session_id(ctx) if scope == "session" else None
        call_id = str(ctx.input.get("call_id") or ctx.step_id)
        memory = memory_id(ctx.workflow_id, call_id, text)
        key = memory_key(ctx.tenant, scope, session, memory)
        record = MemoryRecord(
            scope=scope,
            tags=list(dict.fromkeys(tags)),
            remembered_at=datetime.now(UTC),
            session_id=session,
            workflow_id=ctx.workflow_id,
            call_id=call_id,
        )
        if len(data) > ctx.payloads.threshold:
            record.text_ref = await ctx.payloads.put(data)
        else:
            record.text = text
        kv = await self._bucket(ctx)
        try:
            await kv.create(key, _encoder.encode(record))
        except KeyWrongLastSequenceError:
            # Stored before: by an earlier delivery of this step, or a replica running
            # it at the same time. Answer as that delivery did.
            entry = await kv.get(key)
            record = _record_decoder.decode(entry.value or b"")
        except NatsError as exc:
            raise TransientError(f"could not store the memory: {exc}") from exc
        return {"id": memory, "scope": scope, "remembered_at": record.remembered_at.isoformat()}

    # ------------------------------------------------------------------ reading

    async def recall(
        self, ctx: StepContext, *, query: str, scope: RecallScope, limit: int
    ) -> list[Recalled]:
        """The ``limit`` memories of the scope that match ``query`` best, best first."""
        tenant = _checked(ctx.tenant, "tenant")
        if not query.strip() or len(query) > MAX_QUERY_CHARS:
            raise ValueError(f"the query must have 1 to {MAX_QUERY_CHARS} characters")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        tokens: list[str] = []
        if scope in ("session", "both"):
            tokens.append(_scope_token("session", self.session_id(ctx)))
        if scope in ("tenant", "both"):
            tokens.append(_TENANT_TOKEN)
        try:
            caches = [await self._current(ctx, f"{tenant}.{token}.*") for token in tokens]
        except NatsError as exc:
            raise TransientError(f"could not read the memories: {exc}") from exc
        view = await self._view((tenant, *tokens), caches)
        hits = await asyncio.to_thread(view.retriever.search, query, limit)
        results: list[Recalled] = []
        for position, score in hits[:limit]:
            if not 0 <= position < len(view.memories):
                continue  # a plug-in retriever's bad answer: skip rather than fail
            memory = view.memories[position]
            results.append(
                {
                    "text": memory.text,
                    "score": round(score, 4),
                    "scope": memory.scope,
                    "tags": list(memory.tags),
                    "remembered_at": memory.remembered_at.isoformat(),
                }
            )
        return results

    async def _view(self, key: tuple[str, ...], caches: list[_ScopeCache]) -> _View:
        version = tuple(cache.seq for cache in caches)
        view = self._views.get(key)
        if view is not None and view.version == version:
            self._views.move_to_end(key)
            return view
        memories = sorted(
            (m for cache in caches for m in cache.memories.values()),
            key=lambda m: (m.remembered_at, m.key),
        )
        retriever = self.retriever()
        await asyncio.to_thread(retriever.index, [m.indexed for m in memories])
        view = _View(version=version, memories=memories, retriever=retriever)
        self._views[key] = view
        self._views.move_to_end(key)
        if len(self._views) > self._max_views:
            self._views.popitem(last=False)
        return view

    async def _current(self, ctx: StepContext, key_filter: str) -> _ScopeCache:
        """The scope's memories, brought up to the newest change on the server."""
        cache = self._scopes.get(key_filter)
        if cache is None:
            cache = self._scopes[key_filter] = _ScopeCache(key_filter=key_filter)
            if len(self._scopes) > self._max_scopes:
                self._scopes.popitem(last=False)
        self._scopes.move_to_end(key_filter)
        async with cache.lock:
            kv = await self._bucket(ctx)
            bucket = ctx.names.bucket(MEMORY_BUCKET)
            stream, subject = f"KV_{bucket}", f"$KV.{bucket}.{key_filter}"
            head = await self._head(ctx, stream, subject)
            if head == cache.seq:
                return cache
            if 0 < cache.seq < head and await self._catch_up(ctx, cache, stream, subject, head):
                return cache
            await self._reload(ctx, kv, cache, head)
        return cache

    async def _head(self, ctx: StepContext, stream: str, subject: str) -> int:
        """The stream sequence of the newest message under ``subject`` (0: none).

        Asked of the stream's leader (not a direct get, which a lagging replica may
        answer), so a memory another replica has just stored is never missed.
        """
        raw = await ctx.last_message(stream, subject)
        return 0 if raw is None else raw.seq

    async def _catch_up(
        self, ctx: StepContext, cache: _ScopeCache, stream: str, subject: str, head: int
    ) -> bool:
        """Apply the changes after ``cache.seq`` one by one; False when there are too many."""
        seq = cache.seq
        for _ in range(self._max_changes):
            raw = await ctx.next_message(stream, subject, after_seq=seq)
            if raw is None:
                return False  # removed meanwhile (purge, max age): read the scope again
            seq = raw.seq
            key = raw.subject.split(".", 2)[2]
            operation = raw.headers.get(_KV_OPERATION)
            await self._apply(ctx, cache, key, operation, raw.data)
            cache.seq = seq
            if seq >= head:
                return True
        return False

    async def _reload(self, ctx: StepContext, kv: KeyValue, cache: _ScopeCache, head: int) -> None:
        """Read the scope whole: the newest value of every key (an ordered consumer)."""
        self.reloads += 1
        cache.memories = {}
        seq = 0
        watcher = await kv.watch(cache.key_filter)
        try:
            async for entry in watcher:
                if entry is None:  # every current value has been delivered
                    break
                seq = max(seq, int(entry.revision or 0))
                await self._apply(ctx, cache, entry.key, entry.operation, entry.value)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        cache.seq = max(seq, head)

    async def _apply(
        self,
        ctx: StepContext,
        cache: _ScopeCache,
        key: str,
        operation: str | None,
        value: bytes | None,
    ) -> None:
        if operation in ("DEL", "PURGE") or not value:
            cache.memories.pop(key, None)
            return
        try:
            record = _record_decoder.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("ignoring memory %s: %s", key, exc)
            return
        text = record.text
        if record.text_ref is not None:
            text = (await ctx.payloads.get(record.text_ref)).decode()
        cache.memories[key] = _Memory(
            key=key,
            text=text,
            scope=record.scope,
            tags=record.tags,
            remembered_at=record.remembered_at,
        )

    async def _bucket(self, ctx: StepContext) -> KeyValue:
        return await ctx.kv(MEMORY_BUCKET)  # opened once per worker
