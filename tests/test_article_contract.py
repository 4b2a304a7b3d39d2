"""The seed article's request shape is accepted as it is: a string ``session_context``, no
``tenant`` (taken from the subject or the configured default), ``capability_limits`` as a
plain mapping. The richer object forms keep working."""

from __future__ import annotations

import json

from jetagent import Status
from jetagent.contract import validate_request
from jetagent.events import Started
from tests.support.platform import InProcessPlatform

ARTICLE_REQUEST = {
    "request_id": "article-1",
    "instruction": "What is 6 * 7?",
    "session_context": "user-42 asked about arithmetic yesterday",
    "capability_limits": {"max_iterations": 4, "token_cap": 4000},
}


def _validate(body: dict[str, object], *, subject_tenant: str | None = None) -> tuple:  # type: ignore[type-arg]
    return validate_request(
        json.dumps(body).encode(),
        subject_tenant=subject_tenant,
        tenants=None,
        tools=None,
        models={"offline-planner"},
        max_bytes=256 * 1024,
        default_tenant="default",
    )


def test_a_string_session_context_names_the_session() -> None:
    request, problems = _validate(ARTICLE_REQUEST, subject_tenant="acme")
    assert problems == []
    assert request is not None
    # The same string is the same session (memory is keyed by the session id) ...
    again, _ = _validate({**ARTICLE_REQUEST, "request_id": "article-2"}, subject_tenant="acme")
    assert again is not None
    assert request.session_context.session_id == again.session_context.session_id
    assert request.session_context.session_id is not None
    # ... and a string that is already a valid id is kept as it is.
    plain, _ = _validate({**ARTICLE_REQUEST, "session_context": "sess-7"}, subject_tenant="acme")
    assert plain is not None
    assert plain.session_context.session_id == "sess-7"
    other, _ = _validate({**ARTICLE_REQUEST, "session_context": "another"}, subject_tenant="acme")
    assert other is not None
    assert other.session_context.session_id != request.session_context.session_id


def test_an_omitted_tenant_comes_from_the_subject_or_the_default() -> None:
    request, problems = _validate(ARTICLE_REQUEST, subject_tenant="acme")
    assert problems == []
    assert request is not None
    assert request.tenant == "acme"
    request, problems = _validate(ARTICLE_REQUEST, subject_tenant=None)
    assert problems == []
    assert request is not None
    assert request.tenant == "default"


def test_capability_limits_as_a_plain_mapping() -> None:
    request, _ = _validate(ARTICLE_REQUEST, subject_tenant="acme")
    assert request is not None
    assert request.capability_limits.max_iterations == 4
    assert request.capability_limits.token_cap == 4000


def test_the_object_forms_still_validate() -> None:
    body = {
        "request_id": "rich",
        "tenant": "acme",
        "instruction": "x",
        "session_context": {"session_id": "s1", "facts": {"a": "b"}},
    }
    request, problems = _validate(body, subject_tenant="acme")
    assert problems == []
    assert request is not None
    assert request.session_context.facts == {"a": "b"}
    # An empty string is no session at all, not a session named "".
    empty, _ = _validate({**body, "session_context": ""}, subject_tenant="acme")
    assert empty is not None
    assert empty.session_context.session_id is None
    # Neither an object nor a string: rejected with the field named.
    bad, problems = _validate({**body, "session_context": 7}, subject_tenant="acme")
    assert bad is None
    assert any(p.startswith("session_context") for p in problems)


async def test_the_article_request_from_raw_nats_runs_to_finalized(
    engine: InProcessPlatform,
) -> None:
    client = engine.client
    subject = engine.settings.names.request("acme")
    await client.js.publish(
        subject, json.dumps(ARTICLE_REQUEST).encode(), headers={"Nats-Msg-Id": "article-1"}
    )
    result = await client.result("article-1", timeout=30)
    assert result.status is Status.FINALIZED
    assert result.output.endswith("42")
    started = next(e for e in await client.events("article-1") if isinstance(e, Started))
    assert started.tenant == "acme"
    assert started.request["session_context"]["session_id"]
    view = await client.session("article-1")
    assert view.status is Status.FINALIZED
