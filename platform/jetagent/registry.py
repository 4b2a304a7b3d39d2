"""The tool registry: workers announce their tools in the ``JA_REGISTRY`` KV bucket.

The orchestrator reads it to validate ``allowed_tools``, to show models the tools they
may call, and to know which tools need approval or reserve tokens. A key per tool
(``tool.<name>``) holds its :class:`RegisteredTool`; the orchestrator watches the bucket,
so a worker started later is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from jetagent.config import Names
from jetagent.llm import ToolSpec
from jetagent.workflow import ToolInfo

__all__ = ["RegisteredTool", "ToolRegistry"]

log = logging.getLogger("jetagent.registry")


class RegisteredTool(msgspec.Struct, frozen=True, kw_only=True):
    spec: ToolSpec
    capability: str = "tools"
    requires_approval: bool = False
    max_tokens: int = 0
    timeout_s: float = 30.0

    def info(self) -> ToolInfo:
        return ToolInfo(
            spec=self.spec,
            requires_approval=self.requires_approval,
            max_tokens=self.max_tokens,
            capability=self.capability,
        )


class ToolRegistry:
    """A live view of the registered tools."""

    def __init__(self, js: JetStreamContext, names: Names) -> None:
        self._js = js
        self._bucket_name = names.bucket("REGISTRY")
        self.tools: dict[str, ToolInfo] = {}
        self.version = 0
        """Counts changes of ``tools``."""
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(self._bucket_name)
        return self._kv

    async def publish(self, tool: RegisteredTool) -> None:
        """Announce a tool (a worker does this at start)."""
        kv = await self.kv()
        await kv.put(f"tool.{tool.spec.name}", msgspec.json.encode(tool))

    async def start(self) -> None:
        """Load the registry and follow its changes."""
        kv = await self.kv()
        watcher = await kv.watchall()
        self._task = asyncio.create_task(self._follow(watcher), name="registry-watch")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=5)

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # the initial values are all delivered
                    self._ready.set()
                    continue
                if not entry.key.startswith("tool."):
                    continue  # worker status reports share the bucket
                name = entry.key.removeprefix("tool.")
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    self.tools.pop(name, None)
                    self.version += 1
                    continue
                try:
                    tool = msgspec.json.decode(entry.value, type=RegisteredTool)
                except msgspec.ValidationError as exc:
                    log.warning("ignoring registry entry %s: %s", entry.key, exc)
                    continue
                self.tools[name] = tool.info()
                self.version += 1
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
