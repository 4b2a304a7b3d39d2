"""Run an untrusted Python snippet in a sandboxed process (a built-in tool).

    result = await run_python("print(6 * 7)", limits=SandboxLimits(cpu_seconds=2))
    result.ok, result.stdout, result.error      # True, "42\\n", None

The snippet runs in a fresh `python -I -S` with an empty environment, in a private
working folder that is deleted afterwards, confined by the kernel with no privilege
needed (the service runs as an ordinary user; README "Sandbox" and "Threat model"):

- Landlock: read-only access to the Python installation and system libraries,
  read-write to its own folder, nothing else; no TCP (ABI >= 4); no signals or abstract
  UNIX sockets beyond itself (ABI >= 6);
- a seccomp-bpf filter compiled per run (`_seccomp.py`): no sockets, no new processes or
  programs, no ptrace or other processes' memory, no pidfds, signals to itself only, no
  limits raised, no mounts, namespaces or io_uring;
- no_new_privs; resource limits (CPU, address space, file size, open files); as root,
  every capability dropped;
- every descriptor closed but a result pipe, which the service reads as untrusted input
  (size-limited, line-validated): whether a run succeeded comes from the kernel (exit
  status, signal, CPU time from wait4), never from what the snippet wrote;
- audit hooks (`_sandbox_guards.py`) that explain refusals early; not a barrier.

The snippet process checks every required layer (`REQUIRED_LAYERS`) before the snippet
starts and refuses to run it if the kernel lacks one, unless the service opted in with
JETAGENT_SANDBOX_ALLOW_WEAKER=1. `protections()` reports the layers once at start.

The service never blocks its event loop: it feeds the snippet's input, reads its output
up to the cap, watches the size of its folder, enforces the wall-clock timeout, and kills
the process (it cannot have children) through a pidfd. `run_python` reports every
outcome of a snippet in a `SandboxResult`; it raises (OSError) only when the host cannot
start a run at all, such as without a temporary folder.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ALLOW_WEAKER_ENV",
    "REQUIRED_LAYERS",
    "SandboxLimits",
    "SandboxResult",
    "announce_protections",
    "protections",
    "run_python",
]

log = logging.getLogger(__name__)

ALLOW_WEAKER_ENV = "JETAGENT_SANDBOX_ALLOW_WEAKER"
"""Set to 1 to run snippets even where a required layer is missing (never the default)."""
REQUIRED_LAYERS = ("resource_limits", "no_new_privs", "landlock_filesystem", "seccomp_filter")
_OPTIONAL_LAYERS = ("landlock_network", "landlock_scopes", "capabilities_dropped")
_CHILD = str(Path(__file__).with_name("_sandbox_child.py"))
_EXIT_REFUSED = 70
_EXIT_EXCEPTION = 1
_RESULT_CAP = 64 * 1024
_MAX_FILES = 10_000
_WATCH_EVERY_S = 0.025


@dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """What one snippet may use."""

    cpu_seconds: float = 5.0
    """CPU time of the snippet process, rounded up to whole seconds (RLIMIT_CPU)."""
    wall_seconds: float = 10.0
    """Wall-clock time of the whole run, interpreter start included."""
    memory_bytes: int = 256 * 2**20
    """Address space of the snippet process, interpreter included (RLIMIT_AS)."""
    max_output_bytes: int = 64 * 1024
    """stdout and stderr together; a snippet that writes more is stopped."""
    disk_bytes: int = 16 * 2**20
    """Largest file the snippet may write (RLIMIT_FSIZE), and the most its working folder
    may hold (with at most 10,000 entries): the service watches it and stops the run."""
    max_open_files: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""
    max_processes: int = 1
    """Threads of the snippet process at once, itself included: 1 means none (the
    seccomp filter refuses clone). Above 1, threads are allowed and bounded by the
    memory limit (each reserves its stack). New processes are never allowed."""

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds", "memory_bytes", "max_output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxLimits.{name} must be positive")
        if self.disk_bytes < 1 or self.max_open_files < 16 or self.max_processes < 1:
            raise ValueError(
                "SandboxLimits needs disk_bytes >= 1, max_open_files >= 16 and max_processes >= 1"
            )


_DEFAULT_LIMITS = SandboxLimits()


@dataclass(frozen=True, kw_only=True)
class SandboxResult:
    """The outcome of one run; `error` is None exactly when `ok`."""

    ok: bool
    """The snippet ran to the end and exited with 0, within every limit."""
    stdout: str
    stderr: str
    exit_code: int | None
    """None when the snippet was killed by a signal or never started."""
    error: str | None
    """Why the run did not succeed, for a person or a model to read: a refusal ("reading
    /etc/passwd is not allowed"), a limit ("CPU time limit of 5 s exceeded"), or the
    exception that ended the snippet ("ZeroDivisionError: division by zero")."""
    duration_s: float
    """Wall-clock time of the run as the service saw it."""
    cpu_s: float | None
    """CPU time of the snippet process, from the kernel (wait4)."""
    truncated: bool
    """The output reached `max_output_bytes`; what was kept ends with a marker."""
    signal: int | None = None
    """The signal that ended the process (SIGXCPU, SIGKILL ...), from the kernel."""
    layers: tuple[str, ...] = ()
    """The isolation layers that were active for this run."""


async def run_python(
    code: str, *, limits: SandboxLimits = _DEFAULT_LIMITS, stdin: str = ""
) -> SandboxResult:
    """Run `code` in the sandbox and report how it went; never blocks the event loop."""
    return await _run(code, limits=limits, stdin=stdin, guards=True)


def protections() -> dict[str, bool | str]:
    """Which isolation layers are active on this machine, and whether the `python` tool
    is served ("python_tool": "served", or "refused: ..." and why).

    Keys are layer names with True (active) or False; "notes" says why each inactive
    one is off. Probes the kernel once with a trivial run (blocking, some tens of
    milliseconds), then answers from memory; call it at start-up, not per request.
    """
    return dict(_probe())


def announce_protections() -> dict[str, bool | str]:
    """Log the sandbox's layers (at start of a tools worker) and return them; an error
    when the `python` tool is refused, a warning when it runs with fewer layers."""
    report = protections()
    active = ", ".join(k for k, v in report.items() if v is True) or "none"
    line = f"sandbox layers active: {active}; python tool: {report['python_tool']}"
    if report["notes"]:
        line += f" ({report['notes']})"
    if str(report["python_tool"]).startswith("refused"):
        log.error(line)
    elif report["python_tool"] != "served":
        log.warning(line)
    else:
        log.info(line)
    return report


async def _run(code: str, *, limits: SandboxLimits, stdin: str, guards: bool) -> SandboxResult:
    """`run_python`, with the audit hooks optional so tests can reach the kernel layers."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    work = tempfile.mkdtemp(prefix="jetagent-sandbox-")
    run = _Process(work, limits, guards=guards)
    try:
        await run.start(code, stdin)
        stopped = await run.watch()
        status, cpu = await run.finish()
    finally:
        run.close()
        _remove_tree(work)
    return _result(run, limits, stopped=stopped, status=status, cpu=cpu, started=started)


class _Process:
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
            self.proc = subprocess.Popen(
                [_interpreter(), *flags, _CHILD, *(f"{k}={v}" for k, v in settings.items())],
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
        full = asyncio.ensure_future(self.capture.full.wait())
        try:
            while not self.exited.done():
                left = deadline - loop.time()
                if left <= 0:
                    return self.kill("timeout")
                await asyncio.wait(
                    [self.exited, full], timeout=min(left, _WATCH_EVERY_S), return_when="FIRST_COMPLETED"
                )
                if full.done() and not self.exited.done():
                    return self.kill("output")
                if not self.exited.done() and self.folder_is_full():
                    return self.kill("disk")
            return "output" if self.capture.truncated is not None else None
        finally:
            full.cancel()

    def folder_is_full(self) -> bool:
        size, entries = _folder_usage(self.work, _MAX_FILES)
        return size > self.limits.disk_bytes or entries > _MAX_FILES

    def kill(self, why: str) -> str:
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        return why

    async def finish(self) -> tuple[int, float]:
        """Reap the process (it has ended or been killed) and let the readers finish."""
        assert self.exited is not None and self.proc is not None
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
            text += f"\n[output truncated at {_size(self.limit)}]"
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


def _folder_usage(root: str, max_entries: int) -> tuple[int, int]:
    """Bytes on disk and entries under `root`, counting stops past `max_entries`."""
    size = entries = 0
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            listing = os.scandir(folder)
        except PermissionError:
            # the snippet made its folder unreadable to hide what it holds; the service
            # owns it and takes the permission back
            with contextlib.suppress(OSError):
                os.chmod(folder, 0o700)
                listing = os.scandir(folder)
        except OSError:
            continue
        with listing:
            for entry in listing:
                entries += 1
                if entries > max_entries:
                    return size, entries
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                size += info.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
    return size, entries


def _remove_tree(path: str) -> None:
    def make_writable(function: Callable[..., Any], failed: str, _: object) -> None:
        # a snippet may chmod its own folders to 0; the service (same user) still has to
        # delete them
        os.chmod(os.path.dirname(failed), 0o700)
        os.chmod(failed, 0o700)
        function(failed)

    try:
        shutil.rmtree(path, onerror=make_writable)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


@functools.cache
def _interpreter() -> str:
    # The base interpreter, not a venv's: with -I -S it needs only the standard library.
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _parse_layers(first: str) -> tuple[str, list[str], list[str]]:
    """'layers a,b|notes' or 'refused a,b|notes' -> (verdict, active, notes)."""
    verdict, _, rest = first.partition(" ")
    active, _, notes = rest.partition("|")
    return verdict, [a for a in active.split(",") if a], [n for n in notes.split("; ") if n]


def _result(
    run: _Process,
    limits: SandboxLimits,
    *,
    stopped: str | None,
    status: int,
    cpu: float,
    started: float,
) -> SandboxResult:
    first, said = run.channel.records()
    verdict, active, notes = _parse_layers(first)
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    claim = dict(said[-1:])  # the snippet's last word on why it failed
    capture = run.capture
    if stopped == "output":
        error: str | None = f"output truncated at {_size(limits.max_output_bytes)}"
    elif stopped == "timeout":
        error = f"wall-clock timeout of {limits.wall_seconds:g} s exceeded"
    elif stopped == "disk":
        error = f"the working folder is full ({_size(limits.disk_bytes)}, 10,000 files)"
    elif verdict == "refused" and exit_code == _EXIT_REFUSED:
        error = (
            f"the sandbox refused to run the snippet: {'; '.join(notes) or 'a layer is missing'}"
            f" (the kernel lacks a required layer; {ALLOW_WEAKER_ENV}=1 runs it without)"
        )
    elif verdict != "layers":
        tail = capture.text(capture.stderr).strip().splitlines()[-1:] or ["no output"]
        error = f"the sandbox could not start the snippet ({tail[0][:300]})"
    elif killed_by == signal.SIGXCPU or (
        killed_by == signal.SIGKILL and cpu >= math.ceil(limits.cpu_seconds)
    ):
        error = f"CPU time limit of {limits.cpu_seconds:g} s exceeded"
    elif exit_code == _EXIT_EXCEPTION and "memory" in claim:
        error = f"memory limit of {_size(limits.memory_bytes)} exceeded"
    elif exit_code == _EXIT_EXCEPTION and claim.get("disk") == "27":
        error = f"file size limit of {_size(limits.disk_bytes)} exceeded"
    elif exit_code == _EXIT_EXCEPTION and "disk" in claim:
        error = f"the working folder is full ({_size(limits.disk_bytes)}, 10,000 files)"
    elif exit_code == _EXIT_EXCEPTION and claim:
        error = next(iter(claim.values()))[:300]
    elif exit_code is not None and exit_code != 0:
        error = f"exited with code {exit_code}"
    elif killed_by is not None:
        error = f"killed by {signal.Signals(killed_by).name}"
    else:
        error = None
    return SandboxResult(
        ok=error is None,
        stdout=capture.text(capture.stdout),
        stderr=capture.text(capture.stderr),
        exit_code=exit_code,
        error=error,
        duration_s=asyncio.get_running_loop().time() - started,
        cpu_s=round(cpu, 4),
        truncated=capture.truncated is not None,
        signal=killed_by,
        layers=tuple(active),
    )


def _size(count: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= factor and count % factor == 0:
            return f"{count // factor} {unit}"
    return f"{count} bytes"


@functools.cache
def _probe() -> tuple[tuple[str, bool | str], ...]:
    async def trivial() -> tuple[str, list[str], list[str]]:
        work = tempfile.mkdtemp(prefix="jetagent-sandbox-")
        run = _Process(work, _DEFAULT_LIMITS, guards=True)
        try:
            await run.start("pass", "")
            await run.watch()
            await run.finish()
        finally:
            run.close()
            _remove_tree(work)
        return _parse_layers(run.channel.records()[0])

    # A loop of its own, in a thread: callable with or without a running loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        verdict, active, notes = pool.submit(asyncio.run, trivial()).result()
    missing = [layer for layer in REQUIRED_LAYERS if layer not in active]
    if verdict == "layers" and not missing:
        tool = "served"
    elif verdict == "layers":
        tool = f"served with fewer layers ({ALLOW_WEAKER_ENV}=1): missing {', '.join(missing)}"
    else:
        why = "; ".join(notes) or "the sandbox could not start"
        tool = f"refused: {why} (set {ALLOW_WEAKER_ENV}=1 to run without)"
    report: list[tuple[str, bool | str]] = [(layer, layer in active) for layer in REQUIRED_LAYERS]
    optional = _OPTIONAL_LAYERS if os.geteuid() == 0 else _OPTIONAL_LAYERS[:2]
    report += [(layer, layer in active) for layer in optional]
    report += [
        ("closed_descriptors", verdict == "layers"),
        ("empty_environment", True),
        ("audit_hooks", True),
        ("python_tool", tool),
        ("notes", "; ".join(notes)),
    ]
    return tuple(report)
