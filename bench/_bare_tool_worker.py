"""``python -m bench._bare_tool_worker <nats url> <prefix>``: a hand-written calculator worker.

The floor the ``capabilities`` suite compares ``jetagent worker tools`` with: plain
nats-py on uvloop, one durable pull consumer (``bare-tools``) on the prefix's
``StepScheduled.tools.calculator`` subjects with standing pull requests (as the
platform's ``Puller`` keeps them), and per message: decode the event, evaluate the
expression with the same calculator, encode a ``StepResult``, publish it to
``JA_STEPS`` (awaiting the PubAck), ack. No validation of arguments, no claim checks, no
write-once check on the result, no heartbeats, no telemetry, no concurrency limit.
Serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import UTC, datetime

import nats
import uvloop
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from capabilities.tools.calculator import evaluate
from jetagent.events import StepResult, StepScheduled, decode_events, encode
from jetagent.subjects import Names

from ._engine_baselines import _Standing

__all__ = ["CONSUMER", "main"]

CONSUMER = "bare-tools"


async def _serve(url: str, prefix: str) -> None:
    names = Names(prefix)
    nc = await nats.connect(url, name="bench-bare-tool-worker")
    js = nc.jetstream()
    await js.add_consumer(
        names.workflows_stream,
        ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            filter_subjects=[names.step_scheduled_tool("tools", "calculator")],
        ),
    )

    async def handle(msg: Msg) -> None:
        started = datetime.now(UTC)
        step = decode_events(msg.data)[-1]
        assert isinstance(step, StepScheduled)
        value = evaluate(str(step.input["arguments"]["expression"]))
        result = StepResult(
            workflow_id=step.workflow_id,
            step_id=step.step_id,
            capability=step.capability,
            tool=step.tool,
            tenant=step.tenant,
            ok=True,
            output={"result": value},
            started_at=started,
            finished_at=datetime.now(UTC),
            worker="bare",
        )
        await js.publish(
            names.step_result(step.capability, step.workflow_id, step.step_id), encode(result)
        )
        await msg.ack()

    puller = _Standing(nc, names.workflows_stream, CONSUMER, handle)
    await puller.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await puller.stop()
    await nc.drain()


def main() -> None:
    uvloop.run(_serve(sys.argv[1], sys.argv[2]))


if __name__ == "__main__":
    main()
