"""``SyncClient``: the client for synchronous code, on a private event-loop thread.

Each call runs the async ``jetagent.client.Client``'s method on that one thread (a
deliberate bridge, never an event loop per call), so its errors are the client's:
every one a ``jetagent.errors.JetagentError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jetagent.client import Client, SessionView, WorkflowResult
from jetagent.config import Settings
from jetagent.contract import WorkflowRequest
from jetagent.events import StepResult, WorkflowEvent

__all__ = ["SyncClient"]


class SyncClient:
    """``Client`` for synchronous code (runs the async client on a private loop thread)."""

    def __init__(self, url: str | None = None, *, settings: Settings | None = None) -> None:
        from jetagent.jetstream._loop import LoopThread

        self._loop = LoopThread(name="jetagent-client-loop")
        self._client = self._loop.run(Client.connect(url, settings=settings))

    def _run(self, coro: Any) -> Any:
        return self._loop.run(coro)

    def submit(self, request: WorkflowRequest | None = None, /, **kwargs: Any) -> str:
        result: str = self._run(self._client.submit(request, **kwargs))
        return result

    def result(self, workflow_id: str, timeout: float | None = 60.0) -> WorkflowResult:
        result: WorkflowResult = self._run(self._client.result(workflow_id, timeout))
        return result

    def cancel(self, workflow_id: str, *, reason: str = "") -> None:
        self._run(self._client.cancel(workflow_id, reason=reason))

    def signal(self, workflow_id: str, name: str, payload: dict[str, Any] | None = None) -> None:
        self._run(self._client.signal(workflow_id, name, payload))

    def resolve(self, text: str) -> str:
        """The workflow id ``text`` names (an id, or a unique prefix of one)."""
        found: str = self._run(self._client.resolve(text))
        return found

    def session(self, workflow_id: str) -> SessionView:
        view: SessionView = self._run(self._client.session(workflow_id))
        return view

    def events(self, workflow_id: str) -> list[WorkflowEvent]:
        found: list[WorkflowEvent] = self._run(self._client.events(workflow_id))
        return found

    def step_results(self, workflow_id: str) -> list[StepResult]:
        found: list[StepResult] = self._run(self._client.step_results(workflow_id))
        return found

    def watch(self, workflow_id: str) -> Iterator[WorkflowEvent]:
        """Events as they happen (each ``next`` waits on the private loop)."""
        events = self._client.watch(workflow_id).__aiter__()
        while True:
            try:
                yield self._run(events.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
