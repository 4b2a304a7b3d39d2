"""The tool registry: workers announce their tools in the ``JA_REGISTRY`` KV bucket.

The orchestrator reads it to validate ``allowed_tools``, to show models the tools they
may call, and to know which tools need approval or reserve tokens. A key per tool
(``tool.<name>``) holds its :class:`RegisteredTool`; the orchestrator watches the bucket,
so a worker started later is picked up without a restart.

A ``dedicated`` tool is announced by every worker that knows it but run only by
``jetagent worker <capability> --only <name>``; such a pool reports the tools it serves
every few seconds (``status.<capability>.<worker>`` with a ``serves`` list), so the
registry can tell a served dedicated tool from one whose worker is not running
(:meth:`ToolRegistry.unserved`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from jetagent.jetstream import kv_put
from jetagent.llm import ToolSpec
from jetagent.subjects import Names
from jetagent.tool_info import ToolInfo

__all__ = ["SERVED_FRESH_S", "RegisteredTool", "ToolRegistry"]

log = logging.getLogger("jetagent.registry")

SERVED_FRESH_S = 20.0
"""A dedicated pool counts as serving while its last report (sent every 5 s) is younger
than this; a pool that stopped is known to be gone this long after its last report."""
_STALE_REPORT_S = 60.0
"""Reports written longer ago than this by the worker's clock are old when read (a
stopped pool's last report, found when the watcher starts)."""


class RegisteredTool(msgspec.Struct, frozen=True, kw_only=True):
    spec: ToolSpec
    capability: str = "tools"
    requires_approval: bool = False
    max_tokens: int = 0
    timeout_s: float = 30.0
    dedicated: bool = False
    """Served only by ``jetagent worker <capability> --only <name>`` (README, "Writing
    capabilities and tools"): every worker announces it, only such a worker runs it."""
    retry_max_runs: int | None = None
    """Runs of one of this tool's steps that failed for now (``TransientError``), the
    first included; None: the worker's ``JETAGENT_STEP_MAX_DELIVER``."""
    retry_budget_s: float | None = None
    """No retry of this tool's step starts later than this after it was scheduled;
    None: the worker's ``JETAGENT_STEP_RETRY_BUDGET_S``. The workflow's deadline still
    bounds both (README, "Delivery, retries and recovery")."""

    def info(self) -> ToolInfo:
        return ToolInfo(
            spec=self.spec,
            requires_approval=self.requires_approval,
            max_tokens=self.max_tokens,
            capability=self.capability,
        )


class ToolRegistry:
    """A live view of the registered tools."""

    def __init__(self, js: JetStreamContext, names: Names, *, nc: NATS | None = None) -> None:
        """``nc``: writes are retried through an election of the bucket's stream."""
        self._js = js
        self._nc = nc
        self._bucket_name = names.bucket("REGISTRY")
        self.tools: dict[str, ToolInfo] = {}
        self.version = 0
        """Counts changes of ``tools``."""
        self._dedicated: set[str] = set()
        self._serving: dict[str, tuple[frozenset[str], float]] = {}
        """Per worker status key: the dedicated tools it serves, and when (monotonic) its
        last report arrived."""
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(self._bucket_name)
        return self._kv

    async def publish(self, tool: RegisteredTool) -> None:
        """Announce a tool (a worker does this at start)."""
        await self.put(f"tool.{tool.spec.name}", msgspec.json.encode(tool))

    async def put(self, key: str, value: bytes) -> None:
        """Write ``key`` in the registry bucket."""
        if self._nc is not None:
            await kv_put(self._nc, self._bucket_name, key, value)
            return
        kv = await self.kv()
        await kv.put(key, value)

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
                if entry.key.startswith("status."):
                    self._on_status(entry.key, entry.value, entry.operation)
                    continue
                if not entry.key.startswith("tool."):
                    continue
                name = entry.key.removeprefix("tool.")
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    self.tools.pop(name, None)
                    self._dedicated.discard(name)
                    self.version += 1
                    continue
                try:
                    tool = msgspec.json.decode(entry.value, type=RegisteredTool)
                except msgspec.ValidationError as exc:
                    log.warning("ignoring registry entry %s: %s", entry.key, exc)
                    continue
                self.tools[name] = tool.info()
                if tool.dedicated:
                    self._dedicated.add(name)
                else:
                    self._dedicated.discard(name)
                self.version += 1
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _on_status(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in ("DEL", "PURGE") or not value:
            self._serving.pop(key, None)
            return
        try:
            report = msgspec.json.decode(value)
            serves = report.get("serves") if isinstance(report, dict) else None
            if not isinstance(serves, list):
                return  # another capability's status (circuit breakers)
            written = float(report.get("at", 0.0))
        except (msgspec.DecodeError, TypeError, ValueError):
            return
        if time.time() - written > _STALE_REPORT_S:
            self._serving.pop(key, None)
            return
        self._serving[key] = (frozenset(str(t) for t in serves), time.monotonic())

    def unserved(self) -> dict[str, str]:
        """Dedicated tools no running pool serves now, each with the command that would."""
        now = time.monotonic()
        served: set[str] = set()
        for tools, seen in self._serving.values():
            if now - seen < SERVED_FRESH_S:
                served |= tools
        return {
            name: f"jetagent worker {self.tools[name].capability} --only {name}"
            for name in sorted(self._dedicated - served)
            if name in self.tools
        }

    async def wait_served(self, names: set[str], timeout: float) -> bool:
        """Whether every tool of ``names`` is registered and served within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if names <= set(self.tools) and not names & set(self.unserved()):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
