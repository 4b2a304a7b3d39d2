"""A child process's ties: to the folder it owns, and to the parent it must not outlive.

``jetagent up`` runs a nats-server and six services. Two rules keep that safe:

- **One owner per data folder.** A second ``up`` on the same folder must not start a
  second nats-server on a live JetStream store. :class:`FolderLock` is an ``flock`` on
  ``<folder>/LOCK`` holding the owner's pid; the server process inherits the lock's file
  descriptor, so the folder stays locked until the server itself has exited.
- **Children die with their parent.** If ``up`` is killed (SIGKILL: no cleanup runs),
  its children get a signal from the kernel (``PR_SET_PDEATHSIG``, Linux) instead of
  running on unowned. :func:`die_with_parent` is the ``preexec_fn`` that asks for it.
  The kernel sends it when the *thread* that forked the child exits, so fork from a
  thread that lives as long as the parent (the main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["FolderLock", "die_with_parent"]

_PR_SET_PDEATHSIG = 1


class FolderLock:
    """An exclusive, non-blocking ``flock`` of ``<folder>/LOCK``."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "LOCK"
        self.fd: int | None = None
        self.holder: int | None = None
        """The pid written by the process that holds the lock, when taking it failed."""

    def acquire(self) -> bool:
        """Take the lock (False if another process holds it). The file is opened without
        inheritance; pass :attr:`fd` to a child (``pass_fds``) that must hold it too."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            self.holder = int(holder) if holder.isdigit() else None
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when its parent dies (None
    where the kernel has no such option)."""
    if sys.platform != "linux":
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        # The parent may have died between fork and prctl: then no signal would come.
        if os.getppid() != parent:
            os._exit(1)

    return preexec
