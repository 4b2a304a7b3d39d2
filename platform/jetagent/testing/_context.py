"""``step_context()``: a ``StepContext`` for unit-testing a capability, no worker needed.

Like ``temporalio.testing``'s activity environment: a handler is an async function of a
``StepContext``, so a test builds one and calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NATS

from jetagent.config import Settings
from jetagent.events import CallRecord, Spend
from jetagent.payloads import PayloadStore
from jetagent.subjects import Names
from jetagent.worker._context import StepContext, StepServices

__all__ = ["step_context"]

_PAYLOAD_THRESHOLD: int = Settings.model_fields["payload_threshold_bytes"].default


def step_context(
    *,
    input: Mapping[str, Any] | None = None,
    tool: str | None = None,
    capability: str = "tools",
    tenant: str = "default",
    workflow_id: str = "wf-test",
    step_id: str = "step-1",
    attempt: int = 1,
    iteration: int = 1,
    deliveries: int = 1,
    reservation: Spend | None = None,
    deadline_at: datetime | None = None,
    calls: list[CallRecord] | None = None,
    nc: NATS | None = None,
    settings: Settings | None = None,
) -> StepContext:
    """A ``StepContext`` for calling a capability's handler (or a tool) in a test.

    Every argument is optional; the defaults describe a first delivery of step
    ``step-1`` of workflow ``wf-test`` for tenant ``default``, with no budget reserved
    and no deadline.

    - ``input``: the step's input (a copy is taken); ``{}`` by default.
    - ``calls``: a list that receives each call the handler reports with
      ``record_call``, for the test to inspect (nothing is journaled).
    - ``nc`` and ``settings``: a NATS connection, for a capability that keeps data in
      KV buckets or the object store (``ctx.kv()``, ``ctx.payloads``) or reads streams;
      ``settings`` gives the names' prefix and the payload threshold. Without ``nc``
      those raise :class:`~jetagent.errors.ConfigError`; token deltas
      (``ctx.tokens()``) go nowhere and ``heartbeat()`` does nothing.

    Example::

        from jetagent import StepContext, StepOutput, capability
        from jetagent.events import CallRecord
        from jetagent.testing import step_context

        @capability("echo")
        async def echo(step: StepContext) -> StepOutput:
            return StepOutput(output={"text": step.input["text"], "tenant": step.tenant})

        async def test_echo_answers_for_its_tenant() -> None:
            reported: list[CallRecord] = []
            step = step_context(input={"text": "hi"}, tenant="acme", calls=reported)
            out = await echo.handler(step)
            assert out.output == {"text": "hi", "tenant": "acme"}
            assert reported == []  # it called no provider
    """
    names = settings.names if settings is not None else Names()
    payloads = None
    if nc is not None:
        payloads = PayloadStore(
            nc.jetstream(),
            bucket=names.bucket("PAYLOADS"),
            threshold=(
                settings.payload_threshold_bytes if settings is not None else _PAYLOAD_THRESHOLD
            ),
        )
    return StepContext(
        workflow_id=workflow_id,
        step_id=step_id,
        capability=capability,
        tool=tool,
        attempt=attempt,
        iteration=iteration,
        tenant=tenant,
        input=dict(input or {}),
        reservation=reservation or Spend(),
        deadline_at=deadline_at,
        deliveries=deliveries,
        _services=StepServices(names=names, nc=nc, payloads=payloads),
        _recorded=calls if calls is not None else [],
    )
