"""The JetStream primitives every part of jetagent shares.

A connection (:func:`connect`, :class:`FastHeaderClient`), batched direct get
(:class:`DirectGetter`), aggregates as subject trees appended with concurrency checks
(:class:`AggregateStream`), the one write path (``_writes``), continuous pull
(:mod:`jetagent.jetstream.consume`) and provisioning (:mod:`jetagent.jetstream.provision`).
The ``eventsourcing`` persistence module (:mod:`jetagent.store`) is built on these; the
platform's services use them directly.
"""

from jetagent.jetstream._aggregates import AggregateStream as AggregateStream
from jetagent.jetstream._aggregates import Appended as Appended
from jetagent.jetstream._aggregates import ConcurrencyConflict as ConcurrencyConflict
from jetagent.jetstream._aggregates import NewRecord as NewRecord
from jetagent.jetstream._client import FastHeaderClient as FastHeaderClient
from jetagent.jetstream._client import connect as connect
from jetagent.jetstream._direct import DirectGetter as DirectGetter
from jetagent.jetstream._direct import Record as Record
from jetagent.jetstream._errors import StoreUnavailableError as StoreUnavailableError
from jetagent.jetstream._errors import StreamConfigError as StreamConfigError
from jetagent.jetstream._errors import WriteTooLargeError as WriteTooLargeError
from jetagent.jetstream._loop import LoopThread as LoopThread
from jetagent.jetstream._loop import shared_loop as shared_loop

__all__ = [
    "AggregateStream",
    "Appended",
    "ConcurrencyConflict",
    "DirectGetter",
    "FastHeaderClient",
    "LoopThread",
    "NewRecord",
    "Record",
    "StoreUnavailableError",
    "StreamConfigError",
    "WriteTooLargeError",
    "connect",
    "shared_loop",
]
