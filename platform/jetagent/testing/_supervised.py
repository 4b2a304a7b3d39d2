"""One child process under supervision: started with a log, watched, stopped for sure.

Integration tests run jetagent's services (and local fake servers) as real processes so
they can SIGKILL them. What every such test needs, and what each used to write again:

- the output in a log file (one per process name, appended across restarts), so a
  failure can show the last lines, and a test can wait for a line to appear;
- readiness by polling real state with a deadline, failing at once if the process died;
- SIGTERM with a grace period, then SIGKILL; SIGKILL alone to simulate a crash;
- no orphans: each process leads a process group of its own (``start_new_session``),
  and when it is closed whatever is left of its group gets SIGKILL. ``kill()`` is a
  crash, so it kills the process alone (as the kernel would); the group is swept on
  :meth:`SupervisedProcess.close`. Processes still running when the interpreter exits
  are closed then (``atexit``), so a test that forgot cannot leak them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from jetagent._process import die_with_parent as _die_with_parent
from jetagent.errors import JetagentError
from jetagent.testing._waiting import WaitTimeout, wait_until

__all__ = ["ProcessExitedError", "SupervisedProcess"]

_RUNNING: set[SupervisedProcess] = set()
"""Started and not yet closed: closed at interpreter exit if nobody did (a strong
reference: a process object dropped without closing must still be found)."""


class ProcessExitedError(JetagentError, RuntimeError):
    """A supervised process exited while it was expected to run."""

    def __init__(self, name: str, returncode: int, tail: str) -> None:
        super().__init__(f"{name} exited with status {returncode}; its last output:\n{tail}")
        self.name = name
        self.returncode = returncode
        self.tail = tail


class SupervisedProcess:
    """A child process whose output goes to ``log_file``; a context manager.

    ``env`` replaces the environment (``None``: inherit this process's). With
    ``die_with_parent`` the kernel sends SIGTERM to the child if this process dies
    (Linux; start it from the main thread, which lives as long as the process).
    ``user``, ``group`` and ``extra_groups`` are passed to :class:`subprocess.Popen`
    (to run a child unprivileged).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_file: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        die_with_parent: bool = False,
        user: int | str | None = None,
        group: int | str | None = None,
        extra_groups: Sequence[int | str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.user = user
        self.group = group
        self.extra_groups = list(extra_groups) if extra_groups is not None else None
        self._popen: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._groups: set[int] = set()
        """Process groups this object started, to sweep on close."""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SupervisedProcess:
        """Start the process (nothing happens if it is running)."""
        if self.running:
            return self
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._offset = log.tell()
            self._popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: swept on close, not hit by Ctrl-C
                preexec_fn=_die_with_parent() if self.die_with_parent else None,
                user=self.user,
                group=self.group,
                extra_groups=self.extra_groups,
            )
        self._groups.add(self._popen.pid)
        _RUNNING.add(self)
        return self

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; sweep the process group. Returns
        the exit status (``None`` if never started)."""
        self.request_stop()
        return self._finish_stop(time.monotonic() + timeout)

    def request_stop(self) -> None:
        """Send SIGTERM without waiting (to stop several processes in parallel)."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)

    def _finish_stop(self, deadline: float) -> int | None:
        popen = self._popen
        if popen is None:
            return None
        try:
            popen.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
        self._sweep()
        return popen.returncode

    def kill(self) -> int:
        """SIGKILL the process alone, as a crash would, and reap it. Returns its status.

        Its children live on, as they would after a real crash, until :meth:`close`."""
        popen = self._require()
        if popen.poll() is None:
            popen.kill()
        return popen.wait()

    def restart(self, timeout: float = 20.0) -> SupervisedProcess:
        """Stop (SIGTERM, then SIGKILL after ``timeout``) and start again; the log goes on."""
        self.terminate(timeout)
        return self.start()

    def close(self, timeout: float = 20.0) -> None:
        """Stop it if it runs, and SIGKILL whatever is left of its process groups."""
        self.terminate(timeout)
        self._sweep()
        _RUNNING.discard(self)

    def _sweep(self) -> None:
        # Only groups whose leader was reaped: a live leader's group is its own business.
        # A group id stays reserved while any member lives, so it cannot name another
        # process's group here.
        if self._popen is not None and self._popen.poll() is None:
            return
        for pgid in list(self._groups):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            self._groups.discard(pgid)

    def __enter__(self) -> SupervisedProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------- state

    def _require(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen

    @property
    def pid(self) -> int:
        """The process id of the current (or last) run."""
        return self._require().pid

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status of the last run (``None`` while it runs)."""
        return None if self._popen is None else self._popen.poll()

    def poll(self) -> int | None:
        """As :meth:`subprocess.Popen.poll`."""
        return self.returncode

    def send_signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the process, or with ``group`` to its whole process group
        (as a terminal sends Ctrl-C to the foreground group)."""
        popen = self._require()
        if group:
            os.killpg(popen.pid, sig)
        else:
            popen.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and return its status (:class:`WaitTimeout`
        after ``timeout`` s)."""
        try:
            return self._require().wait(timeout)
        except subprocess.TimeoutExpired:
            assert timeout is not None
            raise WaitTimeout(f"{self.name} exiting", timeout, None) from None

    def check_alive(self) -> None:
        """Raise :class:`ProcessExitedError` (with the log's last lines) if it exited."""
        code = self._require().poll()
        if code is not None:
            raise ProcessExitedError(self.name, code, self.tail())

    # ------------------------------------------------------------------ output

    @property
    def log(self) -> str:
        """Everything in the log file: the output of every run so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def output(self) -> str:
        """The output of the current (or last) run."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(self._offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the current run's output."""
        return "\n".join(self.output.splitlines()[-lines:])

    def wait_for_output(self, text: str, *, timeout: float = 60.0) -> str:
        """Block until ``text`` appears in this run's output; return the output so far.

        Raises :class:`ProcessExitedError` if the process exits without printing it,
        :class:`WaitTimeout` after ``timeout`` s. In a coroutine, run it in a thread
        (``await asyncio.to_thread(process.wait_for_output, "ready")``).
        """

        def seen() -> str | None:
            output = self.output
            if text in output:
                return output
            self.check_alive()  # exited without saying it: no use waiting
            return None

        found = wait_until(seen, timeout=timeout, what=f"{text!r} in the output of {self.name}")
        assert found is not None
        return found

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<SupervisedProcess {self.name} {state if self._popen else 'not started'}>"


@atexit.register
def _close_leftovers() -> None:
    for process in list(_RUNNING):
        with contextlib.suppress(Exception):
            process.close(timeout=5.0)
