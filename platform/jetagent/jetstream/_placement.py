"""How many replicas a deployment's streams get: the shape of the cluster the client is
connected to, and the plan drawn from it and the setting (docs/ARCHITECTURE.md §3).

A server tells every client, in its ``INFO``, the name of its cluster (none when it runs
alone) and the client URLs of the cluster's servers (``connect_urls``, unless the cluster
is configured not to advertise them). That is read once, without a request, on one node
or three (measured with nats-server 2.15.1: no ``cluster`` alone; ``cluster`` and three
``connect_urls`` on a 3-node cluster).

"auto" gives R3 on a cluster of at least three servers and R1 on a single server. A
cluster that advertises fewer than three gets R1: a 2-node group cannot elect a leader
once it loses a node, so R2 would only add a second server every write waits for. The
advertised list holds the servers running when the client connected; a node that is
down then is missing from it, which is why "auto" never shrinks a stream (the caller
keeps the replicas an existing stream has when they exceed the plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nats.aio.client import Client as NATS

from jetagent.errors import ConfigError

__all__ = ["ClusterShape", "ReplicaPlan", "cluster_shape", "plan_replicas"]

AUTO_REPLICAS = 3
"""What "auto" gives a cluster of at least this many servers."""


@dataclass(frozen=True)
class ClusterShape:
    """The JetStream deployment a client is connected to."""

    cluster: str | None
    """The cluster's name; ``None`` for a server that runs alone."""
    servers: int | None
    """Servers the cluster advertises (``1`` alone; ``None``: a cluster that does not
    advertise its servers' URLs)."""

    def describe(self) -> str:
        """``a single server`` / ``cluster 'east' of 3 servers``."""
        if self.cluster is None:
            return "a single server"
        if self.servers is None:
            return f"cluster {self.cluster!r} (its servers are not advertised)"
        return f"cluster {self.cluster!r} of {self.servers} servers"


def cluster_shape(nc: NATS) -> ClusterShape:
    """The shape of the deployment ``nc`` is connected to, from the server's ``INFO``."""
    # nats-py keeps the INFO of the server it connected to here; it has no public name.
    info = nc._server_info
    cluster = info.get("cluster") or None
    if cluster is None:
        return ClusterShape(cluster=None, servers=1)
    urls = {str(url) for url in info.get("connect_urls") or ()}
    return ClusterShape(cluster=str(cluster), servers=len(urls) or None)


@dataclass(frozen=True)
class ReplicaPlan:
    """How many replicas streams get here, and why."""

    replicas: int
    auto: bool
    """Chosen by "auto" (which only grows streams) rather than set explicitly."""
    reason: str
    """E.g. ``auto: cluster 'jetagent' of 3 servers``."""


def plan_replicas(
    setting: int | Literal["auto"], shape: ClusterShape, *, name: str = "JETAGENT_REPLICAS"
) -> ReplicaPlan:
    """The replicas for ``setting`` on ``shape`` (``name`` is the setting, for messages).

    An explicit count above 1 on a server that runs alone is refused: nats-server would
    refuse every stream with "replicas > 1 not supported in non-clustered mode". On a
    cluster the count is not checked against the advertised servers (a node that is down
    is missing from them); the server refuses what it cannot place, and that is said.
    """
    if setting == "auto":
        if shape.cluster is None:
            return ReplicaPlan(1, auto=True, reason="auto: a single server")
        if shape.servers is None or shape.servers >= AUTO_REPLICAS:
            return ReplicaPlan(AUTO_REPLICAS, auto=True, reason=f"auto: {shape.describe()}")
        return ReplicaPlan(
            1,
            auto=True,
            reason=f"auto: {shape.describe()}, fewer than the {AUTO_REPLICAS} R3 needs; a "
            "server that is down is not counted, and existing streams keep their replicas",
        )
    if setting > 1 and shape.cluster is None:
        raise ConfigError(
            f"{name}={setting} needs a JetStream cluster of at least {setting} servers, but "
            f"the NATS server runs alone (not in a cluster): set {name}=auto (or 1), or "
            "connect to a cluster"
        )
    return ReplicaPlan(setting, auto=False, reason=f"{name}={setting}")
