"""A local OpenAI-compatible streaming server with a fixed delay per token, for the
``gateway`` suite's time-to-first-token benchmark.

It answers every ``POST /v1/chat/completions`` with ``stream: true`` as OpenAI does:
``chat.completion.chunk`` events (one word each, ``DELAY_S`` apart), a finish chunk, a
usage chunk, ``[DONE]``; over chunked HTTP/1.1 from an asyncio server on a loop thread of
its own, so the benchmark's own loop does not pace it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["TOKENS", "streaming_server"]

TOKENS = 40
"""Words in every answer."""


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "model": "bench-stream",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def _frame(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            writer.write(_frame(_chunk({"role": "assistant", "content": ""})))
            for i in range(TOKENS):
                await asyncio.sleep(delay)
                writer.write(_frame(_chunk({"content": f"w{i} "})))
                await writer.drain()
            writer.write(_frame(_chunk({}, "stop")))
            usage = {"prompt_tokens": 50, "completion_tokens": TOKENS, "total_tokens": 50 + TOKENS}
            body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "choices": []}
            writer.write(_frame(f"data: {json.dumps({**body, 'usage': usage})}\n\n".encode()))
            writer.write(_frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@contextmanager
def streaming_server(delay_s: float) -> Iterator[int]:
    """Serve on 127.0.0.1 (a free port, yielded) until the block ends."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, asyncio.AbstractServer] = {}

    async def start() -> None:
        holder["server"] = await asyncio.start_server(
            lambda r, w: _handle(r, w, delay_s), "127.0.0.1", 0
        )
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, name="bench-stream-server", daemon=True)
    thread.start()
    ready.wait(10)
    server = holder["server"]
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
