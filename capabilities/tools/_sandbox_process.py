"""The service's side of one sandbox run: start the snippet process, serve its pipes,
watch its folder and clock, kill it through a pidfd, reap it with wait4.

Nothing here trusts the snippet: its output is capped, its result pipe is read as
untrusted bytes (size-limited), and how the run ended comes from the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import math
import os
import py_compile
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capabilities.tools._sandbox_folder import folder_usage

if TYPE_CHECKING:
    from capabilities.tools.sandbox import SandboxLimits

log = logging.getLogger("capabilities.tools.sandbox")

ALLOW_WEAKER_ENV = "JETAGENT_SANDBOX_ALLOW_WEAKER"
"""Set to 1 to run snippets even where a required layer is missing (never the default)."""
CHILD = str(Path(__file__).with_name("_sandbox_child.py"))
# The snippet process imports the child module rather than running it as a script, so
# its bytecode comes from __pycache__: compiling it and the guards costs more than the
# rest of the set-up together (≈ 7 ms of a ≈ 20 ms run on this machine).
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1].partition('=')[2].rpartition('/')[0]); "
    "import _sandbox_child as child; del sys.path[0]; child.main(sys.argv[2:])"
)
MAX_FILES = 10_000
_RESULT_CAP = 64 * 1024
_WATCH_EVERY_S = 0.025
# Looking at a folder of 10,000 entries costs ~100 ms: never on the event loop, and the
# next look waits `_WATCH_BACKOFF` times as long as the last one took, so one snippet
# costs the service at most a fifth of a core however it fills its folder.
_WATCH_BACKOFF = 4


class SnippetProcess:
    """One snippet process: its pipes, its pidfd, and the tasks that serve them."""

    def __init__(self, work: str, limits: SandboxLimits, *, guards: bool) -> None:
        self.work = work
        self.limits = limits
        self.guards = guards
        self.capture = _Capture(limits.max_output_bytes)
        self.channel = _Channel(_RESULT_CAP)
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd: int | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self.exited: asyncio.Future[None] | None = None
        self.reaped = False

    async def start(self, code: str, stdin: str) -> None:
        loop = asyncio.get_running_loop()
        opened: list[int] = []

        def pipe() -> tuple[int, int]:
            read, write = os.pipe()
            opened.extend((read, write))
            return read, write

        _compile_once()
        try:
            (in_r, in_w), (out_r, out_w), (err_r, err_w) = pipe(), pipe(), pipe()
            (control_r, control_w), (result_r, result_w) = pipe(), pipe()
            settings = {
                "result": result_w,
                "control": control_r,
                "parent": os.getpid(),
                "work": self.work,
                "cpu": math.ceil(self.limits.cpu_seconds),
                "memory": self.limits.memory_bytes,
                "disk": self.limits.disk_bytes,
                "files": self.limits.max_open_files,
                "guards": int(self.guards),
                "weaker": int(os.environ.get(ALLOW_WEAKER_ENV) == "1"),
            }
            # -I: no environment, no user site, no script folder on sys.path; -S: the
            # standard library only; -B: no bytecode written; -u: output survives a kill.
            flags = ["-I", "-S", "-B", "-u", "-X", "utf8"]
            # Popen returns as soon as the process exists (vfork + exec); the wait is a
            # pidfd on the loop.
            self.proc = subprocess.Popen(  # noqa: ASYNC220
                [
                    _interpreter(),
                    *flags,
                    "-c",
                    _BOOT,
                    f"child={CHILD}",
                    *(f"{k}={v}" for k, v in settings.items()),
                ],
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(control_r, result_w),
                close_fds=True,
                env={},
                cwd=self.work,
                start_new_session=True,
            )
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        for fd in (in_r, out_w, err_w, control_r, result_w):
            os.close(fd)
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.exited = loop.create_future()
        loop.add_reader(self.pidfd, _settle, self.exited)
        program = _filter_program(self.proc.pid, threads=self.limits.max_processes > 1)
        control = b"%d\n" % len(program) + program + code.encode("utf-8", "surrogatepass")
        self.tasks = [
            asyncio.create_task(_write_all(control_w, control)),
            asyncio.create_task(_write_all(in_w, stdin.encode("utf-8", "surrogatepass"))),
            asyncio.create_task(_read_all(out_r, self.capture.sink(self.capture.stdout))),
            asyncio.create_task(_read_all(err_r, self.capture.sink(self.capture.stderr))),
            asyncio.create_task(_read_all(result_r, self.channel.take)),
        ]

    async def watch(self) -> str | None:
        """Wait for the end of the run; None, or why the service stopped it."""
        assert self.exited is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.wall_seconds
        next_look = loop.time()
        full: asyncio.Future[Any] = asyncio.ensure_future(self.capture.full.wait())
        waiting: list[asyncio.Future[Any]] = [self.exited, full]
        try:
            while not self.exited.done():
                left = deadline - loop.time()
                if left <= 0:
                    return self.kill("timeout")
                await asyncio.wait(
                    waiting,
                    timeout=min(left, _WATCH_EVERY_S),
                    return_when="FIRST_COMPLETED",
                )
                if full.done() and not self.exited.done():
                    return self.kill("output")
                if not self.exited.done() and loop.time() >= next_look:
                    began = loop.time()
                    filled = await self.folder_is_full()
                    next_look = loop.time() + _WATCH_BACKOFF * (loop.time() - began)
                    if filled and not self.exited.done():
                        return self.kill("disk")
            if self.capture.truncated is not None:
                return "output"
            # A snippet that filled its folder faster than the watch looks still did.
            return "disk" if await self.folder_is_full() else None
        finally:
            full.cancel()

    async def folder_is_full(self) -> bool:
        size, entries = await folder_usage(self.work, MAX_FILES)
        return size > self.limits.disk_bytes or entries > MAX_FILES

    def kill(self, why: str) -> str:
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        return why

    async def finish(self) -> tuple[int, float]:
        """Reap the process (it has ended or been killed) and let the readers finish."""
        assert self.exited is not None
        assert self.proc is not None
        await self.exited
        status, cpu = self.reap()
        # Nothing else holds the pipes' write ends, so the readers reach their end.
        await asyncio.wait(self.tasks[2:], timeout=1.0)
        return status, cpu

    def reap(self) -> tuple[int, float]:
        assert self.proc is not None
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.reaped = True
        self.proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap it
        return status, usage.ru_utime + usage.ru_stime

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.proc is not None and not self.reaped:
            # cancelled, or failed on the way: the run goes with the caller
            self.kill("cancelled")
            self.reap()
        if self.pidfd is not None:
            asyncio.get_running_loop().remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = None


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _filter_program(pid: int, *, threads: bool) -> bytes:
    """The seccomp program, or nothing where libseccomp is missing: the snippet process
    then reports the layer off (and refuses to run, unless told to run weaker)."""
    try:
        from capabilities.tools._seccomp import filter_program
    except (ImportError, OSError, AttributeError) as error:
        log.debug("no seccomp filter: %s", error)
        return b""
    return filter_program(pid=pid, threads=threads)


async def _wait_fd(fd: int, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    if write:
        loop.add_writer(fd, _settle, ready)
    else:
        loop.add_reader(fd, _settle, ready)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def _write_all(fd: int, data: bytes) -> None:
    os.set_blocking(fd, False)
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await _wait_fd(fd, write=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the snippet did not read it all
    finally:
        os.close(fd)


async def _read_all(fd: int, sink: Callable[[bytes], None]) -> None:
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                await _wait_fd(fd, write=False)
                continue
            if not chunk:
                return
            sink(chunk)
    finally:
        os.close(fd)


class _Capture:
    """stdout and stderr, read as they come, up to one shared cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.truncated: bytearray | None = None
        self.full = asyncio.Event()

    def sink(self, into: bytearray) -> Callable[[bytes], None]:
        def take(chunk: bytes) -> None:
            kept = chunk[: self.left]
            into.extend(kept)
            self.left -= len(kept)
            if len(kept) < len(chunk) and self.truncated is None:
                self.truncated = into
                self.full.set()

        return take

    def text(self, data: bytearray) -> str:
        text = data.decode("utf-8", "replace")
        if data is self.truncated:
            text += f"\n[output truncated at {size_text(self.limit)}]"
        return text


class _Channel:
    """The result pipe, read as untrusted input: at most `limit` bytes are kept (the
    rest is drained and dropped, so a flood neither blocks nor grows the service)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    def take(self, chunk: bytes) -> None:
        self.data += chunk[: self.limit - len(self.data)]

    def records(self) -> tuple[str, list[tuple[str, str]]]:
        """The first line, written before the snippet ran (trusted), and the snippet's
        records after it (untrusted: known keys only, bounded length)."""
        lines = bytes(self.data).split(b"\n")
        first = lines[0].decode("utf-8", "replace") if len(lines) > 1 else ""
        said = []
        for raw in lines[1:-1]:
            key, _, value = raw.decode("utf-8", "replace").partition(" ")
            if key in ("memory", "disk", "refused", "exception") and len(value) <= 4000:
                said.append((key, value))
        return first, said


@functools.cache
def _compile_once() -> None:
    """Write the bytecode the snippet process imports (it runs with -B, so it never
    writes any); where the installation is read-only it is usually there already."""
    for name in ("_sandbox_child.py", "_sandbox_guards.py"):
        source = str(Path(__file__).with_name(name))
        try:
            py_compile.compile(source, cfile=importlib.util.cache_from_source(source), doraise=True)
        except (OSError, py_compile.PyCompileError) as error:
            log.debug("no bytecode for %s: %s", source, error)


@functools.cache
def _interpreter() -> str:
    # The base interpreter, not a venv's: with -I -S it needs only the standard library.
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def size_text(count: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= factor and count % factor == 0:
            return f"{count // factor} {unit}"
    return f"{count} bytes"
