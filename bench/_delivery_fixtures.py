"""The delivery suite's parts: a slow OpenAI-format server that counts requests, a tool
that notes each run, and the platform as processes on a nats-server the suite may kill.

The server answers ``POST /v1/chat/completions`` after 1-3 s (a delay drawn from the
request's own bytes, so a repeated request waits as long): a conversation without a tool
result gets a call of the ``nap`` tool, one with a tool result gets the final answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jetagent import tool
from jetagent.testing import ServiceProcesses

__all__ = ["TOOLS", "SlowLLM", "delivery_platform", "nap"]

ROOT = Path(__file__).resolve().parent.parent
NAP_S = 2.0


@tool(description="Sleep for a while (a slow tool) and note the run in the file `log`.")
async def nap(seconds: float, log: str) -> str:
    import asyncio

    def note() -> None:
        with open(log, "a") as runs:
            runs.write(f"{os.getpid()}\n")

    await asyncio.to_thread(note)
    await asyncio.sleep(seconds)
    return f"napped {seconds}"


TOOLS = [nap]


def _completion(message: dict[str, Any], finish: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-delivery",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "slow-bench",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220},
        }
    ).encode()


class SlowLLM:
    """The slow counting server, on 127.0.0.1, in threads of this process."""

    def __init__(self, nap_log: Path) -> None:
        self.nap_log = nap_log
        self.requests = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with outer._lock:
                    outer.requests += 1
                digest = hashlib.sha256(body).digest()
                outer._closing.wait(1.0 + 2.0 * digest[0] / 255)  # 1-3 s, same per request
                messages = json.loads(body).get("messages", [])
                if any(m.get("role") == "tool" for m in messages):
                    answer = _completion({"role": "assistant", "content": "Rested."}, "stop")
                else:
                    args = json.dumps({"seconds": NAP_S, "log": str(outer.nap_log)})
                    call = {"id": "c1", "type": "function"}
                    call["function"] = {"name": "nap", "arguments": args}  # type: ignore[assignment]
                    message = {"role": "assistant", "content": None, "tool_calls": [call]}
                    answer = _completion(message, "tool_calls")
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()


def write_catalog(path: Path, base_url: str) -> Path:
    """The built-in catalog plus ``slow-bench``, served by the slow server."""
    from importlib import resources

    shipped = resources.files("jetagent").joinpath("models.toml").read_text()
    path.write_text(
        shipped
        + "\n"
        + "\n".join(
            [
                "[models.slow-bench]",
                'provider = "openai"',
                f'base_url = "{base_url}"',
                'api_key_env = "JETAGENT_BENCH_KEY"',
                "context_window = 32768",
                "max_output_tokens = 256",
                "input_per_mtok = 1.0",
                "output_per_mtok = 2.0",
                "cached_per_mtok = 0.5",
                "typical_latency_s = 60.0",
                "",
            ]
        )
    )
    return path


@contextmanager
def delivery_platform(url: str, prefix: str, tmp: Path, llm: SlowLLM) -> Iterator[ServiceProcesses]:
    """Orchestrator, two reasoning and two tools workers as processes (SIGKILL-able)."""
    catalog = write_catalog(tmp / f"{prefix}-models.toml", llm.base_url)
    env = {
        "JETAGENT_TOOLS": "bench._delivery_fixtures:TOOLS",
        "JETAGENT_MODELS": str(catalog),
        "JETAGENT_BENCH_KEY": "sk-bench",
    }
    with ServiceProcesses(url, prefix, tmp / f"{prefix}-logs", env=env, cwd=ROOT) as platform:
        platform.start("orchestrator", "orchestrator")
        for replica in ("a", "b"):
            platform.start(f"reasoning-{replica}", "worker", "reasoning")
            platform.start(f"tools-{replica}", "worker", "tools")
        yield platform
