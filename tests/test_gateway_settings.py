"""Resilience settings per model in models.toml: they parse, are validated at start with
clear errors, reach the gateway (timeouts fire, hedges go out, breakers open, headers
arrive) and show in the routing decisions when they decide something."""

from __future__ import annotations

import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from capabilities.reasoning import (
    GatewayResult,
    HttpSettings,
    ModelGateway,
    OpenAIProvider,
    attempts_of,
    decisions_of,
)
from jetagent.config import Settings
from jetagent.errors import ConfigError, TransientError
from jetagent.llm import Message
from jetagent.models import ModelCatalog
from tests.fakes.clock import ManualClock
from tests.fakes.llm_servers import (
    FakeAnthropic,
    FakeOpenAI,
    anthropic_message,
    hang,
    openai_completion,
    openai_error,
)
from tests.support.platform import InProcessPlatform

HI = [Message(role="user", content="hi")]
# Generous transport defaults: the per-model settings must be what fires.
LOOSE = HttpSettings(connect_timeout_s=30.0, read_timeout_s=30.0, trust_env=False)

WORKED_EXAMPLE = """
[models.gpt-proxy]
provider = "openai"
base_url = "{base_url}"
context_window = 8192
max_output_tokens = 512
input_per_mtok = 1
output_per_mtok = 2
typical_latency_s = 1.0

[models.gpt-proxy.timeouts]
connect_s = 2.0
read_s = 20.0
total_s = 30.0

[models.gpt-proxy.hedge]
after = "p95"
delay_s = 1.5
min_samples = 10
max_hedges = 2
target = "fallback"

[models.gpt-proxy.breaker]
failure_threshold = 3
cool_down_s = 10.0

[models.gpt-proxy.retry]
max_attempts = 4
max_total_s = 20.0
max_wait_s = 5.0

[models.gpt-proxy.headers]
X-Route = "eu-west"
"OpenAI-Organization" = "org-123"
"""


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def catalog_text(server: FakeOpenAI, extra: str = "") -> str:
    return (
        f"""
[models.gpt-local]
provider = "openai"
base_url = "{server.base_url}"
context_window = 8192
max_output_tokens = 512
input_per_mtok = 1
output_per_mtok = 2
typical_latency_s = 5.0
"""
        + extra
    )


async def ask(gateway: ModelGateway, model: str = "gpt-local") -> GatewayResult:
    return await gateway.call(
        models=[model],
        messages=HI,
        tools=[],
        max_tokens=50,
        remaining_tokens=None,
        remaining_usd=None,
    )


# -- parsing and validation -------------------------------------------------------------


def test_the_worked_example_parses() -> None:
    catalog = ModelCatalog.parse(WORKED_EXAMPLE.format(base_url="http://127.0.0.1:1/v1"))
    model = catalog.get("gpt-proxy")
    assert (model.timeouts.connect_s, model.timeouts.read_s, model.timeouts.total_s) == (
        2.0,
        20.0,
        30.0,
    )
    assert (model.hedge.after, model.hedge.delay_s, model.hedge.max_hedges) == ("p95", 1.5, 2)
    assert (model.hedge.min_samples, model.hedge.target) == (10, "fallback")
    assert (model.breaker.failure_threshold, model.breaker.cool_down_s) == (3, 10.0)
    assert (model.retry.max_attempts, model.retry.max_total_s, model.retry.max_wait_s) == (
        4,
        20.0,
        5.0,
    )
    assert dict(model.headers) == {"X-Route": "eu-west", "OpenAI-Organization": "org-123"}


def test_the_shipped_catalog_still_parses_with_defaults() -> None:
    model = ModelCatalog.load().get("gpt-4o-mini")
    assert model.timeouts.total_s is None
    assert model.hedge.delay_s is None
    assert model.retry.max_attempts >= 1


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[models.gpt-local.timeouts]\ntotal_s = -1\n", "models.gpt-local.timeouts.total_s"),
        ("[models.gpt-local.timeouts]\nread_s = 10\ntotal_s = 5\n", "read_s (10.0) is longer"),
        ("[models.gpt-local.hedge]\nmax_hedges = 9\n", "models.gpt-local.hedge.max_hedges"),
        ("[models.gpt-local.hedge]\nafter = 'p99'\n", "models.gpt-local.hedge.after"),
        ("[models.gpt-local.hedge]\ndelay = 1\n", "models.gpt-local.hedge.delay"),
        ("[models.gpt-local.breaker]\nfailure_threshold = 0\n", "breaker.failure_threshold"),
        ("[models.gpt-local.retry]\nmax_attempts = 0\n", "models.gpt-local.retry.max_attempts"),
        ("[models.gpt-local.headers]\nAuthorization = 'Bearer x'\n", "api_key_env"),
        ('[models.gpt-local.headers]\n"X-Bad" = "a\\nb"\n', "X-Bad"),
        ('[models.gpt-local.headers]\n"bad name" = "v"\n', "bad name"),
    ],
)
def test_bad_settings_are_refused_at_start_with_where_and_why(
    server: FakeOpenAI, extra: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        ModelCatalog.parse(catalog_text(server, extra), source="models.toml")
    assert expected in str(refused.value)
    assert "invalid model catalog models.toml" in str(refused.value)


def test_models_sharing_an_endpoint_must_agree_on_its_breaker(server: FakeOpenAI) -> None:
    twin = f"""
[models.gpt-twin]
provider = "openai"
base_url = "{server.base_url}"
context_window = 8192
max_output_tokens = 512
input_per_mtok = 1
output_per_mtok = 2
[models.gpt-twin.breaker]
failure_threshold = 2
"""
    with pytest.raises(ConfigError, match="share the endpoint"):
        ModelCatalog.parse(catalog_text(server, twin))


# -- the settings reach the gateway -----------------------------------------------------


async def test_the_configured_total_timeout_fires_on_a_hung_server(server: FakeOpenAI) -> None:
    catalog = ModelCatalog.parse(
        catalog_text(server, "[models.gpt-local.timeouts]\ntotal_s = 0.5\n")
    )
    server.script(hang())
    started = time.monotonic()
    async with ModelGateway(catalog, http_settings=LOOSE, hedge_factor=None) as gateway:
        with pytest.raises(TransientError) as failed:
            await ask(gateway)
    assert time.monotonic() - started < 2.0
    assert "0.5 s" in failed.value.message
    assert "timeouts.total_s" in failed.value.message
    assert [a.outcome for a in attempts_of(failed.value)] == ["failed"]
    assert any(d.kind == "timeout" for d in decisions_of(failed.value))


async def test_the_configured_read_timeout_fires_on_a_hung_server(server: FakeOpenAI) -> None:
    catalog = ModelCatalog.parse(
        catalog_text(server, "[models.gpt-local.timeouts]\nread_s = 0.4\n")
    )
    server.script(hang())
    started = time.monotonic()
    async with ModelGateway(catalog, http_settings=LOOSE, hedge_factor=None) as gateway:
        with pytest.raises(TransientError, match=r"read timeout of 0\.4 s"):
            await ask(gateway)
    assert time.monotonic() - started < 2.0


async def test_a_hedge_goes_out_after_the_configured_delay(server: FakeOpenAI) -> None:
    catalog = ModelCatalog.parse(catalog_text(server, "[models.gpt-local.hedge]\ndelay_s = 0.3\n"))
    server.script(hang(), openai_completion("the hedge"))
    async with ModelGateway(catalog, http_settings=LOOSE, clock=ManualClock()) as gateway:
        started = time.monotonic()
        result = await ask(gateway)
    _, second = server.requests
    assert 0.3 <= second.at - started < 1.5
    assert result.completion.text == "the hedge"
    [hedge] = [d for d in result.decisions if d.kind == "hedge"]
    assert hedge.reason == "hedge: gpt-local exceeded 0.3 s (hedge.delay_s)"


async def test_a_hedge_after_the_observed_p95(server: FakeOpenAI) -> None:
    extra = "[models.gpt-local.hedge]\nafter = 'p95'\ndelay_s = 5.0\nmin_samples = 5\n"
    catalog = ModelCatalog.parse(catalog_text(server, extra))
    async with ModelGateway(catalog, http_settings=LOOSE, clock=ManualClock()) as gateway:
        # Five quick answers teach the gateway this endpoint's p95 (well under 5 s).
        for _ in range(5):
            server.script(openai_completion("quick"))
            await ask(gateway)
        server.script(hang(), openai_completion("the hedge"))
        started = time.monotonic()
        result = await ask(gateway)
    assert time.monotonic() - started < 2.5
    assert result.completion.text == "the hedge"
    [hedge] = [d for d in result.decisions if d.kind == "hedge"]
    assert "p95 of the last 5 calls" in hedge.reason


async def test_the_breaker_opens_after_the_configured_count(server: FakeOpenAI) -> None:
    extra = "[models.gpt-local.breaker]\nfailure_threshold = 2\ncool_down_s = 60\n"
    catalog = ModelCatalog.parse(catalog_text(server, extra))
    server.always(openai_error(500, "down", type="server_error"))
    async with ModelGateway(
        catalog, http_settings=LOOSE, hedge_factor=None, clock=ManualClock()
    ) as gateway:
        for _ in range(2):
            with pytest.raises(TransientError, match="HTTP 500"):
                await ask(gateway)
        with pytest.raises(TransientError, match="circuit open") as refused:
            await ask(gateway)
        assert [s.state for s in gateway.breaker_states()] == ["open"]
    assert len(server.requests) == 2  # the third call never reached the server
    assert "after 2 failures" in refused.value.message
    assert "cool-down 60.0 s" in refused.value.message


async def test_extra_headers_arrive_at_the_server(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JA_TEST_HEADERS_KEY", "sk-header-test")
    extra = (
        'api_key_env = "JA_TEST_HEADERS_KEY"\n'
        "[models.gpt-local.headers]\n"
        'X-Route = "eu-west"\n'
        '"OpenAI-Organization" = "org-123"\n'
    )
    catalog = ModelCatalog.parse(catalog_text(server, extra))
    server.script(openai_completion("routed"))
    async with ModelGateway(catalog, http_settings=LOOSE, hedge_factor=None) as gateway:
        await ask(gateway)
    [request] = server.requests
    assert request.headers["x-route"] == "eu-west"
    assert request.headers["openai-organization"] == "org-123"
    # The adapter's own headers are still there.
    assert request.headers["authorization"] == "Bearer sk-header-test"
    assert request.headers["content-type"] == "application/json"


async def test_a_hedge_goes_to_the_configured_candidates(server: FakeOpenAI) -> None:
    with FakeOpenAI() as other:
        extra = (
            '[models.gpt-local.hedge]\ndelay_s = 0.2\nmodels = ["gpt-other"]\n'
            f'[models.gpt-other]\nprovider = "openai"\nbase_url = "{other.base_url}"\n'
            "context_window = 8192\nmax_output_tokens = 512\n"
            "input_per_mtok = 1\noutput_per_mtok = 2\n"
        )
        catalog = ModelCatalog.parse(catalog_text(server, extra))
        server.script(hang())
        other.script(openai_completion("from the other one"))
        async with ModelGateway(catalog, http_settings=LOOSE, clock=ManualClock()) as gateway:
            result = await ask(gateway)
    assert result.completion.text == "from the other one"
    assert len(server.requests) == 1  # gpt-local was not hedged with itself
    assert [(d.kind, d.model) for d in result.decisions] == [
        ("preferred", "gpt-local"),
        ("hedge", "gpt-other"),
    ]


def test_hedge_candidates_must_exist(server: FakeOpenAI) -> None:
    extra = '[models.gpt-local.hedge]\nmodels = ["gpt-nowhere"]\n'
    with pytest.raises(ConfigError, match="unknown model 'gpt-nowhere'"):
        ModelCatalog.parse(catalog_text(server, extra))


def test_the_readme_worked_example_parses() -> None:
    # The README's example is what users copy: it must stay a valid catalog entry.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Resilience settings") :]
    example = section[section.index("```toml\n") + 8 :]
    example = example[: example.index("```")]
    shipped = resources.files("jetagent").joinpath("models.toml").read_text()
    catalog = ModelCatalog.parse(shipped + example, source="README")
    model = catalog.get("gpt-proxy")
    assert model.hedge.after == "p95"
    assert model.breaker.failure_threshold == 3
    assert dict(model.headers)["X-Route"] == "eu-west"


def test_connect_and_read_timeouts_reach_the_http_client(server: FakeOpenAI) -> None:
    extra = "[models.gpt-local.timeouts]\nconnect_s = 0.7\nread_s = 9\n"
    model = ModelCatalog.parse(catalog_text(server, extra)).get("gpt-local")
    plain = ModelCatalog.parse(catalog_text(server)).get("gpt-local")
    provider = OpenAIProvider(settings=LOOSE)
    # A connect timeout cannot be provoked on loopback (a closed port refuses at once),
    # so this checks the timeouts each request is sent with.
    configured = provider._timeout(model)
    assert (configured.connect, configured.read) == (0.7, 9.0)
    default = provider._timeout(plain)
    assert (default.connect, default.read) == (30.0, 30.0)


async def test_settings_from_the_catalog_decide_in_a_running_platform(
    settings: Settings, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through the real worker: the catalog's timeout fires, the header arrives, and the
    # step's routing says which setting decided.
    monkeypatch.setenv("JA_TEST_HEADERS_KEY", "sk-header-test")
    with FakeAnthropic() as anthropic:
        extra = (
            'api_key_env = "JA_TEST_HEADERS_KEY"\n'
            'fallbacks = ["claude-local"]\n'
            "[models.gpt-local.timeouts]\ntotal_s = 0.5\n"
            '[models.gpt-local.headers]\nX-Route = "eu-west"\n'
            f'[models.claude-local]\nprovider = "anthropic"\nbase_url = "{anthropic.url}"\n'
            'api_key_env = "JA_TEST_HEADERS_KEY"\n'
            "context_window = 8192\nmax_output_tokens = 512\n"
            "input_per_mtok = 1\noutput_per_mtok = 2\n"
        )
        shipped = resources.files("jetagent").joinpath("models.toml").read_text()
        catalog = ModelCatalog.parse(shipped + catalog_text(server, extra))
        server.script(hang())
        anthropic.script(anthropic_message("Oslo."))
        platform = await InProcessPlatform(settings, catalog=catalog).start()
        try:
            client = platform.client
            wid = await client.submit(
                instruction="What is the capital of Norway?",
                model_preferences={"models": ["gpt-local"]},
            )
            result = await client.result(wid, timeout=30)
            [step] = await client.step_results(wid)
        finally:
            await platform.stop()

    assert result.output == "Oslo."
    assert [(d.model, d.reason.split(":")[0]) for d in step.routing] == [
        ("gpt-local", "preferred"),
        ("gpt-local", "timeout"),
        ("claude-local", "failover"),
    ]
    assert step.routing[1].reason == (
        "timeout: gpt-local gave no answer within 0.5 s (timeouts.total_s of gpt-local)"
    )
    assert [(c.model, c.outcome) for c in step.calls] == [
        ("gpt-local", "failed"),
        ("claude-local", "ok"),
    ]
    [request] = server.requests
    assert request.headers["x-route"] == "eu-west"
    assert "x-route" not in anthropic.requests[0].headers  # headers are per endpoint
    # Every request either server received is a call of the step, each once.
    assert len(step.calls) == len(server.requests) + len(anthropic.requests)
