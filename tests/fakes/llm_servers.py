"""Local HTTP servers that speak the real wire formats of OpenAI Chat Completions and
the Anthropic Messages API, scripted per test.

Each server listens on 127.0.0.1 on a port the OS picks, answers requests in arrival
order from a queue of ``Reply`` values (an empty queue answers 500 in the provider's
error format, so a test that forgot a reply fails loudly, unless ``always`` set a reply
for every request after the queue: a provider that answers 429 forever, or hangs), and
records every request with its headers. A reply's ``delay_s`` simulates a slow
provider (``hang()`` one that never answers); closing the server cuts delays short.

A request with ``"stream": true`` gets its scripted answer in the API's real streaming
form (``text/event-stream``, chunked): OpenAI ``chat.completion.chunk`` events with the
usage in the last chunk and ``[DONE]``; Anthropic's ``message_start`` …
``message_stop`` events. ``chunk_delay_s`` paces the events (a fixed per-token delay)
and ``cut_after`` drops the connection after that many events, as a broken stream does.

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
    "anthropic_stream_events",
    "hang",
    "model_for",
    "openai_completion",
    "openai_error",
    "openai_stream_events",
]


@dataclass(frozen=True, kw_only=True)
class Reply:
    """One scripted HTTP answer."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    """For a streamed answer: the pause before each event."""
    cut_after: int | None = None
    """For a streamed answer: drop the connection after this many events."""
    plain: bool = False
    """Answer with the JSON body even when the request asks for a stream (as servers
    that ignore ``stream`` do)."""

    def paced(self, *, chunk_delay_s: float = 0.0, cut_after: int | None = None) -> Reply:
        """This answer, streamed with a pause per event and/or cut after N events."""
        return Reply(
            status=self.status,
            body=self.body,
            headers=self.headers,
            delay_s=self.delay_s,
            chunk_delay_s=chunk_delay_s,
            cut_after=cut_after,
        )

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

    def stream_events(self, answer: dict[str, Any]) -> list[bytes]:
        """A scripted answer as this API's stream events (overridden per API)."""
        raise NotImplementedError

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
                if reply.status == 200 and not reply.plain and _wants_stream(body):
                    self._stream(reply, fake.stream_events(json.loads(reply.body)))
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def _stream(self, reply: Reply, events: list[bytes]) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for sent, event in enumerate(events):
                    if reply.cut_after is not None and sent >= reply.cut_after:
                        # No terminating chunk: the client sees the body end early.
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if reply.chunk_delay_s and fake._stop.wait(reply.chunk_delay_s):
                        self.close_connection = True
                        return
                    self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler


class FakeOpenAI(FakeLLMServer):
    """OpenAI-compatible ``POST /v1/chat/completions``."""

    endpoint = "/v1/chat/completions"

    def stream_events(self, completion: dict[str, Any]) -> list[bytes]:
        return openai_stream_events(completion)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def error_reply(self, status: int, message: str) -> Reply:
        return openai_error(status, message)


class FakeAnthropic(FakeLLMServer):
    """Anthropic ``POST /v1/messages``."""

    endpoint = "/v1/messages"

    def stream_events(self, message: dict[str, Any]) -> list[bytes]:
        return anthropic_stream_events(message)

    def error_reply(self, status: int, message: str) -> Reply:
        return anthropic_error(status, message)


def _wants_stream(body: bytes) -> bool:
    try:
        return bool(json.loads(body).get("stream"))
    except (ValueError, AttributeError):
        return False


def _pieces(text: str) -> list[str]:
    """Text as a model streams it: a word (with its leading space) per delta."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words) if w or i == 0]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    body = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {body}\n\n".encode()


def openai_stream_events(completion: dict[str, Any]) -> list[bytes]:
    """A chat.completion as the chat.completion.chunk events OpenAI streams: a role
    chunk, a chunk per word, tool call fragments, the finish reason, then (as with
    ``stream_options.include_usage``) a last chunk with empty choices and the usage."""
    base = {k: completion.get(k) for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    choice = completion["choices"][0]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in _pieces(message.get("content") or "")]
    for i, call in enumerate(message.get("tool_calls") or ()):
        arguments = call["function"]["arguments"] or ""
        half = len(arguments) // 2
        first = {"id": call["id"], "type": "function"}
        first["function"] = {"name": call["function"]["name"], "arguments": arguments[:half]}
        events.append(chunk({"tool_calls": [{"index": i, **first}]}))
        rest = {"index": i, "function": {"arguments": arguments[half:]}}
        events.append(chunk({"tool_calls": [rest]}))
    events.append(chunk({}, choice["finish_reason"]))
    events.append(_sse({**base, "choices": [], "usage": completion.get("usage")}))
    events.append(_sse("[DONE]"))
    return events


def anthropic_stream_events(message: dict[str, Any]) -> list[bytes]:
    """A Messages ``message`` as the events Anthropic streams."""
    usage = message.get("usage") or {}
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {**usage, "output_tokens": 1}
    events = [_sse({"type": "message_start", "message": start}, "message_start")]
    events.append(_sse({"type": "ping"}, "ping"))
    for index, block in enumerate(message.get("content") or ()):
        if block["type"] == "text":
            opened = {"type": "text", "text": ""}
        else:
            opened = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        events.append(
            _sse(
                {"type": "content_block_start", "index": index, "content_block": opened},
                "content_block_start",
            )
        )
        if block["type"] == "text":
            deltas = [{"type": "text_delta", "text": p} for p in _pieces(block["text"])]
        else:
            raw = json.dumps(block["input"])
            half = len(raw) // 2
            deltas = [
                {"type": "input_json_delta", "partial_json": part}
                for part in (raw[:half], raw[half:])
            ]
        for delta in deltas:
            events.append(
                _sse(
                    {"type": "content_block_delta", "index": index, "delta": delta},
                    "content_block_delta",
                )
            )
        events.append(_sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
    final = {"type": "message_delta", "delta": {"stop_reason": message.get("stop_reason")}}
    final["usage"] = {"output_tokens": usage.get("output_tokens", 0)}
    events.append(_sse(final, "message_delta"))
    events.append(_sse({"type": "message_stop"}, "message_stop"))
    return events


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
