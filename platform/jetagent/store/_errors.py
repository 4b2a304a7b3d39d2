"""Errors of ``jetagent.store`` (for now the JetStream layer's own; see jetagent.jetstream)."""

from jetagent.jetstream._errors import (
    StoreConflictError,
    StoreUnavailableError,
    StreamConfigError,
    WriteTooLargeError,
)

__all__ = [
    "StoreConflictError",
    "StoreUnavailableError",
    "StreamConfigError",
    "WriteTooLargeError",
]
