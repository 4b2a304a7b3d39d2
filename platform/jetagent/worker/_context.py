"""What a capability handler sees and returns: the worker's authoring API.

``StepContext`` is one step as a handler sees it: its input, budget and deadline, how
many times it was delivered, and what it may do besides computing its output — report
each provider call as it completes (:meth:`StepContext.record_call`), keep data in the
platform's KV buckets and object store, read a stream's messages, publish live token
deltas, and tell JetStream it is still running. It exposes no NATS connection and no
JetStream message: the runtime (:mod:`jetagent.worker._runtime`) alone acks, naks and
records. ``StepOutput`` is what a handler returns; ``capability`` declares a handler;
``CapabilitySpec`` is the registered result.

Tests build a ``StepContext`` with :func:`jetagent.testing.step_context`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.api import RawStreamMsg
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from jetagent.errors import ConfigError, UnavailableError
from jetagent.events import CallRecord, RoutingDecision, Spend
from jetagent.jetstream import Record
from jetagent.payloads import PayloadStore
from jetagent.subjects import Names
from jetagent.token_stream import TokenPublisher
from jetagent.worker.calls import CallJournal
from jetagent.worker.registry import RegisteredTool

__all__ = [
    "CapabilitySpec",
    "Handler",
    "StepContext",
    "StepOutput",
    "StepServices",
    "capability",
]


class StepOutput(msgspec.Struct, kw_only=True):
    """What a handler returns: the output, and the provider calls it made."""

    output: dict[str, Any] = msgspec.field(default_factory=dict)
    calls: list[CallRecord] = msgspec.field(default_factory=list)
    routing: list[RoutingDecision] = msgspec.field(default_factory=list)


@dataclass(kw_only=True)
class StepServices:
    """What every step of one worker shares: its connection, names, payload store, call
    journal and opened KV buckets. Private to the runtime (and ``jetagent.testing``)."""

    names: Names
    nc: NATS | None = None
    """None in a context built for a unit test without a server."""
    payloads: PayloadStore | None = None
    journal: CallJournal | None = None
    js: JetStreamContext | None = None
    buckets: dict[str, KeyValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.js is None and self.nc is not None:
            self.js = self.nc.jetstream()

    def jetstream(self) -> JetStreamContext:
        if self.js is None:
            raise ConfigError(
                "this step has no NATS connection: build it with "
                "jetagent.testing.step_context(nc=...) to use KV, payloads or streams"
            )
        return self.js


@dataclass(kw_only=True)
class StepContext:
    """One step, as a handler sees it."""

    workflow_id: str
    step_id: str
    capability: str
    tool: str | None
    attempt: int
    iteration: int
    tenant: str
    input: dict[str, Any]
    reservation: Spend
    deadline_at: datetime | None
    deliveries: int
    """This delivery's number (1 on the first run; more after a retry or a lost worker)."""
    _services: StepServices = field(repr=False)
    _heartbeat: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)
    _recorded: list[CallRecord] = field(default_factory=list, repr=False)

    @property
    def names(self) -> Names:
        """The platform's stream, subject and bucket names (its prefix)."""
        return self._services.names

    @property
    def payloads(self) -> PayloadStore:
        """The object store for large payloads (claim checks, ``jetagent.payloads``)."""
        if self._services.payloads is None:
            self._services.jetstream()  # says why there is none
            raise ConfigError("this step has no payload store")
        return self._services.payloads

    async def record_call(self, call: CallRecord) -> None:
        """Report a provider call the moment it completes (succeeded, failed or
        cancelled), so its usage is recorded against this step even if this run dies
        before the step ends. A call reported here need not be returned in
        ``StepOutput.calls`` as well; if the same object is, it is counted once. An
        error raised after its calls were reported here says so with
        ``details[jetagent.worker.calls.CALLS_RECORDED] = True`` (they are not counted again
        from its ``details``/``usage``)."""
        if any(c is call for c in self._recorded):
            return
        self._recorded.append(call)
        journal = self._services.journal
        if journal is not None:
            await journal.record(self.workflow_id, self.step_id, self.deliveries, call)

    async def kv(self, bucket: str) -> KeyValue:
        """A platform KV bucket by its short name (``MEMORY`` → ``JA_MEMORY``); opened
        once per worker (opening costs a request)."""
        name = self.names.bucket(bucket)
        found = self._services.buckets.get(name)
        if found is None:
            found = await self._services.jetstream().key_value(name)
            self._services.buckets[name] = found
        return found

    async def last_message(self, stream: str, subject: str) -> Record | None:
        """The newest message of ``stream`` on ``subject`` (a wildcard filter allowed), or
        None. Asked of the stream's leader, never a replica that may lag behind, so a
        message stored just before is seen. :class:`~jetagent.errors.UnavailableError`
        when the server does not answer."""
        return await self._get(stream, subject=subject)

    async def next_message(self, stream: str, subject: str, *, after_seq: int) -> Record | None:
        """The first message of ``stream`` on ``subject`` after sequence ``after_seq``,
        or None; from the stream's leader, like :meth:`last_message`."""
        return await self._get(stream, subject=subject, seq=after_seq + 1, next=True)

    async def _get(
        self, stream: str, *, subject: str, seq: int | None = None, next: bool = False
    ) -> Record | None:
        js = self._services.jetstream()
        try:
            raw: RawStreamMsg = await js.get_msg(stream, seq=seq, subject=subject, next=next)
        except NotFoundError:
            return None
        except NatsError as exc:
            raise UnavailableError(f"could not read {subject} in {stream}: {exc}") from exc
        return Record(
            seq=int(raw.seq or 0),
            subject=str(raw.subject or ""),
            data=raw.data or b"",
            headers=dict(raw.headers or {}),
        )

    def tokens(self) -> TokenPublisher:
        """A publisher of this step's live token deltas (README "Streaming tokens"): best
        effort, never part of the record; publishes nothing without a connection."""
        return TokenPublisher(
            self._services.nc,
            self.names,
            workflow_id=self.workflow_id,
            step_id=self.step_id,
            attempt=self.attempt,
        )

    async def heartbeat(self) -> None:
        """Tell JetStream the step is still running (the runtime also does this itself)."""
        if self._heartbeat is not None:
            await self._heartbeat()


Handler = Callable[[StepContext], Awaitable[StepOutput | dict[str, Any]]]


@dataclass(frozen=True, kw_only=True)
class CapabilitySpec:
    """A registered capability: its name, handler, concurrency and the tools it serves."""

    name: str
    handler: Handler
    concurrency: int | None = None
    tools: Sequence[RegisteredTool] = ()
    subjects: Sequence[str] | None = None
    """Override the consumer's filter subjects (a pool serving some tools only)."""
    consumer: str | None = None
    report: Callable[[], dict[str, Any]] | None = None
    """Status to publish every few seconds (circuit breakers), for the metrics."""
    close: Callable[[], Awaitable[None]] | None = None
    """Release what the handler holds (HTTP pools, process pools) when the worker stops;
    specs sharing one resource may share one ``close`` (it is called once)."""


def capability(
    name: str, *, concurrency: int | None = None, tools: Sequence[RegisteredTool] = ()
) -> Callable[[Handler], CapabilitySpec]:
    """Declare an async handler as the capability ``name``."""

    def wrap(handler: Handler) -> CapabilitySpec:
        return CapabilitySpec(name=name, handler=handler, concurrency=concurrency, tools=tools)

    return wrap
