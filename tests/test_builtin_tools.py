"""Built-in tools: HTTP fetch behind an allow-list, JSON query, sandboxed Python; and a
CPU-bound tool that must not hold up the worker's other steps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from capabilities.tools.builtin import BUILTIN_TOOLS
from jetagent.events import Finalized, StepCompleted
from jetagent.worker.tools import ToolBox
from tests.support.platform import InProcessPlatform

BOX = ToolBox.of(BUILTIN_TOOLS)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/redirect-away":
            self.send_response(302)
            self.send_header("Location", "http://localhost:1/elsewhere")
            self.end_headers()
            return
        if self.path == "/redirect-here":
            self.send_response(302)
            self.send_header("Location", "/hello")
            self.end_headers()
            return
        body = b"hello from the test server " * (1000 if self.path == "/big" else 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_http_fetch_reaches_allowed_hosts_only(
    web: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JETAGENT_HTTP_ALLOW", "127.0.0.1")
    answer = await BOX.run("http_fetch", {"url": f"{web}/hello"})
    assert answer["result"]["status"] == 200
    assert answer["result"]["text"].startswith("hello from the test server")
    # A redirect within the allow-list is followed; one leaving it is refused.
    assert (await BOX.run("http_fetch", {"url": f"{web}/redirect-here"}))["result"]["status"] == 200
    refused = await BOX.run("http_fetch", {"url": f"{web}/redirect-away"})
    assert "'localhost' is not on the allow-list" in refused["error"]
    # Bodies are capped.
    big = await BOX.run("http_fetch", {"url": f"{web}/big", "max_bytes": 100})
    assert big["result"]["truncated"] is True
    assert len(big["result"]["text"]) == 100
    monkeypatch.setenv("JETAGENT_HTTP_ALLOW", "")
    assert (
        "not on the allow-list" in (await BOX.run("http_fetch", {"url": f"{web}/hello"}))["error"]
    )
    assert (
        "only http and https"
        in (await BOX.run("http_fetch", {"url": "file:///etc/passwd"}))["error"]
    )


async def test_json_query() -> None:
    data = {"items": [{"name": "a", "price": 2}, {"name": "b", "price": 5}]}
    answer = await BOX.run("json_query", {"data": data, "query": "items[?price > `3`].name"})
    assert answer == {"result": ["b"]}
    text = await BOX.run("json_query", {"data": '{"x": [1, 2, 3]}', "query": "length(x)"})
    assert text == {"result": 3}
    bad = await BOX.run("json_query", {"data": data, "query": "items[?"})
    assert "invalid JMESPath" in bad["error"]


async def test_python_runs_in_the_sandbox() -> None:
    answer = await BOX.run("python", {"code": "print(sum(range(10)))"})
    assert answer["result"]["ok"] is True
    assert answer["result"]["stdout"] == "45\n"
    refused = await BOX.run("python", {"code": "print(open('/etc/passwd').read())"})
    assert refused["result"]["ok"] is False
    assert "not allowed" in refused["result"]["error"]


async def test_invalid_arguments_are_a_model_visible_error() -> None:
    answer = await BOX.run("calculator", {"expr": "1+1"})
    assert "invalid arguments for calculator" in answer["error"]
    assert "unknown tool 'nope'" in (await BOX.run("nope", {}))["error"]


async def test_a_cpu_heavy_tool_does_not_hold_up_fast_steps(engine: InProcessPlatform) -> None:
    client = engine.client
    heavy = await client.submit(
        instruction='call crunch {"seconds": 3}', tenant="acme", allowed_tools=["crunch"]
    )
    fast = [
        await client.submit(instruction=f"What is {i} * 3? Then add 1 to it", tenant="acme")
        for i in range(5)
    ]
    for wid in fast:
        assert (await client.result(wid, timeout=30)).ok
    # Every fast workflow finished while the CPU-bound step was still running: the
    # worker's event loop was never held by it (it runs in a process pool).
    events = await client.events(heavy)
    assert not any(isinstance(e, StepCompleted) and e.tool == "crunch" for e in events)
    result = await client.result(heavy, timeout=30)
    assert result.output.endswith("crunched 3.0")
    assert any(isinstance(e, Finalized) for e in await client.events(heavy))
