"""``python -m bench._comparison_server <port file>``: the scripted model and the slow service.

One asyncio process (uvloop, HTTP/1.1 keep-alive, no framework) serving:

- ``POST /v1/chat/completions`` — OpenAI Chat Completions. The *scripted model*: it
  reads the session's id and seed from the user's instruction and the turn from the
  number of assistant turns in the conversation, then (after a lognormal latency) asks
  for that turn's tool calls or answers ``Final answer: <sum of the tool results in the
  conversation>`` (``bench._comparison_workload.plan``). A call may instead hang (no
  answer until the client disconnects) or get ``429`` with ``retry-after``, drawn per
  (session, turn, attempt) — the attempt is how many calls this server has seen for
  that (session, turn).
- ``GET /lookup?key=&delay_ms=`` — the slow I/O tool's backend.
- ``POST /configure`` — the workload's ``Params`` (JSON) for the next run; clears the
  ledger. ``GET /ledger`` — what the provider saw: calls per (session, turn), outcomes,
  tokens billed.

It writes its port to the given file once it listens and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop

from bench._serving import serve_until_stopped

from ._comparison_workload import Params, fault_for, latency_for, parse_instruction, plan

__all__ = ["main"]

HANG_LIMIT_S = 300.0
"""A hung call is released after this long even if the client is still waiting."""


class _State:
    def __init__(self) -> None:
        self.params = Params()
        self.reset()

    def reset(self) -> None:
        self.calls: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.input_tokens = 0
        self.output_tokens = 0
        self.unparsed = 0
        self.lookups = 0

    def ledger(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "outcomes": dict(self.outcomes),
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "unparsed": self.unparsed,
            "lookups": self.lookups,
        }


_state = _State()


def _response(status: str, body: bytes, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _tool_results(messages: list[dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        if message.get("role") != "tool":
            continue
        # A tool error contributes nothing, so the answer comes out wrong.
        with contextlib.suppress(ValueError, KeyError, TypeError):
            total += int(json.loads(message.get("content") or "")["result"])
    return total


def _completion(body: dict[str, Any], seed: int, turn: int, sid: str) -> dict[str, Any]:
    messages = body.get("messages") or []
    turns = plan(seed, _state.params)
    message: dict[str, Any]
    if turn < len(turns):
        calls = [
            {
                "id": f"call_{sid}_{turn}_{i}",
                "type": "function",
                "function": {"name": c.tool, "arguments": json.dumps(c.arguments)},
            }
            for i, c in enumerate(turns[turn])
        ]
        message = {"role": "assistant", "content": None, "tool_calls": calls}
        finish, output_tokens = "tool_calls", 24 * len(calls)
    else:
        answer = f"Final answer: {_tool_results(messages)}"
        message = {"role": "assistant", "content": answer, "refusal": None}
        finish, output_tokens = "stop", 12
    input_tokens = max(1, len(json.dumps(messages)) // 4)
    return {
        "id": f"chatcmpl-{sid}-{turn}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "scripted"),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
    }


async def _chat(raw: bytes, reader: asyncio.StreamReader) -> bytes | None:
    """The answer to one completion request (``None``: the client went away)."""
    body = json.loads(raw)
    messages = body.get("messages") or []
    found = None
    for message in messages:
        if message.get("role") == "user":
            found = parse_instruction(str(message.get("content") or ""))
            if found:
                break
    if found is None:
        _state.unparsed += 1
        return _response("400 Bad Request", b'{"error": {"message": "no session in the prompt"}}')
    sid, seed = found
    turn = sum(1 for m in messages if m.get("role") == "assistant")
    key = f"{sid}:{turn}"
    attempt = _state.calls[key]
    _state.calls[key] += 1
    params = _state.params
    fault = fault_for(seed, turn, attempt, params)
    if fault.kind == "hang":
        _state.outcomes["hang"] += 1
        # Until the client gives up (EOF) or the limit; a hung provider answers nothing.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(1), HANG_LIMIT_S)
        return None
    await asyncio.sleep(latency_for(seed, turn, attempt, params))
    if fault.kind == "429":
        _state.outcomes["429"] += 1
        error = b'{"error": {"message": "rate limited", "type": "requests"}}'
        retry = f"retry-after: {params.retry_after_s * params.time_scale:g}\r\n"
        return _response("429 Too Many Requests", error, retry)
    completion = _completion(body, seed, turn, sid)
    _state.outcomes["ok"] += 1
    _state.input_tokens += completion["usage"]["prompt_tokens"]
    _state.output_tokens += completion["usage"]["completion_tokens"]
    return _response("200 OK", json.dumps(completion).encode())


async def _lookup(query: dict[str, list[str]]) -> bytes:
    from ._comparison_workload import lookup_value

    key = query.get("key", [""])[0]
    delay_ms = int(query.get("delay_ms", ["0"])[0])
    _state.lookups += 1
    await asyncio.sleep(delay_ms / 1000)
    return _response("200 OK", json.dumps({"value": lookup_value(key)}).encode())


async def _route(
    method: str, target: str, raw: bytes, reader: asyncio.StreamReader
) -> bytes | None:
    url = urllib.parse.urlsplit(target)
    if method == "POST" and url.path == "/v1/chat/completions":
        return await _chat(raw, reader)
    if method == "GET" and url.path == "/lookup":
        return await _lookup(urllib.parse.parse_qs(url.query))
    if method == "POST" and url.path == "/configure":
        _state.params = Params.from_json(json.loads(raw))
        _state.reset()
        return _response("200 OK", b"{}")
    if method == "GET" and url.path == "/ledger":
        return _response("200 OK", json.dumps(_state.ledger()).encode())
    return _response("404 Not Found", b'{"error": {"message": "no such route"}}')


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            raw = await reader.readexactly(length) if length else b""
            answer = await _route(method, target, raw, reader)
            if answer is None:
                break  # hung call: close the connection
            writer.write(answer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _serve(port_file: Path) -> None:
    server = await asyncio.start_server(_connection, "127.0.0.1", 0, backlog=1024)
    await serve_until_stopped(server, port_file)


def main() -> None:
    uvloop.run(_serve(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
