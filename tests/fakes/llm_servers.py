"""Local HTTP servers that speak the real wire formats of OpenAI Chat Completions and
the Anthropic Messages API, scripted per test.

Each server listens on 127.0.0.1 on a port the OS picks, answers requests in arrival
order from a queue of ``Reply`` values (an empty queue answers 500 in the provider's
error format, so a test that forgot a reply fails loudly, unless ``always`` set a reply
for every request after the queue: a provider that answers 429 forever, or hangs), and
records every request with its headers. A reply's ``delay_s`` simulates a slow
provider (``hang()`` one that never answers); closing the server cuts delays short.

Shapes follow the providers' API references:
https://platform.openai.com/docs/api-reference/chat/object and
https://docs.anthropic.com/en/api/messages (errors: /en/api/errors).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from jetagent.models import ModelConfig

__all__ = [
    "HANG_S",
    "FakeAnthropic",
    "FakeLLMServer",
    "FakeOpenAI",
    "RecordedRequest",
    "Reply",
    "anthropic_error",
    "anthropic_message",
    "hang",
    "model_for",
    "openai_completion",
    "openai_error",
]


@dataclass(frozen=True, kw_only=True)
class Reply:
    """One scripted HTTP answer."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0

    @classmethod
    def json(
        cls,
        payload: Any,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        delay_s: float = 0.0,
    ) -> Reply:
        """A JSON answer."""
        return cls(
            status=status,
            body=json.dumps(payload).encode(),
            headers={"content-type": "application/json", **(headers or {})},
            delay_s=delay_s,
        )


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the server received it (header names lower-cased)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)
    """When it arrived (``time.monotonic()``), to check when a hedge was sent."""

    @property
    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


HANG_S = 3600.0
"""A delay no test waits out: the server answers only when it is closed (it then drops
the connection without answering)."""


def hang() -> Reply:
    """A provider that accepted the request and never answers."""
    return Reply(delay_s=HANG_S)


class _Server(ThreadingHTTPServer):
    # Handlers of abandoned (hedged, timed-out) requests may still be sleeping; closing
    # must not wait for them (FakeLLMServer's stop event cuts their delays short).
    daemon_threads = True
    errors: list[BaseException]

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        # A client that gave up (timeout, cancelled hedge) closes its connection: fine.
        if exc is not None and not isinstance(exc, ConnectionError):
            self.errors.append(exc)


class FakeLLMServer:
    """A scripted HTTP server for one LLM API endpoint."""

    endpoint = "/"
    """The path the API posts to; other paths get a 404."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._always: Reply | None = None
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self.handler_errors: list[BaseException] = []
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._server.errors = self.handler_errors
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-{type(self).__name__}",
            daemon=True,
        )

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """The ``base_url`` a catalog entry for this server uses."""
        return self.url

    # -- scripting ----------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies, answered in request arrival order."""
        with self._lock:
            self._replies.extend(replies)

    def always(self, reply: Reply | None) -> None:
        """Answer ``reply`` to every request once the scripted queue is empty
        (``None``: back to the loud 500)."""
        with self._lock:
            self._always = reply

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far."""
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count: int, *, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until ``count`` requests have arrived (or fail after ``timeout``)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout=timeout):
                raise AssertionError(f"{len(self._requests)} requests arrived, wanted {count}")
            return list(self._requests)

    def error_reply(self, status: int, message: str) -> Reply:
        """An error answer in this API's format (overridden per API)."""
        return Reply.json({"error": message}, status=status)

    # -- serving ------------------------------------------------------------------------

    def _take(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
            if request.path != self.endpoint:
                return self.error_reply(404, f"fake server: no route {request.path}")
            if not self._replies:
                if self._always is not None:
                    return self._always
                return self.error_reply(500, "fake server: no scripted reply left")
            return self._replies.popleft()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as httpx's pool expects

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = RecordedRequest(
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                reply = fake._take(recorded)
                if reply.delay_s and fake._stop.wait(reply.delay_s):
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler


class FakeOpenAI(FakeLLMServer):
    """OpenAI-compatible ``POST /v1/chat/completions``."""

    endpoint = "/v1/chat/completions"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def error_reply(self, status: int, message: str) -> Reply:
        return openai_error(status, message)


class FakeAnthropic(FakeLLMServer):
    """Anthropic ``POST /v1/messages``."""

    endpoint = "/v1/messages"

    def error_reply(self, status: int, message: str) -> Reply:
        return anthropic_error(status, message)


# -- OpenAI wire format ---------------------------------------------------------------


def openai_completion(
    text: str | None = "Hello!",
    *,
    tool_calls: Iterable[tuple[str, str, str]] = (),
    prompt_tokens: int = 12,
    completion_tokens: int = 5,
    cached_tokens: int = 0,
    finish_reason: str | None = None,
    model: str = "gpt-fake-2024-07-18",
    delay_s: float = 0.0,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """A chat.completion; ``tool_calls`` are (id, name, arguments JSON *text*)."""
    calls = [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
        for cid, name, args in tool_calls
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return Reply.json(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason or ("tool_calls" if calls else "stop"),
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
            "system_fingerprint": "fp_fake",
        },
        headers=headers,
        delay_s=delay_s,
    )


def openai_error(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    usage: Mapping[str, int] | None = None,
    delay_s: float = 0.0,
) -> Reply:
    """``{"error": {"message", "type", "param", "code"}}`` (plus ``usage`` if given)."""
    payload: dict[str, Any] = {
        "error": {"message": message, "type": type, "param": None, "code": code}
    }
    if usage is not None:
        payload["usage"] = dict(usage)
    return Reply.json(payload, status=status, headers=headers, delay_s=delay_s)


# -- Anthropic wire format ------------------------------------------------------------


def anthropic_message(
    text: str | None = "Hello!",
    *,
    tool_uses: Iterable[tuple[str, str, Mapping[str, Any]]] = (),
    input_tokens: int = 20,
    output_tokens: int = 7,
    cache_read_input_tokens: int = 0,
    cache_creation_input_tokens: int = 0,
    stop_reason: str | None = None,
    model: str = "claude-fake-20241022",
    delay_s: float = 0.0,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """A Messages API ``message``; ``tool_uses`` are (id, name, input object)."""
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    for tid, name, arguments in tool_uses:
        content.append({"type": "tool_use", "id": tid, "name": name, "input": dict(arguments)})
    return Reply.json(
        {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason or ("tool_use" if tool_uses else "end_turn"),
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": cache_creation_input_tokens,
                "cache_read_input_tokens": cache_read_input_tokens,
            },
        },
        headers=headers,
        delay_s=delay_s,
    )


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def anthropic_error(
    status: int,
    message: str,
    *,
    type: str | None = None,
    headers: Mapping[str, str] | None = None,
    usage: Mapping[str, int] | None = None,
    delay_s: float = 0.0,
) -> Reply:
    """``{"type": "error", "error": {"type", "message"}}`` (plus ``usage`` if given)."""
    payload: dict[str, Any] = {
        "type": "error",
        "error": {
            "type": type or _ANTHROPIC_ERROR_TYPES.get(status, "api_error"),
            "message": message,
        },
    }
    if usage is not None:
        payload["usage"] = dict(usage)
    return Reply.json(payload, status=status, headers=headers, delay_s=delay_s)


# -- catalog entries pointing at a fake ------------------------------------------------


def model_for(
    server: FakeLLMServer,
    name: str,
    *,
    api_key_env: str | None = None,
    **fields: Any,
) -> ModelConfig:
    """A catalog entry served by ``server`` (its provider inferred from the fake's API).

    Prices default to USD 1 / 2 / 0.5 per million input / output / cached tokens, so
    costs in tests are easy to check by hand.
    """
    provider = "anthropic" if isinstance(server, FakeAnthropic) else "openai"
    values: dict[str, Any] = {
        "context_window": 8192,
        "max_output_tokens": 1024,
        "input_per_mtok": Decimal(1),
        "output_per_mtok": Decimal(2),
        "cached_per_mtok": Decimal("0.5"),
        "typical_latency_s": 5.0,
        **fields,
    }
    return ModelConfig(
        name=name,
        provider=provider,
        base_url=server.base_url,
        api_key_env=api_key_env,
        **values,
    )
