"""The services' logs: plain text for people (the default) or JSON lines for Loki, Elastic
and friends (``jetagent --log-format json …`` or ``JETAGENT_LOG_FORMAT=json``).

Every line logged while a workflow or a step is handled carries its ids — workflow,
step, capability, tool, tenant (:mod:`jetagent.correlation`) — and the trace it belongs
to, with no change at any call site: a :class:`logging.Filter` on the handler copies
them onto each record, so records of other libraries' loggers (nats-py, httpx) get them
too. A JSON line::

    {"timestamp": "2026-12-06T06:10:08.400Z", "level": "INFO", "logger": "jetagent.worker",
     "message": "step …/2 (tool stumbling): …; run 2 again in 0.25 s",
     "service": "jetagent-worker-tools", "workflow_id": "0d63e395-…", "step_id": "2",
     "capability": "tools", "tool": "stumbling", "tenant": "acme",
     "trace_id": "5b8aa5a2d2c872e8321cf37308d69df2", "span_id": "051581bf3cb55c13"}

The same line as text: ``2026-12-06 06:10:08,400 INFO    jetagent.worker: step …; run 2
again in 0.25 s [wf=0d63e395 step=2 tools/stumbling tenant=acme]``.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from jetagent import correlation

__all__ = [
    "LogFormat",
    "configure",
    "configured",
    "handler",
    "json_lines",
    "seconds",
    "set_service",
]

LogFormat = Literal["text", "json"]

_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_NOISY = ("nats", "httpx", "httpcore")
"""Libraries whose INFO lines (one per provider call, per reconnect attempt) would bury
a service's own log: their warnings still show, and everything with ``--verbose``."""


def seconds(value: float) -> str:
    """A delay as log lines state it: to the millisecond, without trailing zeros
    (``0.25``, ``0.05``, ``2``), so the number said is the number applied."""
    return f"{round(value, 3):g}"


class _Context(logging.Filter):
    """Puts the service name, the ids of the work in hand and the current trace on each
    record (attached to the handler, so every logger's records pass through it)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        for key, value in correlation.current().items():
            setattr(record, key, value)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = f"{context.trace_id:032x}"
            record.span_id = f"{context.span_id:016x}"
        return True


def _short(workflow_id: str) -> str:
    """A UUID's first 8 characters (a prefix the CLI accepts); other ids whole."""
    uuid = len(workflow_id) == 36 and workflow_id.count("-") == 4
    return workflow_id[:8] if uuid else workflow_id


class _TextFormatter(logging.Formatter):
    """The plain-text line, with the work's ids compactly at its end."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = record.__dict__
        parts = []
        if "workflow_id" in ids:
            parts.append(f"wf={_short(ids['workflow_id'])}")
        if "step_id" in ids:
            parts.append(f"step={ids['step_id']}")
        if "capability" in ids:
            parts.append("/".join(filter(None, (ids["capability"], ids.get("tool")))))
        if "tenant" in ids:
            parts.append(f"tenant={ids['tenant']}")
        if not parts:
            return line
        # The ids go after the message's first line, before a traceback.
        first, sep, rest = line.partition("\n")
        return f"{first} [{' '.join(parts)}]{sep}{rest}"


class _JsonFormatter(JsonFormatter):
    """One JSON object per line: timestamp (ISO 8601, UTC), level, logger, message, then
    whatever the filter added, and ``exc_info`` with a traceback."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        at = datetime.fromtimestamp(record.created, UTC)
        return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        return _JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
        )
    return _TextFormatter(_TEXT_FORMAT)


def handler(
    *, log_format: LogFormat = "text", service: str, stream: TextIO | None = None
) -> logging.Handler:
    """A handler writing ``log_format`` lines to ``stream`` (default: stdout), each with
    ``service`` and the ids of the work in hand (and the current trace)."""
    made = logging.StreamHandler(stream or sys.stdout)
    made.setFormatter(_formatter(log_format))
    made.addFilter(_Context(service))
    return made


_handler: logging.Handler | None = None


def configure(*, log_format: LogFormat = "text", verbose: bool = False, service: str) -> None:
    """Send every log record to stdout as ``log_format`` lines (INFO; DEBUG with
    ``verbose``), each with ``service`` and the ids of the work in hand. Replaces what an
    earlier call configured (idempotent)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = handler(log_format=log_format, service=service)
    root.addHandler(_handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    # Warnings (a library's DeprecationWarning, say) become log records, in the same format.
    logging.captureWarnings(True)


def configured() -> bool:
    """Whether :func:`configure` ran in this process (a service's command)."""
    return _handler is not None


def json_lines() -> bool:
    """Whether :func:`configure` set up JSON lines (a command's errors then are one too)."""
    return _handler is not None and isinstance(_handler.formatter, _JsonFormatter)


def set_service(service: str) -> None:
    """Name the service on the lines of the handler :func:`configure` installed (the
    command knows its full name, with its capabilities, only once it runs)."""
    for found in _handler.filters if _handler is not None else []:
        if isinstance(found, _Context):
            found.service = service
