"""Errors of ``jetagent.store``, as subclasses of the eventsourcing library's PEP 249 names.

::

    eventsourcing.persistence.PersistenceError
     ├── IntegrityError
     │    └── StoreConflictError         a version or tracking conflict (nothing written)
     ├── OperationalError
     │    └── StoreUnavailableError       NATS unreachable, or no answer within the deadline
     ├── ProgrammingError
     │    └── StreamConfigError          the stream exists with settings the store cannot use
     └── DataError
          └── WriteTooLargeError         more records than one atomic write may hold

Raw nats-py errors never leave this package: they are translated where they happen.
Each is also a ``jetagent.errors.JetagentError`` (the one tree users catch).
"""

from __future__ import annotations

from eventsourcing.persistence import DataError, IntegrityError, OperationalError, ProgrammingError

from jetagent.errors import JetagentError, UnavailableError

__all__ = [
    "StoreConflictError",
    "StoreUnavailableError",
    "StreamConfigError",
    "WriteTooLargeError",
]


class StoreConflictError(IntegrityError, JetagentError):
    """A write conflicted with another (a version or tracking conflict): nothing written."""


class StoreUnavailableError(OperationalError, UnavailableError):
    """The NATS server could not be reached, or did not answer in time."""


class StreamConfigError(ProgrammingError, JetagentError):
    """The application's stream is missing or has settings the store cannot work with."""


class WriteTooLargeError(DataError, JetagentError):
    """One atomic write holds more messages than the server accepts in a batch."""
