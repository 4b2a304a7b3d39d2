"""The JetStream primitives every part of jetagent shares.

A connection (:func:`connect`, :class:`FastHeaderClient`); batched direct get
(:class:`DirectGetter`, checked against the sequence a decision must see, with the
leader when only it can answer); the one write path (:func:`write` — a message or an
atomic batch, with expected-sequence checks and lost-acknowledgement resolution —,
:func:`write_once`, :func:`publish` and :func:`kv_put`, all retried through elections);
confirmed acks, naks and terms (:class:`Settler`); aggregates as subject trees
appended with a concurrency check (:class:`AggregateStream`); following a stream live
(:func:`follow`); stream definitions, checks and replica changes (:func:`ensure_stream`,
:class:`Applied`); JetStream API requests that ride leader elections
(:func:`api_request`, :class:`ApiDeadline`); header names and API error codes
(:mod:`jetagent.jetstream.headers`); the loop thread behind synchronous APIs
(:class:`LoopThread`); continuous pull
(:mod:`jetagent.jetstream.consume`) and provisioning (:mod:`jetagent.jetstream.provision`).

The ``eventsourcing`` persistence module (:mod:`jetagent.store`) is built on these; the
platform's services use them directly. Errors derive from
:class:`jetagent.errors.JetagentError` (see ``_errors``); nats-py's never leave here.
"""

from jetagent.jetstream._aggregates import AggregateStream as AggregateStream
from jetagent.jetstream._aggregates import NewRecord as NewRecord
from jetagent.jetstream._api import ApiDeadline as ApiDeadline
from jetagent.jetstream._api import api_request as api_request
from jetagent.jetstream._client import FastHeaderClient as FastHeaderClient
from jetagent.jetstream._client import connect as connect
from jetagent.jetstream._direct import DirectGetter as DirectGetter
from jetagent.jetstream._direct import Record as Record
from jetagent.jetstream._errors import ConcurrencyConflict as ConcurrencyConflict
from jetagent.jetstream._errors import JetStreamNotEnabledError as JetStreamNotEnabledError
from jetagent.jetstream._errors import JetStreamUnavailableError as JetStreamUnavailableError
from jetagent.jetstream._errors import NotPermittedError as NotPermittedError
from jetagent.jetstream._errors import StreamConfigError as StreamConfigError
from jetagent.jetstream._errors import WriteTooLargeError as WriteTooLargeError
from jetagent.jetstream._follow import follow as follow
from jetagent.jetstream._loop import LoopThread as LoopThread
from jetagent.jetstream._loop import shared_loop as shared_loop
from jetagent.jetstream._settle import Settler as Settler
from jetagent.jetstream._streams import Applied as Applied
from jetagent.jetstream._streams import ensure_stream as ensure_stream
from jetagent.jetstream._streams import load_definition as load_definition
from jetagent.jetstream._streams import stream_last_seq as stream_last_seq
from jetagent.jetstream._writes import MAX_BATCH as MAX_BATCH
from jetagent.jetstream._writes import Appended as Appended
from jetagent.jetstream._writes import Message as Message
from jetagent.jetstream._writes import kv_put as kv_put
from jetagent.jetstream._writes import publish as publish
from jetagent.jetstream._writes import write as write
from jetagent.jetstream._writes import write_once as write_once
from jetagent.jetstream.headers import ErrorCode as ErrorCode
from jetagent.jetstream.headers import Header as Header

__all__ = [
    "MAX_BATCH",
    "AggregateStream",
    "ApiDeadline",
    "Appended",
    "Applied",
    "ConcurrencyConflict",
    "DirectGetter",
    "ErrorCode",
    "FastHeaderClient",
    "Header",
    "JetStreamNotEnabledError",
    "JetStreamUnavailableError",
    "LoopThread",
    "Message",
    "NewRecord",
    "NotPermittedError",
    "Record",
    "Settler",
    "StreamConfigError",
    "WriteTooLargeError",
    "api_request",
    "connect",
    "ensure_stream",
    "follow",
    "kv_put",
    "load_definition",
    "publish",
    "shared_loop",
    "stream_last_seq",
    "write",
    "write_once",
]
