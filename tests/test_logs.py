"""Log lines: JSON or text, each with the ids of the work in hand, and retry lines that
state the delay actually applied (README "Logs")."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator

import pytest
from opentelemetry import trace

from jetagent import logs
from jetagent.config import Settings
from jetagent.correlation import annotate, correlate
from jetagent.testing import jetagent_command
from tests.support.platform import InProcessPlatform
from tests.support.tools import STUMBLES
from tests.support.tracing import host_tracing

WORKFLOW = "0d63e395-7a96-4d1d-9678-85790eab5aa6"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A logger of the test's own, whose records reach a JSON handler writing to a buffer."""
    stream = io.StringIO()
    handler = logs.handler(log_format="json", service="jetagent-worker-tools", stream=stream)
    logger = logging.getLogger("jetagent.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)


def lines_of(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_carries_the_fields_and_the_ids_of_the_work_in_hand(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = captured
    logger.info("before any work")
    with correlate(workflow_id=WORKFLOW, capability="tools"):
        annotate(step_id="2", tool="stumbling", tenant="acme")  # learnt while handling
        logger.info("run %d again in %s s", 2, "0.25")
    logger.warning("after it")

    before, during, after = lines_of(stream)
    assert during["message"] == "run 2 again in 0.25 s"
    assert during["level"] == "INFO"
    assert during["logger"] == "jetagent.test-logs"
    assert during["service"] == "jetagent-worker-tools"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(during["timestamp"]))
    ids = {"workflow_id": WORKFLOW, "step_id": "2", "capability": "tools", "tool": "stumbling"}
    assert {k: during[k] for k in [*ids, "tenant"]} == {**ids, "tenant": "acme"}
    # Outside the work, no ids (the scope ended with it, annotations included).
    for line in (before, after):
        assert not set(line) & {*ids, "tenant"}, line
        assert line["service"] == "jetagent-worker-tools"
    assert after["level"] == "WARNING"


def test_a_traceback_is_part_of_the_json_line(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = captured
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("the handler failed")
    [line] = lines_of(stream)
    assert line["message"] == "the handler failed"
    assert "ValueError: boom" in str(line["exc_info"])


def test_records_of_other_libraries_get_the_ids_too(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    # The filter is on the handler: a record of nats-py's logger, propagated to a handler
    # that has it, carries the ids like jetagent's own.
    _, stream, handler = captured
    nats_logger = logging.getLogger("nats.aio.client")
    nats_logger.addHandler(handler)
    try:
        with correlate(workflow_id=WORKFLOW):
            nats_logger.error("Error: nats: timeout")
    finally:
        nats_logger.removeHandler(handler)
    [line] = lines_of(stream)
    assert line["logger"] == "nats.aio.client"
    assert line["workflow_id"] == WORKFLOW


async def test_concurrent_steps_each_log_their_own_ids(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = captured

    async def step(step_id: str) -> None:
        with correlate(workflow_id=WORKFLOW, step_id=step_id):
            for turn in range(3):
                logger.info("step %s turn %d", step_id, turn)
                await asyncio.sleep(0)  # interleave with the other step

    await asyncio.gather(step("1"), step("2"))
    lines = lines_of(stream)
    assert len(lines) == 6
    for line in lines:
        assert str(line["message"]).startswith(f"step {line['step_id']} ")


def test_a_line_logged_inside_a_span_names_its_trace(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, _ = captured
    with host_tracing(), trace.get_tracer("test").start_as_current_span("work") as span:
        logger.info("inside")
    context = span.get_span_context()
    [line] = lines_of(stream)
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


def test_text_lines_show_the_ids_compactly() -> None:
    stream = io.StringIO()
    handler = logs.handler(log_format="text", service="jetagent-orchestrator", stream=stream)
    logger = logging.getLogger("jetagent.test-text")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with correlate(workflow_id=WORKFLOW, step_id="3", capability="tools", tenant="acme"):
            annotate(tool="calculator")
            logger.info("rate limited")
        with correlate(workflow_id="order-2026-0001"):
            logger.info("rejected")
        logger.info("ready")
    finally:
        logger.removeHandler(handler)
    first, second, third = stream.getvalue().splitlines()
    assert first.endswith(
        "jetagent.test-text: rate limited [wf=0d63e395 step=3 tools/calculator tenant=acme]"
    )
    assert second.endswith("rejected [wf=order-2026-0001]")  # not a UUID: kept whole
    assert third.endswith("jetagent.test-text: ready")


@pytest.mark.parametrize(
    ("value", "said"), [(0.05, "0.05"), (0.25, "0.25"), (1.0, "1"), (30.0, "30"), (0.1234, "0.123")]
)
def test_delays_are_said_as_applied(value: float, said: str) -> None:
    assert logs.seconds(value) == said


# -- retry lines: the delay stated is the delay applied ----------------------------------

_STATED = re.compile(r"(?:again in|retrying in) ([0-9.]+) s")


async def test_retry_lines_state_the_delays_actually_applied(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Two steps retried three times each: one by runs (``nak(delay)``, the planned
    backoff 0.05, 0.1, 0.2 s), one by waits within its run (rate limited, retry-after
    0.05 s). Each line's stated delay is compared with the gap measured between the end
    of one run (or call) and the start of the next."""
    caplog.set_level(logging.INFO, logger="jetagent.worker")
    config = settings.model_copy(update={"step_retry_base_s": 0.05, "max_step_attempts": 1})
    platform = await InProcessPlatform(config).start()
    try:
        client = platform.client
        by_runs = await client.submit(
            instruction='call stumbling {"fails": 3}', tenant="acme", allowed_tools=["stumbling"]
        )
        by_waits = await client.submit(
            instruction='call stumbling {"fails": 3, "rate_limited": true, "retry_after": 0.05}',
            tenant="acme",
            allowed_tools=["stumbling"],
        )
        for wid in (by_runs, by_waits):
            assert (await client.result(wid, timeout=30)).ok
    finally:
        await platform.stop()

    stated: dict[str, list[float]] = {by_runs: [], by_waits: []}
    for record in caplog.records:
        message = record.getMessage()
        if (match := _STATED.search(message)) and (wid := message.split()[1][:36]) in stated:
            stated[wid].append(float(match.group(1)))
    assert stated[by_runs] == [0.05, 0.1, 0.2]  # the planned backoff, as it was applied
    for wid in (by_runs, by_waits):
        runs = [(start, end) for w, _, start, end in STUMBLES if w == wid]
        assert len(runs) == 4  # three failures, then the answer
        gaps = [after[0] - before[1] for before, after in itertools.pairwise(runs)]
        assert len(stated[wid]) == len(gaps) == 3, (stated[wid], gaps)
        for said, gap in zip(stated[wid], gaps, strict=True):
            # The next run cannot start before the delay applied (a little scheduling
            # slack at most); a loaded machine may start it later.
            assert said - 0.01 <= gap <= said + 1.0, f"said {said} s, waited {gap:.3f} s"


async def test_a_models_rate_limit_lines_state_the_waits_applied(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The reasoning gateway waits out 429s within a model call: each line's wait is
    compared with the gap between the requests the provider received."""
    from capabilities.reasoning import HttpSettings, ModelGateway
    from jetagent.errors import PermanentError
    from jetagent.llm import Message
    from jetagent.models import ModelCatalog
    from tests.fakes.llm_servers import FakeOpenAI, model_for, openai_error

    monkeypatch.setenv("JA_TEST_LOGS_KEY", "sk-test")
    caplog.set_level(logging.INFO, logger="jetagent.reasoning")
    limited = openai_error(429, "Rate limit reached", headers={"retry-after-ms": "50"})
    with FakeOpenAI() as openai:
        openai.always(limited)
        retry = {"max_attempts": 4, "max_total_s": 30}
        model = model_for(openai, "gpt-limited", api_key_env="JA_TEST_LOGS_KEY", retry=retry)
        catalog = ModelCatalog(models={model.name: model}, source="test")
        settings = HttpSettings(read_timeout_s=5.0, trust_env=False)
        async with ModelGateway(catalog, http_settings=settings, hedge_factor=None) as gateway:
            with pytest.raises(PermanentError):
                await gateway.call(
                    models=["gpt-limited"],
                    messages=[Message(role="user", content="hi")],
                    tools=[],
                    max_tokens=50,
                    remaining_tokens=None,
                    remaining_usd=None,
                )
        arrivals = [request.at for request in openai.requests]
    stated = [
        float(match.group(1))
        for record in caplog.records
        if (match := _STATED.search(record.getMessage()))
    ]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert stated == [0.05, 0.05, 0.05]  # the provider's retry-after, as waited
    assert len(gaps) == len(stated)
    for said, gap in zip(stated, gaps, strict=True):
        assert said - 0.01 <= gap <= said + 1.0, f"said {said} s, waited {gap:.3f} s"


def test_a_service_that_cannot_start_says_why_in_a_json_line() -> None:
    # A log collector reading JSON lines gets the reason a service stopped as one too.
    done = subprocess.run(
        [*jetagent_command(), "--log-format", "json", "orchestrator"],
        env={**os.environ, "NATS_URL": "http://127.0.0.1:4222"},  # not a NATS URL
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert not done.stderr
    [line] = [json.loads(text) for text in done.stdout.splitlines()]
    assert line["level"] == "ERROR"
    assert line["service"] == "jetagent-orchestrator"
    assert "NATS_URL" in line["message"]
