"""Finding the local platform: where a running ``jetagent up`` says its URL is, and who
holds a port it wanted.

``jetagent up`` announces the URL of its embedded nats-server in two places while it
runs, and withdraws it when it stops:

- ``<data folder>/nats.url``: the URL and a newline, nothing else, so a shell can use it
  (``export NATS_URL=$(cat .jetagent/nats.url)``);
- a per-user pointer, ``$XDG_STATE_HOME/jetagent/up.json`` (``~/.local/state/...`` when
  ``XDG_STATE_HOME`` is unset): the URL, the data folder and the pid of the newest
  ``up``, so commands started in any folder find it.

:func:`discover` reads them in that order when ``NATS_URL`` is not set (the CLI's
commands and ``Client.connect()`` call it). An announcement counts only while the
``up`` that wrote it holds its data folder's lock (the pid in ``<data>/nats/LOCK``,
``jetagent._process.FolderLock``): an ``up`` killed with SIGKILL leaves its files behind,
and they are then ignored rather than leading a command to a dead or reused port.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Announcement",
    "announce",
    "discover",
    "port_owner",
    "url_file",
    "user_file",
    "withdraw",
]

UP_SERVER_NAME = "jetagent-up"
"""The ``server_name`` of the nats-server ``jetagent up`` starts (what :func:`port_owner`
recognises in a server's INFO)."""


@dataclass(frozen=True)
class Announcement:
    """A running ``jetagent up``: its URL, data folder and pid, and the file that said so."""

    url: str
    data_dir: Path
    pid: int
    source: Path


def url_file(data_dir: Path) -> Path:
    """``<data_dir>/nats.url``: the URL of the ``up`` running on that data folder."""
    return data_dir / "nats.url"


def user_file() -> Path:
    """The per-user pointer to the newest running ``up`` (XDG base directories: state)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "jetagent" / "up.json"


def announce(data_dir: Path, url: str) -> list[str]:
    """Write both files for this process's ``up`` on ``data_dir`` (absolute). Returns
    problems as sentences (an unwritable home folder must not stop ``up``)."""
    problems = []
    try:
        _write(url_file(data_dir), url + "\n")
    except OSError as exc:
        problems.append(f"cannot write {url_file(data_dir)}: {exc.strerror or exc}")
    pointer = {"url": url, "data_dir": str(data_dir), "pid": os.getpid()}
    try:
        _write(user_file(), json.dumps(pointer) + "\n")
    except OSError as exc:
        problems.append(f"cannot write {user_file()}: {exc.strerror or exc}")
    return problems


def withdraw(data_dir: Path) -> None:
    """Remove this process's announcement (the per-user pointer only if it is still
    ours: a newer ``up`` may have replaced it)."""
    with contextlib.suppress(OSError):
        url_file(data_dir).unlink()
    pointer = _read_pointer(user_file())
    if pointer is not None and pointer.pid == os.getpid():
        with contextlib.suppress(OSError):
            user_file().unlink()


def discover(data_dir: Path) -> Announcement | None:
    """The running ``up`` on ``data_dir``, else the one the per-user pointer names, else
    ``None``. Stale announcements (their ``up`` is gone) are ignored."""
    here = url_file(data_dir)
    holder = _lock_holder(data_dir)
    if holder is not None:
        url = _read_url(here)
        if url is not None:
            return Announcement(url, Path(os.path.abspath(data_dir)), holder, here)
    pointer = _read_pointer(user_file())
    # The data folder's own file must agree too: it is withdrawn first on a clean stop.
    if (
        pointer is not None
        and _lock_holder(pointer.data_dir) == pointer.pid
        and _read_url(url_file(pointer.data_dir)) == pointer.url
    ):
        return pointer
    return None


def port_owner(port: int, data_dir: Path) -> str:
    """Who holds ``port`` on loopback, and what to do about it: one sentence for the
    error ``jetagent up`` gives when its port is taken."""
    choose = "`jetagent up --port N` (--port 0: any free port; or set JETAGENT_NATS_PORT)"
    running = discover(data_dir)
    if running is None or not running.url.endswith(f":{port}"):
        running = None
    info = _nats_info(port)
    if running is not None or (info is not None and info.get("server_name") == UP_SERVER_NAME):
        where = (
            f" (pid {running.pid}, data folder {running.data_dir})" if running is not None else ""
        )
        return (
            f"port {port} is taken by another `jetagent up`{where}: use it (`jetagent` "
            f"commands find it), stop it, or start this one with {choose}"
        )
    if info is not None:
        name = info.get("server_name") or info.get("server_id") or "?"
        version = info.get("version") or "?"
        return (
            f"port {port} is taken by a nats-server that `jetagent up` did not start "
            f"(server {name}, version {version}; your own?): to run jetagent on it, "
            f"`NATS_URL=nats://127.0.0.1:{port} jetagent up` (it provisions jetagent's "
            f"streams there); to keep them apart, {choose}"
        )
    return (
        f"port {port} on 127.0.0.1 is in use by a program that is not a nats-server: "
        f"start on another port with {choose}"
    )


def _nats_info(port: int) -> dict[str, object] | None:
    """The INFO a NATS server sends first on every connection, or ``None``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _write(path: Path, text: str) -> None:
    """Atomically: a reader sees the old content or the new, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _read_url(path: Path) -> str | None:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    return text if text.startswith(("nats://", "tls://")) and "\n" not in text else None


def _read_pointer(path: Path) -> Announcement | None:
    try:
        raw = json.loads(path.read_text())
        return Announcement(str(raw["url"]), Path(raw["data_dir"]), int(raw["pid"]), path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _lock_holder(data_dir: Path) -> int | None:
    """The pid of the running ``up`` that holds ``data_dir``, else ``None``."""
    try:
        text = (data_dir / "nats" / "LOCK").read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return pid
