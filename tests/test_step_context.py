"""``jetagent.testing.step_context``: a capability's handler tested without a worker."""

from __future__ import annotations

import pytest

from jetagent import CapabilitySpec, Settings, StepContext, StepOutput, capability
from jetagent.errors import ConfigError
from jetagent.events import CallRecord
from jetagent.jetstream import connect
from jetagent.jetstream.provision import provision
from jetagent.llm import Usage
from jetagent.testing import step_context


def _answering(call: CallRecord) -> CapabilitySpec:
    @capability("answer")
    async def answer(step: StepContext) -> StepOutput:
        await step.record_call(call)
        await step.record_call(call)  # the same call twice is one call
        await step.heartbeat()  # nothing to tell without a message: a no-op
        return StepOutput(output={"echo": step.input["text"], "tenant": step.tenant})

    return answer


async def test_a_handler_runs_on_a_context_without_nats_and_its_calls_are_recorded() -> None:
    call = CallRecord(model="m", provider="offline", outcome="ok", usage=Usage(input_tokens=3))
    reported: list[CallRecord] = []
    step = step_context(input={"text": "hi"}, tenant="acme", calls=reported)
    out = await _answering(call).handler(step)
    assert isinstance(out, StepOutput)
    assert out.output == {"echo": "hi", "tenant": "acme"}
    assert reported == [call]
    # The defaults: a first delivery of one step, nothing reserved, no deadline.
    assert (step.workflow_id, step.step_id, step.deliveries) == ("wf-test", "step-1", 1)
    assert step.deadline_at is None


async def test_what_needs_nats_says_how_to_get_it() -> None:
    step = step_context()
    with pytest.raises(ConfigError, match="step_context"):
        await step.kv("MEMORY")
    with pytest.raises(ConfigError, match="step_context"):
        _ = step.payloads
    await step.tokens().delta("nobody listens")  # live deltas go nowhere


async def test_with_a_connection_kv_payloads_and_reads_work(settings: Settings) -> None:
    nc = await connect(settings.nats_url, name="test-step-context")
    try:
        await provision(nc, settings)
        step = step_context(nc=nc, settings=settings)
        assert step.names == settings.names
        kv = await step.kv("MEMORY")
        await kv.put("acme.k", b"v")
        assert await step.kv("MEMORY") is kv  # opened once
        ref = await step.payloads.put(b"x" * 10)
        assert await step.payloads.get(ref) == b"x" * 10
        # The bucket's stream, read from its leader: the newest change and the next one.
        bucket = settings.names.bucket("MEMORY")
        stream, subject = f"KV_{bucket}", f"$KV.{bucket}.acme.>"
        newest = await step.last_message(stream, subject)
        assert newest is not None
        assert newest.data == b"v"
        assert await step.next_message(stream, subject, after_seq=newest.seq) is None
        assert await step.last_message(stream, f"$KV.{bucket}.globex.>") is None
    finally:
        await nc.close()
