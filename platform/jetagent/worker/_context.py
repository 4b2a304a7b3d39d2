"""What a capability handler sees and returns: the worker runtime's public surface.

``StepContext`` is one step as a handler sees it (its input, budget, deadline, how many
times it was delivered, and :meth:`StepContext.record_call` to report each provider call
as it completes); ``StepOutput`` is what it returns; ``capability`` declares a handler;
``CapabilitySpec`` is the registered result. The runtime that runs them is
:mod:`jetagent.worker`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from jetagent.events import CallRecord, RoutingDecision, Spend
from jetagent.payloads import PayloadStore
from jetagent.subjects import Names
from jetagent.worker.calls import CallJournal
from jetagent.worker.registry import RegisteredTool

__all__ = ["CapabilitySpec", "Handler", "StepContext", "StepOutput", "capability"]


class StepOutput(msgspec.Struct, kw_only=True):
    """What a handler returns: the output, and the provider calls it made."""

    output: dict[str, Any] = msgspec.field(default_factory=dict)
    calls: list[CallRecord] = msgspec.field(default_factory=list)
    routing: list[RoutingDecision] = msgspec.field(default_factory=list)


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
    js: JetStreamContext
    """JetStream, for capabilities that keep data in KV or the object store."""
    payloads: PayloadStore
    names: Names
    _msg: Msg | None = field(default=None, repr=False)
    _journal: CallJournal | None = field(default=None, repr=False)
    _recorded: list[CallRecord] = field(default_factory=list, repr=False)

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
        if self._journal is not None:
            await self._journal.record(self.workflow_id, self.step_id, self.deliveries, call)

    async def kv(self, bucket: str) -> KeyValue:
        """A platform KV bucket by its short name (``MEMORY`` → ``JA_MEMORY``)."""
        return await self.js.key_value(self.names.bucket(bucket))

    async def heartbeat(self) -> None:
        """Tell JetStream the step is still running (the runtime also does this itself)."""
        if self._msg is not None:
            with contextlib.suppress(NatsError):
                await self._msg.in_progress()


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
