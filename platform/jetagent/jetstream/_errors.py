"""Errors of the JetStream primitives, in jetagent's one tree::

    jetagent.errors.JetagentError
     ├── UnavailableError
     │    └── JetStreamUnavailableError   NATS unreachable, no answer in time, or a write
     │                                    refused for a reason that is not a conflict
     ├── StreamConfigError                a stream is missing or unusable as configured
     ├── WriteTooLargeError               more messages than one atomic write may hold
     └── ConcurrencyConflict              an expected-sequence check failed: nothing written

Raw nats-py errors never leave ``jetagent.jetstream``: they are translated where they
happen. ``jetagent.store`` translates these in turn into the eventsourcing library's
PEP 249 names.
"""

from __future__ import annotations

from jetagent.errors import JetagentError, UnavailableError

__all__ = [
    "ConcurrencyConflict",
    "JetStreamUnavailableError",
    "StreamConfigError",
    "WriteTooLargeError",
]


class JetStreamUnavailableError(UnavailableError):
    """The NATS server could not be reached, did not answer in time, or refused a write
    for a reason other than a conflict (a limit, a setting)."""


class StreamConfigError(JetagentError):
    """A stream is missing, or has settings the caller cannot work with."""


class WriteTooLargeError(JetagentError):
    """One atomic write holds more messages than the server accepts in a batch."""


class ConcurrencyConflict(JetagentError):
    """A write's expected-sequence check failed: another writer got there first, and
    nothing of the write was stored.

    ``actual`` is the sequence the server reported; an aggregate's append also names
    the ``aggregate_id`` and the ``expected`` sequence it was written against.
    """

    def __init__(
        self,
        message: str,
        *,
        actual: int | None = None,
        aggregate_id: str | None = None,
        expected: int | None = None,
    ) -> None:
        super().__init__(message)
        self.actual = actual
        self.aggregate_id = aggregate_id
        self.expected = expected
