"""Where and how one application's records are stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jetagent.jetstream import load_definition

__all__ = ["StoreSettings"]


@dataclass(frozen=True, kw_only=True)
class StoreSettings:
    """Where and how one application's records are stored."""

    stream: str
    """The JetStream stream holding the application's records."""
    root: str
    """Subject prefix of the records (see ``_subjects``)."""
    replicas: int = 1
    """Stream replicas when the store creates the stream (3 in a cluster)."""
    create_stream: bool = True
    """Create the stream on first use when it is missing."""
    request_timeout: float = 5.0
    """Seconds to wait for one acknowledgement or read."""
    write_deadline: float = 30.0
    """Seconds a write keeps retrying through server restarts and leader elections."""

    def stream_config(self) -> dict[str, Any]:
        """The stream definition ``nats/streams/eventstore.json`` for this application."""
        config = load_definition("eventstore")
        config.update(name=self.stream, subjects=[f"{self.root}.>"], num_replicas=self.replicas)
        return config
