"""How the adapters' failures become jetagent's errors (docs/ARCHITECTURE.md §6: dependency
errors are translated at the boundary).

Status mapping::

    429                          RateLimitedError (retry_after from the headers)
    408 409 425, 5xx, 529        TransientError   (529 is Anthropic's "overloaded")
    other 4xx (400 401 403 …)    PermanentError   with the provider's own message
    3xx (redirects not followed) PermanentError   the base_url is wrong
    2xx with an unusable body    TransientError   "malformed response body"

An OpenAI 429 whose error type is ``insufficient_quota`` is a PermanentError: the
account has no credit left, and a rate-limit retry (which counts as no failure) would
loop until someone pays.
"""

from __future__ import annotations

from typing import Any

import httpx

from jetagent.errors import (
    CapabilityError,
    JetagentError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from jetagent.llm import Usage
from jetagent.models import ModelConfig

from ._ratelimit import retry_after_s
from ._secrets import Redactor

__all__ = [
    "MalformedResponse",
    "details",
    "malformed",
    "status_error",
    "transport_error",
    "unsendable",
]

_MAX_MESSAGE = 500
_PERMANENT_429_TYPES = frozenset({"insufficient_quota"})


class MalformedResponse(JetagentError):
    """Raised by a parser when a 2xx body is not the expected shape; internal, never
    escapes a provider (it becomes a TransientError)."""

    def __init__(self, reason: str, usage: Usage | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.usage = usage


def transport_error(
    provider: str, model: ModelConfig, exc: httpx.HTTPError, redact: Redactor, read_s: float
) -> CapabilityError:
    """What a failure to send a request or read its answer means (``read_s``: the read
    timeout that applied)."""
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    where = f"{provider} at {model.base_url} for {model.name}"
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout | httpx.ConnectError):
        # Nothing reached the provider: nothing can have been billed.
        message = f"{where}: could not connect ({what})"
        return TransientError(
            redact(message), details=details(provider, usage_status="not_reported")
        )
    if isinstance(exc, httpx.ReadTimeout):
        message = f"{where}: no answer within the read timeout of {read_s} s"
        return TransientError(
            redact(message + "; usage unknown"),
            details=details(provider, usage_status="unknown"),
        )
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        # The request cannot be sent at all (bad scheme, illegal header value).
        return PermanentError(
            redact(f"{where}: cannot send the request ({what})"),
            details=details(provider, usage_status="not_reported"),
        )
    return TransientError(
        redact(f"{where}: {what}; usage unknown"),
        details=details(provider, usage_status="unknown"),
    )


def unsendable(
    provider: str, model: ModelConfig, exc: Exception, redact: Redactor
) -> PermanentError:
    """A request that cannot be sent at all: a bad ``base_url``, or a header value HTTP
    cannot carry."""
    return PermanentError(
        redact(f"cannot send a request for {model.name} to {provider}: {exc}"),
        details=details(provider, usage_status="not_reported"),
    )


def malformed(
    provider: str,
    model: ModelConfig,
    status: int,
    bad: MalformedResponse,
    redact: Redactor,
    *,
    what: str,
) -> TransientError:
    """A 2xx answer that is not what the API defines (``what``: how it was sent)."""
    return TransientError(
        f"{provider} {what} (HTTP {status}) for {model.name}: {_clip(redact(bad.reason))}",
        usage=bad.usage,
        details=details(
            provider,
            status=status,
            usage_status="reported" if bad.usage is not None else "unknown",
        ),
    )


def status_error(
    provider: str,
    model: ModelConfig,
    response: httpx.Response,
    redact: Redactor,
    *,
    message: str | None,
    error_type: str | None,
    usage: Usage | None,
    now: float,
) -> CapabilityError:
    """The error an HTTP error status stands for (the table above), with the provider's
    own ``message`` and ``error_type`` when its body has them."""
    status = response.status_code
    text = message or response.text.strip() or response.reason_phrase or "no message"
    # Redact before clipping: a clipped key would no longer match.
    full = f"{provider} HTTP {status} for {model.name}: {_clip(redact(text))}"
    info = details(
        provider,
        status=status,
        error_type=error_type,
        usage_status="reported" if usage is not None else "not_reported",
    )
    retry_after = retry_after_s(response.headers, now=now)
    if status == 429 and error_type not in _PERMANENT_429_TYPES:
        return RateLimitedError(full, retry_after=retry_after, usage=usage, details=info)
    if status in (408, 409, 425) or status >= 500:
        return TransientError(full, retry_after=retry_after, usage=usage, details=info)
    if 300 <= status < 400:
        location = redact(response.headers.get("location", "?"))
        return PermanentError(
            f"{full} (redirected to {location}; check base_url)", usage=usage, details=info
        )
    if status < 200:
        return TransientError(full, usage=usage, details=info)
    return PermanentError(full, usage=usage, details=info)


def details(provider: str, **fields: Any) -> dict[str, Any]:
    """An error's details: the provider and every field that is set."""
    return {"provider": provider, **{k: v for k, v in fields.items() if v is not None}}


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
