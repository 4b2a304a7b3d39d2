"""``python -m bench._llm_server <port file>``: a zero-latency OpenAI-compatible server.

It answers every ``POST /v1/chat/completions`` at once with the same ``chat.completion``
(OpenAI's wire format: one choice, a short text answer, usage with cached tokens), over
HTTP/1.1 keep-alive, from an asyncio protocol on uvloop: no framework, so its own cost
per request is some tens of microseconds. It times itself: from the first byte of a
request to its answer handed to the socket, per request, in arrival order.
``GET /stats`` returns those times (µs, JSON) and forgets them. It writes its port to
the given file once it listens and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import cast

import uvloop

from bench._serving import serve_until_stopped

__all__ = ["COMPLETION", "main"]

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "bench-zero",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The two open invoices total EUR 1,620.50. Final answer: 1620.50",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 1150,
            "completion_tokens": 18,
            "total_tokens": 1168,
            "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "system_fingerprint": "fp_bench",
    }
).encode()

_times: list[float] = []


def _response(status: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_OK = _response("200 OK", COMPLETION)
_NOT_FOUND = _response("404 Not Found", b'{"error": {"message": "no such route"}}')


class _Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.started = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if not self.buffer:
            self.started = time.perf_counter()
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            self._answer(head.split(" ", 2))
            if self.buffer:
                self.started = time.perf_counter()

    def _answer(self, request_line: list[str]) -> None:
        assert self.transport is not None
        method, path = request_line[0], request_line[1] if len(request_line) > 1 else ""
        if method == "POST" and path == "/v1/chat/completions":
            self.transport.write(_OK)
            _times.append((time.perf_counter() - self.started) * 1e6)
        elif method == "GET" and path == "/stats":
            body = json.dumps({"server_us": _times}).encode()
            _times.clear()
            self.transport.write(_response("200 OK", body))
        else:
            self.transport.write(_NOT_FOUND)


async def _serve(port_file: Path) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Http, "127.0.0.1", 0)
    await serve_until_stopped(server, port_file)


def main() -> None:
    uvloop.run(_serve(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
