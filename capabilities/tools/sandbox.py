"""Run an untrusted Python snippet in a sandboxed subprocess (a built-in tool).

    result = await run_python("print(6 * 7)", limits=SandboxLimits(cpu_seconds=2))
    result.ok, result.stdout, result.error      # True, "42\\n", None

The snippet runs in a fresh `python -I -S` with an empty environment (plus HOME, TMPDIR
and LANG), in a private working folder that is deleted afterwards, behind these layers;
each one is used where the kernel allows it, and `protections()` says which are active:

- resource limits (setrlimit): CPU time, address space, file size, open files, processes;
- a per-run unprivileged uid when the service runs as root, so RLIMIT_NPROC holds (it
  does not apply to root) and everything the run started can be found and killed (an
  installation that uid cannot reach, say under /root, is read through descriptors
  opened beforehand);
- namespaces: network (no interfaces but a downed loopback), mount (pivot_root into a
  read-only view of the standard library and system libraries, four devices and a
  size-limited tmpfs working folder; no /etc, /proc or home), PID (the run's pid 1 takes
  every process with it), IPC and UTS;
- no_new_privs, and parent-death signals so a dying service takes its runs along;
- audit hooks (PEP 578) inside the snippet's interpreter refusing files outside the
  working folder and the standard library, sockets, new processes, ctypes and similar
  escape hatches with a clear message. Hooks alone are no security boundary; they are
  the layer that explains a refusal, and the one left where namespaces are unavailable.

The service side never blocks its event loop: it feeds stdin, reads stdout and stderr
incrementally up to the output cap, enforces the wall-clock timeout, then kills the whole
process tree (process group, per-run uid, PID namespace) and waits until it is gone.
`run_python` reports every outcome of a snippet in a `SandboxResult`; it raises (OSError)
only when the host cannot start a run at all, such as without a temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SandboxLimits", "SandboxResult", "protections", "run_python"]

_CHILD = str(Path(__file__).with_name("_sandbox_child.py"))
# Per-run uids, far above the ranges distributions and container runtimes hand out.
_UID_FIRST = 0x7A000000
_UID_COUNT = 1 << 24
_ENV = {"LANG": "C.UTF-8", "PATH": "/usr/bin:/bin"}
_LAYERS = (
    "network_namespace",
    "mount_namespace",
    "pid_namespace",
    "ipc_uts_namespaces",
    "per_run_uid",
    "no_new_privs",
)


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
    """Largest file the snippet may write (RLIMIT_FSIZE), and the size of its working
    folder when that is a private tmpfs (which also holds at most 10,000 files)."""
    max_open_files: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""
    max_processes: int = 1
    """Processes and threads of the run's uid at once (RLIMIT_NPROC); 1 means no threads
    and no children. Exact under the per-run uid; without one (not root) it counts all
    of the service user's processes, so any value admits no new ones. The audit hooks
    refuse starting processes whatever this is."""

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
    """CPU time of the snippet and its children; None when the run was killed from
    outside before it could report."""
    truncated: bool
    """The output reached `max_output_bytes`; what was kept ends with a marker."""


async def run_python(
    code: str, *, limits: SandboxLimits = _DEFAULT_LIMITS, stdin: str = ""
) -> SandboxResult:
    """Run `code` in the sandbox and report how it went; never blocks the event loop."""
    return await _run(code, limits=limits, stdin=stdin, guards=True)


def protections() -> dict[str, bool | str]:
    """Which isolation layers are active on this machine, for logs and the README.

    Keys are layer names with True (active) or False; "notes" says why each inactive
    one is off. Probes the kernel once with a trivial run (blocking, some tens of
    milliseconds), then answers from memory; call it at start-up, not per request.
    """
    return dict(_probe())


async def _run(code: str, *, limits: SandboxLimits, stdin: str, guards: bool) -> SandboxResult:
    """`run_python`, with the audit hooks optional so tests can reach the kernel layers."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    run = await asyncio.to_thread(_Run.prepare, code)
    capture = _Capture(limits.max_output_bytes)
    proc: asyncio.subprocess.Process | None = None
    tasks: list[asyncio.Task[Any]] = []
    stopped: str | None = None
    records: _Records | None = None
    try:
        proc = await asyncio.create_subprocess_exec(
            *run.command(limits, guards=guards),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_ENV,
            cwd=run.path,
            start_new_session=True,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        assert proc.stderr is not None
        readers = [
            asyncio.create_task(capture.drain(proc.stdout, capture.stdout)),
            asyncio.create_task(capture.drain(proc.stderr, capture.stderr)),
        ]
        exited = asyncio.create_task(proc.wait())
        full = asyncio.create_task(capture.full.wait())
        tasks = [asyncio.create_task(_feed(proc.stdin, stdin.encode())), *readers, exited, full]
        await asyncio.wait(
            [exited, full], timeout=limits.wall_seconds, return_when="FIRST_COMPLETED"
        )
        if not exited.done():
            stopped = "output" if full.done() else "timeout"
            _kill_group(proc.pid)
            await exited
        records = await asyncio.to_thread(run.settle, proc.pid, killed=stopped is not None)
        # Nothing of the run is left, so the pipes have reached their end.
        await asyncio.wait(readers, timeout=1.0)
        duration = loop.time() - started
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if records is None:
            # failed to start, or cancelled: the run goes with the caller
            if proc is not None and proc.returncode is None:
                _kill_group(proc.pid)
            await asyncio.to_thread(run.settle, proc.pid if proc else None, killed=True)
    return _result(
        records,
        capture,
        limits,
        stopped=stopped,
        duration=duration,
        launcher_exit=proc.returncode,
    )


@dataclass(frozen=True)
class _Run:
    """The host side of one run: its folder and, when root, its uid."""

    path: str
    uid: int | None

    @classmethod
    def prepare(cls, code: str) -> _Run:
        base = tempfile.gettempdir()
        uid: int | None = None
        if os.geteuid() == 0:
            for _ in range(1000):
                uid = _UID_FIRST + secrets.randbelow(_UID_COUNT)
                path = os.path.join(base, f"jetagent-sandbox-{uid}")
                try:
                    # mkdir is atomic: the folder is the uid's lease among all runs on
                    # this host, in this process or another
                    os.mkdir(path, 0o700)
                    break
                except FileExistsError:
                    continue
            else:
                raise OSError(f"no free sandbox uid; clean up {base}/jetagent-sandbox-*")
            # the snippet's uid must be able to pass through to its working folder
            os.chmod(path, 0o711)
        else:
            path = tempfile.mkdtemp(prefix="jetagent-sandbox-")
        snippet = os.open(os.path.join(path, "snippet.py"), os.O_WRONLY | os.O_CREAT, 0o600)
        with open(snippet, "w", encoding="utf-8", errors="surrogatepass") as file:
            file.write(code)
        return cls(path, uid)

    def command(self, limits: SandboxLimits, *, guards: bool) -> list[str]:
        settings = {
            "run_dir": self.path,
            "parent": os.getpid(),
            "uid": "" if self.uid is None else self.uid,
            "cpu": math.ceil(limits.cpu_seconds),
            "memory": limits.memory_bytes,
            "disk": limits.disk_bytes,
            "files": limits.max_open_files,
            "processes": limits.max_processes,
            "guards": int(guards),
        }
        # -I: no environment, no user site, no script folder on sys.path; -S: stdlib only;
        # -B: never write bytecode into the installation; -u: output survives a kill.
        flags = ["-I", "-S", "-B", "-u", "-X", "utf8"]
        return [_interpreter(), *flags, _CHILD, *(f"{k}={v}" for k, v in settings.items())]

    def settle(self, group: int | None, *, killed: bool) -> _Records:
        """After the launcher has exited: read the records, make sure nothing of the run
        is left, delete the run's folder."""
        records = _Records.parse(self._read("status"), self._read("report"))
        # The supervisor's "clean" means it reaped every process of the run itself; the
        # sweep is for when it could not (killed, or out of time).
        if group is not None and (killed or "clean" not in records.values):
            _sweep(group, self.uid)
        _remove_tree(self.path)
        return records

    def _read(self, name: str) -> str:
        try:
            with open(os.path.join(self.path, name), encoding="utf-8", errors="replace") as file:
                return file.read(1 << 20)
        except FileNotFoundError:
            return ""


@dataclass
class _Records:
    layers: set[str] = field(default_factory=set)
    off: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, status: str, report: str) -> _Records:
        records = cls()
        for line in status.splitlines():
            key, _, value = line.partition(" ")
            if key == "layer":
                records.layers.add(value)
            elif key == "off":
                records.off.append(value)
                records.layers.discard(value.partition(":")[0])  # tried, then failed
            else:
                records.values[key] = value
        for line in report.splitlines():
            key, _, value = line.partition(" ")
            if key in ("refused", "memory", "disk", "exception"):  # all the snippet may say
                records.values.setdefault(key, value)
        return records


class _Capture:
    """stdout and stderr, read as they come, up to one shared cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.truncated: bytearray | None = None
        self.full = asyncio.Event()

    async def drain(self, stream: asyncio.StreamReader, into: bytearray) -> None:
        while chunk := await stream.read(65536):
            kept = chunk[: self.left]
            into += kept
            self.left -= len(kept)
            if len(kept) < len(chunk):
                self.truncated = into
                self.full.set()
                return

    def text(self, data: bytearray) -> str:
        text = data.decode("utf-8", "replace")
        if data is self.truncated:
            text += f"\n[output truncated at {_size(self.limit)}]"
        return text


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        if data:
            stdin.write(data)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the snippet did not read it all
    finally:
        stdin.close()


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


def _sweep(group: int, uid: int | None) -> None:
    """Kill every process of the run (its process group, session or uid) and wait until
    none is running; escapes from the group are caught by the uid."""
    deadline = time.monotonic() + 5.0
    while left := _processes_of_run(group, uid):
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return
        time.sleep(0.002)  # a worker thread, waiting for SIGKILL to take effect


def _processes_of_run(group: int, uid: int | None) -> list[int]:
    """Live (not zombie) processes in the run's process group or session, or of its uid."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                state, _, pgrp, session = file.read().rsplit(b")", 1)[1].split()[:4]
            if state in (b"Z", b"X"):
                continue  # dead, waiting for its parent to reap it
            if group in (int(pgrp), int(session)) or (uid is not None and _uid_of(entry) == uid):
                found.append(int(entry))
        except (OSError, ValueError):
            continue  # gone meanwhile
    return found


def _uid_of(pid: str) -> int | None:
    with open(f"/proc/{pid}/status", "rb") as file:
        for line in file:
            if line.startswith(b"Uid:"):
                return int(line.split()[1])
    return None


def _remove_tree(path: str) -> None:
    def make_writable(function: Callable[..., Any], failed: str, _: object) -> None:
        # a snippet may chmod its own folders to 0; the service (same user, when not
        # root) still has to delete them
        os.chmod(os.path.dirname(failed), 0o700)
        os.chmod(failed, 0o700)
        function(failed)

    try:
        shutil.rmtree(path, onerror=make_writable)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


@functools.cache
def _interpreter() -> str:
    # The base interpreter, not a venv's: with -I -S it needs only the standard library,
    # which is all the filesystem view holds.
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _result(
    records: _Records,
    capture: _Capture,
    limits: SandboxLimits,
    *,
    stopped: str | None,
    duration: float,
    launcher_exit: int | None,
) -> SandboxResult:
    values = records.values
    exit_code = int(values["exit"]) if "exit" in values else None
    killed_by = int(values["signal"]) if "signal" in values else None
    cpu = float(values["cpu"]) if "cpu" in values else None
    if capture.truncated is not None:
        error: str | None = f"output truncated at {_size(limits.max_output_bytes)}"
    elif stopped == "timeout":
        error = f"wall-clock timeout of {limits.wall_seconds:g} s exceeded"
    elif killed_by == signal.SIGXCPU or (
        killed_by == signal.SIGKILL and cpu is not None and cpu >= math.ceil(limits.cpu_seconds)
    ):
        error = f"CPU time limit of {limits.cpu_seconds:g} s exceeded"
    elif "memory" in values:
        error = f"memory limit of {_size(limits.memory_bytes)} exceeded"
    elif values.get("disk") == str(errno.EFBIG):
        error = f"file size limit of {_size(limits.disk_bytes)} exceeded"
    elif "disk" in values:
        error = f"the working folder is full ({_size(limits.disk_bytes)}, 10,000 files)"
    elif "refused" in values:
        error = values["refused"]
    elif "exception" in values:
        error = values["exception"]
    elif exit_code is not None and exit_code != 0:
        error = f"exited with code {exit_code}"
    elif killed_by is not None:
        error = f"killed by {signal.Signals(killed_by).name}"
    elif exit_code is None:
        error = f"the sandbox could not run the snippet (launcher exit code {launcher_exit})"
    else:
        error = None
    return SandboxResult(
        ok=error is None,
        stdout=capture.text(capture.stdout),
        stderr=capture.text(capture.stderr),
        exit_code=exit_code,
        error=error,
        duration_s=duration,
        cpu_s=cpu,
        truncated=capture.truncated is not None,
    )


def _size(count: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= factor and count % factor == 0:
            return f"{count // factor} {unit}"
    return f"{count} bytes"


@functools.cache
def _probe() -> tuple[tuple[str, bool | str], ...]:
    run = _Run.prepare("pass")
    proc = None
    try:
        proc = subprocess.Popen(
            run.command(_DEFAULT_LIMITS, guards=True),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_ENV,
            cwd=run.path,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=_DEFAULT_LIMITS.wall_seconds)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
    finally:
        records = run.settle(proc.pid if proc else None, killed=True)
    rlimits_off = [note for note in records.off if note.startswith("rlimit")]
    report: list[tuple[str, bool | str]] = [
        ("isolated_interpreter", True),
        ("audit_hooks", True),
        ("resource_limits", not rlimits_off),
    ]
    report += [(name, name in records.layers) for name in _LAYERS]
    report.append(("notes", "; ".join(records.off)))
    return tuple(report)
