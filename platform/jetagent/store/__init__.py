"""A persistence module for the ``eventsourcing`` library on NATS JetStream.

Select it like any of the library's persistence modules::

    PERSISTENCE_MODULE=jetagent.store
    NATS_URL=nats://127.0.0.1:4222

Every application gets one stream, named from the application (``BankAccounts``) unless
``NATS_STREAM`` (or ``<APPNAME>_NATS_STREAM``) says otherwise, created on first use with the
settings in ``nats/streams/eventstore.json``. Notification ids are stream sequences.

Environment (each also readable with the application-name prefix, as the library does):

=====================  ===========================================================
``NATS_URL``           server URL(s), comma-separated (default ``nats://127.0.0.1:4222``)
``NATS_CREDS``         a credentials file for an authenticated server
``NATS_STREAM``        stream name (default: the application's name)
``NATS_SUBJECT_ROOT``  subject prefix of its records (default: the stream name)
``NATS_REPLICAS``      replicas when the store creates the stream (default 1)
``NATS_CREATE_STREAM`` create a missing stream (default ``y``)
``NATS_TIMEOUT``       seconds to wait for one acknowledgement or read (default 5)
``NATS_WRITE_DEADLINE`` seconds a write keeps retrying through failover (default 30)
``NATS_CONNECT_TIMEOUT`` seconds to wait for the first connection (default 2)
=====================  ===========================================================

``AsyncStore`` is the same store for asyncio code.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    Mapper,
    ProcessRecorder,
    Transcoder,
)
from eventsourcing.utils import Environment, EnvType, resolve_topic, strtobool
from nats.aio.client import Client as NATS

from jetagent.jetstream import LoopThread, connect, shared_loop
from jetagent.store._async import EVENTS, SNAPSHOTS, AsyncStore
from jetagent.store._errors import (
    StoreConflictError,
    StoreUnavailableError,
    StreamConfigError,
    WriteTooLargeError,
    translated,
)
from jetagent.store._recorders import (
    NatsAggregateRecorder,
    NatsApplicationRecorder,
    NatsProcessRecorder,
    NatsSubscription,
    NatsTrackingRecorder,
)
from jetagent.store._settings import StoreSettings
from jetagent.store._subjects import encode_token
from jetagent.store._transcoder import MsgspecTranscoder, TypedMapper

__all__ = [
    "AsyncStore",
    "Factory",
    "MsgspecTranscoder",
    "NatsAggregateRecorder",
    "NatsApplicationRecorder",
    "NatsFactory",
    "NatsProcessRecorder",
    "NatsSubscription",
    "NatsTrackingRecorder",
    "StoreConflictError",
    "StoreSettings",
    "StoreUnavailableError",
    "StreamConfigError",
    "TypedMapper",
    "WriteTooLargeError",
]

log = logging.getLogger("jetagent.store")

DEFAULT_URL = "nats://127.0.0.1:4222"
_STREAM_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def stream_name_for(application_name: str) -> str:
    """A valid stream name derived from an application's name."""
    name = _STREAM_CHARS.sub("_", application_name).strip("_")
    return name or "EVENTS"


class NatsFactory(InfrastructureFactory[NatsTrackingRecorder]):
    """Builds the JetStream recorders for one application (``PERSISTENCE_MODULE``)."""

    NATS_URL = "NATS_URL"
    NATS_CREDS = "NATS_CREDS"
    NATS_STREAM = "NATS_STREAM"
    NATS_SUBJECT_ROOT = "NATS_SUBJECT_ROOT"
    NATS_REPLICAS = "NATS_REPLICAS"
    NATS_CREATE_STREAM = "NATS_CREATE_STREAM"
    NATS_TIMEOUT = "NATS_TIMEOUT"
    NATS_WRITE_DEADLINE = "NATS_WRITE_DEADLINE"
    NATS_CONNECT_TIMEOUT = "NATS_CONNECT_TIMEOUT"

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        self.loop: LoopThread = shared_loop()
        self.settings = self._settings()
        url = self.env.get(self.NATS_URL) or DEFAULT_URL
        with translated:
            self.nc: NATS = self.loop.run(
                connect(
                    url,
                    name=f"jetagent.store:{self.env.name or 'app'}",
                    creds=self.env.get(self.NATS_CREDS) or None,
                    timeout=float(self.env.get(self.NATS_CONNECT_TIMEOUT) or 2.0),
                )
            )
        self.store = AsyncStore(self.nc, self.settings)
        try:
            self.loop.run(self.store.open())
        except BaseException:
            self.close()
            raise

    def _settings(self) -> StoreSettings:
        stream = self.env.get(self.NATS_STREAM) or stream_name_for(self.env.name)
        if _STREAM_CHARS.search(stream):
            raise StreamConfigError(
                f"NATS_STREAM={stream!r} is not a valid stream name "
                "(letters, digits, '-' and '_' only)"
            )
        try:
            replicas = int(self.env.get(self.NATS_REPLICAS) or 1)
            timeout = float(self.env.get(self.NATS_TIMEOUT) or 5.0)
            deadline = float(self.env.get(self.NATS_WRITE_DEADLINE) or 30.0)
        except ValueError as exc:
            raise StreamConfigError(f"invalid number in the store's environment: {exc}") from exc
        return StoreSettings(
            stream=stream,
            root=self.env.get(self.NATS_SUBJECT_ROOT) or stream,
            replicas=replicas,
            create_stream=strtobool(self.env.get(self.NATS_CREATE_STREAM) or "y"),
            request_timeout=timeout,
            write_deadline=deadline,
        )

    def transcoder(self) -> Transcoder:
        """The msgspec transcoder, unless ``TRANSCODER_TOPIC`` names another."""
        topic = self.env.get(self.TRANSCODER_TOPIC)
        if topic:
            transcoder_class: type[Transcoder] = resolve_topic(topic)
            return transcoder_class()
        return MsgspecTranscoder()

    def mapper(
        self,
        transcoder: Transcoder | None = None,
        mapper_class: type[Mapper[Any]] | None = None,
    ) -> Mapper[Any]:
        """A :class:`TypedMapper`, unless ``MAPPER_TOPIC`` names another mapper."""
        if mapper_class is None and not self.env.get(self.MAPPER_TOPIC):
            mapper_class = TypedMapper
        return super().mapper(transcoder=transcoder, mapper_class=mapper_class)

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        kind = {"events": EVENTS, "snapshots": SNAPSHOTS}.get(purpose, "x" + encode_token(purpose))
        return NatsAggregateRecorder(self.store, self.loop, kind=kind)

    def application_recorder(self) -> ApplicationRecorder:
        return NatsApplicationRecorder(self.store, self.loop)

    def tracking_recorder(
        self, tracking_recorder_class: type[NatsTrackingRecorder] | None = None
    ) -> NatsTrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = resolve_topic(topic) if topic else NatsTrackingRecorder
        assert tracking_recorder_class is not None
        if not issubclass(tracking_recorder_class, NatsTrackingRecorder):
            raise StreamConfigError(
                f"{tracking_recorder_class} is not a NatsTrackingRecorder subclass"
            )
        return tracking_recorder_class(self.store, self.loop)

    def process_recorder(self) -> ProcessRecorder:
        return NatsProcessRecorder(self.store, self.loop)

    def close(self) -> None:
        nc = getattr(self, "nc", None)
        store = getattr(self, "store", None)

        async def shutdown() -> None:
            if store is not None:
                await store.close()
            if nc is not None and not nc.is_closed:
                await nc.close()

        if self.loop.loop.is_running():
            self.loop.run(shutdown())

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


Factory = NatsFactory
