"""The bench's local servers (the LLM and scripted model servers): each publishes its
port in a file and serves until signalled; the bench starts one as a supervised process
and waits for that file."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from jetagent.testing import SupervisedProcess, wait_until

ROOT = Path(__file__).resolve().parent.parent


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


def start_server(module: str, folder: Path, name: str) -> tuple[SupervisedProcess, int]:
    """Start ``python -m <module> <port file>`` (its log: ``<folder>/<name>.log``) and
    wait until it has published its port; the process and the port."""
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / f"{name}.port"
    port_file.unlink(missing_ok=True)
    process = SupervisedProcess(
        name,
        [sys.executable, "-m", module, str(port_file)],
        log_file=folder / f"{name}.log",
        cwd=ROOT,
    ).start()
    try:
        wait_until(port_file.exists, timeout=30, interval=0.02, alive=process.check_alive)
    except BaseException:
        process.close()
        raise
    return process, int(port_file.read_text())
