"""Tools the tests add to the tools worker (``JETAGENT_TOOLS=tests.support.tools:TEST_TOOLS``)."""

from __future__ import annotations

import asyncio

from jetagent import StepContext, StepOutput, tool
from jetagent.events import CallRecord
from jetagent.llm import Usage

BIG_OUTPUT_BYTES = 5 * 1024 * 1024


@tool(description="Spend up to `tokens` tokens (an LLM-backed tool, say).", max_tokens=100)
async def burn(ctx: StepContext, tokens: int) -> StepOutput:
    used = min(tokens, 100)
    call = CallRecord(
        model="burn-model", provider="test", outcome="ok", usage=Usage(output_tokens=used)
    )
    return StepOutput(output={"burned": used}, calls=[call])


@tool(description="Return a very large output.")
def big(size: int = BIG_OUTPUT_BYTES) -> str:
    return "x" * size


@tool(description="Sleep for a while, then answer.")
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@tool(description="Delete everything (needs a human's approval).", requires_approval=True)
def dangerous(target: str) -> str:
    return f"deleted {target}"


TEST_TOOLS = [burn, big, slow, dangerous]


def _spin(seconds: float) -> float:
    import time

    end = time.process_time() + seconds
    x = 0.0
    while time.process_time() < end:
        x += 1.0
    return x


@tool(
    description="Burn CPU for a while (a CPU-bound tool, run in a process pool).", runs_in="process"
)
def crunch(seconds: float) -> str:
    _spin(seconds)
    return f"crunched {seconds}"


TEST_TOOLS.append(crunch)


@tool(description="Always fails with a transient error (a provider that stays down).")
async def flaky(note: str = "") -> str:
    from jetagent import TransientError

    raise TransientError("the upstream is still down", retry_after=0.05)


TEST_TOOLS.append(flaky)


@tool(description="Note this run in the file `log`, record a provider call, then sleep.")
async def logged_sleep(ctx: StepContext, seconds: float, log: str, tokens: int = 0) -> str:
    import os

    def note() -> None:
        with open(log, "a") as runs:
            runs.write(f"{os.getpid()} {ctx.deliveries}\n")

    await asyncio.to_thread(note)  # one line per run: which process, which delivery
    if tokens:
        # A call made (and billed) before the long wait: its usage must be recorded
        # even if this run dies during the sleep.
        await ctx.record_call(
            CallRecord(
                model="sleep-model",
                provider="test",
                outcome="ok",
                usage=Usage(output_tokens=tokens),
            )
        )
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


TEST_TOOLS.append(logged_sleep)


@tool(description="Always rate limited (a provider that keeps answering 429).")
async def throttled(note: str = "") -> str:
    from jetagent import RateLimitedError

    raise RateLimitedError("the provider answered 429", retry_after=0.05)


TEST_TOOLS.append(throttled)


@tool(description="Bill a provider call, then fail for now on the first run only.")
async def flaky_once(ctx: StepContext, note: str = "") -> str:
    from jetagent import TransientError

    await ctx.record_call(
        CallRecord(model="flaky-model", provider="test", outcome="ok", usage=Usage(output_tokens=5))
    )
    if ctx.deliveries == 1:
        raise TransientError("the upstream blinked", retry_after=0.05)
    return f"worked on run {ctx.deliveries}"


TEST_TOOLS.append(flaky_once)


DOWN_RUNS: list[tuple[str, str, int]] = []
"""(tool, workflow id, delivery) of every run of the two always-down tools below."""


@tool(description="An upstream that is always down; retried on its own budget.", retry_max_runs=2)
async def down_budgeted(ctx: StepContext, note: str = "") -> str:
    from jetagent import TransientError

    DOWN_RUNS.append(("down_budgeted", ctx.workflow_id, ctx.deliveries))
    raise TransientError("the upstream is down", retry_after=0.05)


TEST_TOOLS.append(down_budgeted)


@tool(description="An upstream that is always down; retried on the global budget.")
async def down_always(ctx: StepContext, note: str = "") -> str:
    from jetagent import TransientError

    DOWN_RUNS.append(("down_always", ctx.workflow_id, ctx.deliveries))
    raise TransientError("the upstream is down", retry_after=0.05)


TEST_TOOLS.append(down_always)


def _append(path: str, line: str) -> None:
    with open(path, "a") as file:
        file.write(line)


STUMBLES: list[tuple[str, int, float, float]] = []
"""(workflow id, delivery, start, end) of every run of ``stumbling`` in this process, in
``time.monotonic`` (CLOCK_MONOTONIC: comparable across processes of one machine)."""


@tool(
    description="Fail for now on the first `fails` runs, or be rate limited on the first "
    "`fails` calls (retry after `retry_after` s, if given)."
)
async def stumbling(
    ctx: StepContext,
    fails: int,
    retry_after: float | None = None,
    log: str = "",
    rate_limited: bool = False,
) -> str:
    import time

    from jetagent import RateLimitedError, TransientError

    started = time.monotonic()
    try:
        if rate_limited:  # waited out within the run: each call is one "run" here
            calls = sum(1 for s in STUMBLES if s[0] == ctx.workflow_id) + 1
            if calls <= fails:
                raise RateLimitedError(f"rate limited on call {calls}", retry_after=retry_after)
            return f"answered on call {calls}"
        if ctx.deliveries <= fails:
            raise TransientError(f"stumbled on run {ctx.deliveries}", retry_after=retry_after)
        return f"stood on run {ctx.deliveries}"
    finally:
        ended = time.monotonic()
        STUMBLES.append((ctx.workflow_id, ctx.deliveries, started, ended))
        if log:  # a worker in another process: the test reads the runs from this file
            line = f"{ctx.workflow_id} {ctx.deliveries} {started} {ended}\n"
            await asyncio.to_thread(_append, log, line)


TEST_TOOLS.append(stumbling)


@tool(description="Bill a provider call, then fail for now on the first two runs.")
async def flaky_twice(ctx: StepContext, note: str = "") -> str:
    from jetagent import TransientError

    await ctx.record_call(
        CallRecord(model="flaky-model", provider="test", outcome="ok", usage=Usage(output_tokens=5))
    )
    if ctx.deliveries <= 2:
        raise TransientError("the upstream blinked", retry_after=0.05)
    return f"worked on run {ctx.deliveries}"


TEST_TOOLS.append(flaky_twice)


@tool(description="Note this run in `log`, wait for the file `gate`, fail for now on run 1 only.")
async def gated(ctx: StepContext, gate: str, log: str) -> str:
    import os
    import time
    from pathlib import Path

    from jetagent import TransientError

    def note() -> None:
        with open(log, "a") as runs:
            runs.write(f"{os.getpid()} {ctx.deliveries} {time.time():.3f}\n")

    await asyncio.to_thread(note)
    while not await asyncio.to_thread(Path(gate).exists):  # noqa: ASYNC110 (another process opens it)
        await asyncio.sleep(0.02)
    if ctx.deliveries == 1:
        raise TransientError("the upstream asks to come back in a second", retry_after=1.0)
    return f"passed the gate on run {ctx.deliveries}"


TEST_TOOLS.append(gated)
