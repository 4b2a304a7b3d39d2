"""Shared HTTP plumbing of the adapters: one pooled ``httpx.AsyncClient`` per provider,
explicit timeouts, and the translation of every httpx failure and HTTP error status into
jetagent's errors (docs/ARCHITECTURE.md §6: dependency errors are translated at the boundary;
the mapping is ``_errors``'s).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import httpx
import msgspec

from jetagent.errors import (
    CapabilityError,
    PermanentError,
)
from jetagent.llm import Completion, Message, ToolSpec, Usage
from jetagent.models import ModelConfig

from ._errors import (
    MalformedResponse,
    malformed,
    status_error,
    transport_error,
    unsendable,
)
from ._secrets import Redactor, Secret, read_api_key

__all__ = [
    "DeltaSink",
    "HttpProvider",
    "HttpSettings",
    "MalformedResponse",
    "StreamParser",
    "WireUsage",
    "decode_any",
]

DeltaSink = Callable[[str], Awaitable[None]]
"""Receives each piece of answer text as the provider streams it."""


class StreamParser(Protocol):
    """Folds one API's stream events into the ``Completion`` its plain answer gives."""

    def feed(self, event: str, data: str) -> str:
        """Take one event; return the text it adds."""
        ...

    def completion(self) -> Completion:
        """The whole answer; raises MalformedResponse if the stream did not end."""
        ...


class WireUsage(Protocol):
    """An API's usage object, decoded: it knows jetagent's ``Usage`` of itself."""

    def to_usage(self) -> Usage:
        """The same counts in jetagent's terms."""
        ...


T = TypeVar("T")
UsageStatus = Literal["reported", "not_reported", "unknown"]


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    """Timeouts and connection-pool limits of one provider's HTTP client."""

    connect_timeout_s: float = 5.0
    """Time to open a TCP/TLS connection."""
    read_timeout_s: float = 120.0
    """Longest silence while waiting for the answer (a long completion is one silence)."""
    write_timeout_s: float = 30.0
    """Time to send the request body."""
    pool_timeout_s: float = 10.0
    """Time to wait for a free pooled connection."""
    max_connections: int = 100
    """Concurrent connections per provider client, over all hosts."""
    max_keepalive_connections: int = 20
    """Idle connections kept open for reuse."""
    trust_env: bool = True
    """Honour ``HTTPS_PROXY``/``NO_PROXY`` and ``SSL_CERT_FILE`` from the environment."""


class HttpProvider(ABC):
    """Base of the HTTP adapters: subclasses say how to build a request, parse an
    answer and read an error body; this class sends it and maps every failure."""

    name: str
    """Provider name as the catalog spells it."""
    streams = True
    """``complete`` takes ``on_delta`` and then uses the API's streaming form."""

    def __init__(
        self,
        *,
        settings: HttpSettings | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``wall_clock`` turns ``retry-after`` HTTP dates into delays (tests inject it)."""
        self._settings = settings or HttpSettings()
        self._wall_clock = wall_clock
        s = self._settings
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=s.connect_timeout_s,
                read=s.read_timeout_s,
                write=s.write_timeout_s,
                pool=s.pool_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=s.max_connections,
                max_keepalive_connections=s.max_keepalive_connections,
            ),
            follow_redirects=False,
            trust_env=s.trust_env,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    async def aclose(self) -> None:
        """Close the pooled connections; idempotent."""
        await self._client.aclose()

    async def complete(
        self,
        model: ModelConfig,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec],
        max_tokens: int,
        on_delta: DeltaSink | None = None,
    ) -> Completion:
        """Send one request to ``model``'s endpoint and return its answer.

        With ``on_delta`` the request asks for a stream and each piece of text goes to
        ``on_delta`` as it arrives; the ``Completion`` (text, tool calls, the provider's
        final usage report) is the same as without. A stream cut before its end raises
        ``TransientError`` (usage unknown), as a cut plain answer would."""
        if not model.base_url:
            raise PermanentError(f"model {model.name} ({self.name}) has no base_url")
        key = read_api_key(model)
        redact = Redactor(key)
        stream = on_delta is not None
        try:
            body = msgspec.json.encode(
                self.request_body(model, messages, tools, max_tokens, stream=stream)
            )
        except (TypeError, msgspec.EncodeError) as exc:
            raise PermanentError(f"cannot encode the request for {model.name}: {exc}") from None
        if on_delta is not None:
            return await self._stream(model, body, key, redact, on_delta)
        response = await self._send(model, body, key, redact)
        return self._handle(model, response, redact)

    # -- what each API defines ----------------------------------------------------------

    path: str
    """The endpoint's path under the model's ``base_url``."""

    def url(self, model: ModelConfig) -> str:
        """The endpoint to POST to: ``{base_url}{path}``."""
        return f"{(model.base_url or '').rstrip('/')}{self.path}"

    @abstractmethod
    def headers(self, key: str | None) -> dict[str, str]:
        """Request headers, including the auth header when there is a key."""

    @abstractmethod
    def request_body(
        self,
        model: ModelConfig,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        max_tokens: int,
        *,
        stream: bool = False,
    ) -> dict[str, Any]:
        """The JSON request body; raises PermanentError for messages the API cannot take."""

    stream_type: Callable[..., StreamParser]
    """The parser of this API's stream events (made with ``model`` and ``provider``)."""

    def stream_parser(self, model: ModelConfig) -> StreamParser:
        """A fresh parser of this API's stream events."""
        return self.stream_type(model=model.name, provider=self.name)

    @abstractmethod
    def parse_completion(self, model: ModelConfig, content: bytes) -> Completion:
        """The answer from a 2xx body; raises MalformedResponse when it is unusable."""

    @abstractmethod
    def error_info(self, payload: Any) -> tuple[str | None, str | None]:
        """(message, error type) from a decoded error body, if it has them."""

    wire_usage: type[WireUsage]
    """The API's usage object (what ``usage`` holds in its bodies)."""

    def usage_of(self, payload: Any) -> Usage | None:
        """The ``usage`` object of a decoded body, when it has a usable one."""
        if not isinstance(payload, dict) or not isinstance(payload.get("usage"), dict):
            return None
        try:
            usage: WireUsage = msgspec.convert(payload["usage"], self.wire_usage)
        except msgspec.ValidationError:
            return None
        return usage.to_usage()

    def decode_answer(self, content: bytes, answer: type[T]) -> T:
        """A 2xx body as the API's answer type; one that is not raises
        ``MalformedResponse`` with whatever usage it reports."""
        try:
            return msgspec.json.decode(content, type=answer)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise MalformedResponse(str(exc), self.usage_of(decode_any(content))) from None

    # -- sending and mapping ------------------------------------------------------------

    async def _send(
        self, model: ModelConfig, body: bytes, key: Secret | None, redact: Redactor
    ) -> httpx.Response:
        error: CapabilityError
        try:
            # The headers (with the key in plain text) are built inside this expression
            # and never bound to a local of ours that a traceback could show.
            return await self._client.post(
                self.url(model),
                content=body,
                headers=_with_extra(
                    self.headers(key.reveal() if key is not None else None), model.headers
                ),
                timeout=self._timeout(model),
            )
        except httpx.HTTPError as exc:
            error = self._transport_error(model, exc, redact)
        except (httpx.InvalidURL, UnicodeEncodeError) as exc:
            error = unsendable(self.name, model, exc, redact)
        # Raised outside the except blocks, so no __context__ keeps the httpx error,
        # whose request still holds the key in its headers.
        raise error

    async def _stream(
        self,
        model: ModelConfig,
        body: bytes,
        key: Secret | None,
        redact: Redactor,
        on_delta: DeltaSink,
    ) -> Completion:
        from ._sse import iter_sse  # the parsers import this module

        error: CapabilityError
        try:
            async with self._client.stream(
                "POST",
                self.url(model),
                content=body,
                headers=_with_extra(
                    self.headers(key.reveal() if key is not None else None), model.headers
                ),
                timeout=self._timeout(model),
            ) as response:
                if not 200 <= response.status_code < 300:
                    await response.aread()
                    return self._handle(model, response, redact)  # raises the mapped error
                if "event-stream" not in response.headers.get("content-type", ""):
                    # A server that ignores "stream" (some proxies and local servers)
                    # answers with the plain body: the same Completion, shown at once.
                    await response.aread()
                    completion = self._handle(model, response, redact)
                    if completion.text:
                        await on_delta(completion.text)
                    return completion
                parser = self.stream_parser(model)
                try:
                    async for event, data in iter_sse(response.aiter_lines()):
                        text = parser.feed(event, data)
                        if text:
                            await on_delta(text)
                    return parser.completion()
                except MalformedResponse as bad:
                    what = "sent a malformed stream"
                    error = malformed(
                        self.name, model, response.status_code, bad, redact, what=what
                    )
        except httpx.HTTPError as exc:
            # Includes a stream cut mid-way (RemoteProtocolError) and a silent one
            # (ReadTimeout between chunks): usage unknown.
            error = self._transport_error(model, exc, redact)
        except (httpx.InvalidURL, UnicodeEncodeError) as exc:
            error = unsendable(self.name, model, exc, redact)
        raise error

    def _timeout(self, model: ModelConfig) -> httpx.Timeout:
        """The client's timeouts, with the model's ``[timeouts]`` where it sets them."""
        s, t = self._settings, model.timeouts
        return httpx.Timeout(
            connect=t.connect_s or s.connect_timeout_s,
            read=t.read_s or s.read_timeout_s,
            write=s.write_timeout_s,
            pool=s.pool_timeout_s,
        )

    def _transport_error(
        self, model: ModelConfig, exc: httpx.HTTPError, redact: Redactor
    ) -> CapabilityError:
        read_s = model.timeouts.read_s or self._settings.read_timeout_s
        return transport_error(self.name, model, exc, redact, read_s)

    def _handle(self, model: ModelConfig, response: httpx.Response, redact: Redactor) -> Completion:
        status = response.status_code
        if 200 <= status < 300:
            try:
                return self.parse_completion(model, response.content)
            except MalformedResponse as bad:
                what = "returned a malformed response body"
                failed = malformed(self.name, model, status, bad, redact, what=what)
            raise failed
        payload = decode_any(response.content)
        message, error_type = self.error_info(payload)
        raise status_error(
            self.name,
            model,
            response,
            redact,
            message=message,
            error_type=error_type,
            usage=self.usage_of(payload),
            now=self._wall_clock(),
        )


def _with_extra(headers: dict[str, str], extra: tuple[tuple[str, str], ...]) -> httpx.Headers:
    # Case-insensitive: an extra "Anthropic-Version" replaces the adapter's
    # "anthropic-version" instead of sending both.
    merged = httpx.Headers(headers)
    for name, value in extra:
        merged[name] = value
    return merged


def decode_any(content: bytes) -> Any:
    """The JSON value of ``content``, or ``None`` when it is not JSON."""
    try:
        return msgspec.json.decode(content)
    except msgspec.DecodeError:
        return None
