"""``python -m bench._comparison_monolith <config.json> <out.json>``: the monolithic agent.

One process, one asyncio event loop, sessions as in-memory state — the agent the source
article's table starts from, written as a competent developer would write it:

- one pooled ``httpx.AsyncClient`` (the HTTP client jetagent's adapters use, with the
  same connection limits), an explicit per-attempt timeout, retries with exponential
  backoff on timeouts and 5xx, a 429 waited out for its ``retry-after``;
- the slow I/O tool awaited on the loop (it is async), the CPU-bound tool in a
  ``ProcessPoolExecutor`` so it never blocks the loop;
- the tool calls of one turn run concurrently; cost tracked per capability in memory.

It runs its own arrival schedule (the sessions of the config, each started at its
arrival time) and writes every session's outcome and latency — from its scheduled
arrival to its answer — to ``out.json``. What it does not have: hedging, circuit
breakers, durable state (a crash loses every session in flight), replicas.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import uvloop

from ._comparison_tools import crunch_impl, lookup_impl
from ._comparison_workload import Params, Session, instruction

__all__ = ["main"]

TOOL_SPECS = [
    {
        "type": "function",
        "function": {
            "name": "slow_lookup",
            "description": "Look a figure up in the inventory service (slow: 1-2 s).",
            "parameters": {
                "type": "object",
                "properties": {
                    "key": {"type": "string"},
                    "delay_ms": {"type": "integer"},
                    "ref": {"type": "string"},
                },
                "required": ["key", "delay_ms", "ref"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "crunch",
            "description": "Crunch a number (CPU-bound, ~300 ms).",
            "parameters": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer"},
                    "salt": {"type": "integer"},
                    "ref": {"type": "string"},
                },
                "required": ["n", "salt", "ref"],
            },
        },
    },
]


class Monolith:
    def __init__(self, config: dict[str, Any]) -> None:
        self.params = Params.from_json(config["params"])
        self.url = config["server"] + "/v1/chat/completions"
        self.timeout_s = float(config["timeout_s"])
        self.max_attempts = int(config["max_attempts"])
        self.max_iterations = 12
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout_s, connect=5.0),
            # jetagent's adapters' defaults (HttpSettings), for a like-for-like client.
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            trust_env=False,
        )
        self.pool = ProcessPoolExecutor(max_workers=int(config["processes"]))
        self.cost_usd: Counter[str] = Counter()
        self.provider_calls: Counter[str] = Counter()
        self.tool_errors: Counter[str] = Counter()

    async def close(self) -> None:
        await self.http.aclose()
        self.pool.shutdown(wait=True, cancel_futures=True)

    async def model(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """One logical model call: attempts until an answer or the attempts run out."""
        body = {"model": "scripted", "messages": messages, "tools": TOOL_SPECS, "max_tokens": 256}
        delay = 0.5 * self.params.time_scale
        last = "no attempt"
        for _ in range(self.max_attempts):
            try:
                response = await self.http.post(self.url, json=body)
            except httpx.TimeoutException:
                self.provider_calls["timeout"] += 1
                last = "timeout"
                continue  # the attempt already took the whole timeout: retry at once
            except httpx.HTTPError as exc:
                self.provider_calls["error"] += 1
                last = repr(exc)
                await asyncio.sleep(delay)
                delay *= 2
                continue
            if response.status_code == 429:
                self.provider_calls["429"] += 1
                await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                last = "429"
                continue
            if response.status_code >= 500:
                self.provider_calls["5xx"] += 1
                last = f"HTTP {response.status_code}"
                await asyncio.sleep(delay)
                delay *= 2
                continue
            response.raise_for_status()
            self.provider_calls["ok"] += 1
            answer: dict[str, Any] = response.json()
            usage = answer.get("usage") or {}
            self.cost_usd["reasoning"] += (
                usage.get("prompt_tokens", 0) * self.params.input_per_mtok
                + usage.get("completion_tokens", 0) * self.params.output_per_mtok
            ) / 1e6
            return answer
        raise RuntimeError(f"the model call failed {self.max_attempts} times (last: {last})")

    async def tool(self, name: str, arguments: dict[str, Any]) -> int:
        if name == "crunch":
            loop = asyncio.get_running_loop()
            n, salt, ref = int(arguments["n"]), int(arguments["salt"]), str(arguments["ref"])
            return await loop.run_in_executor(self.pool, crunch_impl, n, salt, ref)
        if name == "slow_lookup":
            key, delay, ref = str(arguments["key"]), int(arguments["delay_ms"]), arguments["ref"]
            return await lookup_impl(key, delay, str(ref))
        raise ValueError(f"unknown tool {name!r}")

    async def session(self, session: Session) -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "content": instruction(session)}]
        for _ in range(self.max_iterations):
            answer = await self.model(messages)
            message = answer["choices"][0]["message"]
            calls = message.get("tool_calls") or []
            if not calls:
                return str(message.get("content") or "")
            messages.append(message)
            results = await asyncio.gather(
                *(
                    self.tool(c["function"]["name"], json.loads(c["function"]["arguments"]))
                    for c in calls
                ),
                return_exceptions=True,
            )
            for call, result in zip(calls, results, strict=True):
                if isinstance(result, BaseException):
                    name = call["function"]["name"]
                    self.tool_errors[f"{name}: {type(result).__name__}: {result}"[:160]] += 1
                content = (
                    json.dumps({"error": repr(result)})
                    if isinstance(result, BaseException)
                    else json.dumps({"result": result})
                )
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": content})
        raise RuntimeError("max iterations reached")

    async def run(self, sessions: list[Session]) -> dict[str, Any]:
        outcomes: dict[str, dict[str, Any]] = {}
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def one(session: Session) -> None:
            due = start + session.arrival_s
            await asyncio.sleep(max(0.0, due - loop.time()))
            try:
                answer, error = await self.session(session), None
            except Exception as exc:
                answer, error = None, f"{type(exc).__name__}: {exc}"
            outcomes[session.sid] = {
                "answer": answer,
                "error": error,
                "latency_s": loop.time() - due,
                "done_s": loop.time() - start,
            }

        async with asyncio.TaskGroup() as tasks:
            for session in sessions:
                tasks.create_task(one(session))
        return {
            "sessions": outcomes,
            "cost_usd": dict(self.cost_usd),
            "provider_calls": dict(self.provider_calls),
            "tool_errors": dict(self.tool_errors),
        }


async def _main(config: dict[str, Any]) -> dict[str, Any]:
    sessions = [Session(**s) for s in config["sessions"]]
    monolith = Monolith(config)
    try:
        # Warm the pool (its processes fork on first use) before the clock starts.
        await asyncio.gather(
            *(
                asyncio.get_running_loop().run_in_executor(monolith.pool, os.getpid)
                for _ in range(int(config["processes"]))
            )
        )
        started = time.time()
        result = await monolith.run(sessions)
        result["wall_started"] = started
    finally:
        await monolith.close()
    return result


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    result = uvloop.run(_main(config))
    Path(sys.argv[2]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
