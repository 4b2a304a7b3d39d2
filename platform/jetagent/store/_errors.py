"""Errors of ``jetagent.store``: the eventsourcing library's PEP 249 names, each also an
error of jetagent's one tree::

    eventsourcing.persistence.PersistenceError
     ├── IntegrityError
     │    └── StoreConflictError      a version or tracking conflict (nothing written)
     ├── OperationalError
     │    └── StoreUnavailableError   NATS unreachable, no answer within the deadline, or
     │                                a write refused otherwise  (also JetStreamUnavailableError)
     ├── ProgrammingError
     │    └── StreamConfigError       the stream is missing or unusable as configured
     │                                (also jetagent.jetstream.StreamConfigError)
     └── DataError
          └── WriteTooLargeError      more records than one atomic write may hold
                                      (also jetagent.jetstream.WriteTooLargeError)

Every one is a ``jetagent.errors.JetagentError``. The JetStream primitives raise their
own errors (``jetagent.jetstream``); ``with translated:`` turns them into these at the
store's boundary, so a caller of the store sees only these (and nats-py's never).
"""

from __future__ import annotations

from types import TracebackType

from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
)

from jetagent import jetstream
from jetagent.errors import JetagentError

__all__ = [
    "StoreConflictError",
    "StoreUnavailableError",
    "StreamConfigError",
    "WriteTooLargeError",
    "translated",
]


class StoreConflictError(IntegrityError, JetagentError):
    """A write conflicted with another (a version or tracking conflict): nothing written."""


class StoreUnavailableError(OperationalError, jetstream.JetStreamUnavailableError):
    """The NATS server could not be reached, did not answer in time, or refused a write
    for a reason other than a conflict."""


class StreamConfigError(ProgrammingError, jetstream.StreamConfigError):
    """The application's stream is missing or has settings the store cannot work with."""


class WriteTooLargeError(DataError, jetstream.WriteTooLargeError):
    """One atomic write holds more messages than the server accepts in a batch."""


class _Translated:
    """Raises the JetStream primitives' errors as the store's (the library's) names.

    A class rather than ``contextlib.contextmanager``: it wraps every call of the
    store, and this costs a fraction of a generator-based context manager.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, PersistenceError):
            return  # nothing raised, or already the store's own
        if isinstance(exc, jetstream.ConcurrencyConflict):
            raise StoreConflictError(str(exc)) from exc
        if isinstance(exc, jetstream.JetStreamUnavailableError):
            raise StoreUnavailableError(str(exc)) from exc
        if isinstance(exc, jetstream.StreamConfigError):
            raise StreamConfigError(str(exc)) from exc
        if isinstance(exc, jetstream.WriteTooLargeError):
            raise WriteTooLargeError(str(exc)) from exc


translated = _Translated()
"""``with translated:`` — the store's boundary, where the primitives' errors become its own."""
