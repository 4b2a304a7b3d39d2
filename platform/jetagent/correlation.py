"""The ids of the work in hand — workflow, step, capability, tool, tenant — for every log
line and span made while handling it, without passing them to each call.

The orchestrator and the worker runtime open a scope around each message they handle
(:func:`correlate`) and add ids as they learn them (:func:`annotate`: the workflow's
tenant once it is loaded, say). The ids live in a :class:`~contextvars.ContextVar`, so
each asyncio task sees its own (a task copies its creator's context when it is created,
and nothing it sets leaks back); :mod:`jetagent.logs` puts them on every log record and
:mod:`jetagent.telemetry` on every span, as ``jetagent.<id>`` attributes. A span already
open when an id is learnt gets it too (the orchestrator's span starts before the message
is read).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

from opentelemetry import trace

__all__ = ["IDS", "Id", "annotate", "correlate", "current", "span_attributes"]

Id = Literal["workflow_id", "step_id", "capability", "tool", "tenant"]
IDS: tuple[Id, ...] = ("workflow_id", "step_id", "capability", "tool", "tenant")
"""The ids, in the order log lines show them."""

_EMPTY: Mapping[str, str] = {}
_ids: ContextVar[Mapping[str, str]] = ContextVar("jetagent_correlation", default=_EMPTY)


def current() -> Mapping[str, str]:
    """The ids of the work in hand (empty outside any)."""
    return _ids.get()


def span_attributes(ids: Mapping[str, str] | None = None) -> dict[str, str]:
    """``ids`` (default: the current ones) as span attributes: ``jetagent.<id>``."""
    return {f"jetagent.{key}": value for key, value in (current() if ids is None else ids).items()}


def _given(**ids: str | None) -> dict[str, str]:
    return {key: value for key, value in ids.items() if value}


def _tag_span(ids: Mapping[str, str]) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(span_attributes(ids))


@contextmanager
def correlate(
    *,
    workflow_id: str | None = None,
    step_id: str | None = None,
    capability: str | None = None,
    tool: str | None = None,
    tenant: str | None = None,
) -> Iterator[None]:
    """A scope for the work in hand, with the ids given (``None``: keep the outer scope's);
    whatever :func:`annotate` adds inside it ends with it."""
    ids = _given(
        workflow_id=workflow_id, step_id=step_id, capability=capability, tool=tool, tenant=tenant
    )
    token = _ids.set({**_ids.get(), **ids})
    if ids:
        _tag_span(ids)
    try:
        yield
    finally:
        _ids.reset(token)


def annotate(
    *,
    workflow_id: str | None = None,
    step_id: str | None = None,
    capability: str | None = None,
    tool: str | None = None,
    tenant: str | None = None,
) -> None:
    """Add ids to the current scope (until the enclosing :func:`correlate` ends), and to
    the current span. ``None`` leaves an id as it is."""
    ids = _given(
        workflow_id=workflow_id, step_id=step_id, capability=capability, tool=tool, tenant=tenant
    )
    if ids:
        _ids.set({**_ids.get(), **ids})
        _tag_span(ids)
