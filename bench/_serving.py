"""The shared tail of the bench's local servers: publish the port, serve until signalled."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path


async def serve_until_stopped(server: asyncio.Server, port_file: Path) -> None:
    """Write the server's port to ``port_file`` (atomically, so a reader never sees half
    of it) and serve until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    tmp = port_file.with_name(port_file.name + ".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    async with server:
        await stop.wait()
