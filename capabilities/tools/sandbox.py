"""Run an untrusted Python snippet in a sandboxed process (a built-in tool).

    result = await run_python("print(6 * 7)", limits=SandboxLimits(cpu_seconds=2))
    result.ok, result.stdout, result.error      # True, "42\\n", None

The snippet runs in a fresh `python -I -S` with an empty environment, in a private
working folder that is deleted afterwards, confined by the kernel with no privilege
needed (the service runs as an ordinary user; README "Sandbox" and "Threat model"):

- Landlock: read-only access to the Python installation and system libraries,
  read-write to its own folder, nothing else; no TCP (ABI >= 4); no signals or abstract
  UNIX sockets beyond itself (ABI >= 6);
- a seccomp-bpf filter compiled per run (`_seccomp.py`): no sockets (UNIX stream pairs
  only), no new processes or programs, no ptrace or other processes' memory, no pidfds,
  signals to itself only (no SIGIO owners either), no limits raised, no mounts,
  namespaces or io_uring, no modes, owners, times or attributes changed by path;
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
import functools
import logging
import math
import os
import signal
import tempfile
from dataclasses import dataclass

from capabilities.tools._sandbox_folder import remove_tree_off_loop
from capabilities.tools._sandbox_process import (
    ALLOW_WEAKER_ENV,
    CHILD,
    SnippetProcess,
    size_text,
)

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

REQUIRED_LAYERS = ("resource_limits", "no_new_privs", "landlock_filesystem", "seccomp_filter")
_OPTIONAL_LAYERS = ("landlock_network", "landlock_scopes", "capabilities_dropped")
_CHILD = CHILD
_EXIT_REFUSED = 70
_EXIT_EXCEPTION = 1


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
    run = SnippetProcess(work, limits, guards=guards)
    try:
        await run.start(code, stdin)
        stopped = await run.watch()
        status, cpu = await run.finish()
    finally:
        run.close()
        await remove_tree_off_loop(work)
    return _result(run, limits, stopped=stopped, status=status, cpu=cpu, started=started)


def _parse_layers(first: str) -> tuple[str, list[str], list[str]]:
    """'layers a,b|notes' or 'refused a,b|notes' -> (verdict, active, notes)."""
    verdict, _, rest = first.partition(" ")
    active, _, notes = rest.partition("|")
    return verdict, [a for a in active.split(",") if a], [n for n in notes.split("; ") if n]


def _result(
    run: SnippetProcess,
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
        error: str | None = f"output truncated at {size_text(limits.max_output_bytes)}"
    elif stopped == "timeout":
        error = f"wall-clock timeout of {limits.wall_seconds:g} s exceeded"
    elif stopped == "disk":
        error = f"the working folder is full ({size_text(limits.disk_bytes)}, 10,000 files)"
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
        error = f"memory limit of {size_text(limits.memory_bytes)} exceeded"
    elif exit_code == _EXIT_EXCEPTION and claim.get("disk") == "27":
        error = f"file size limit of {size_text(limits.disk_bytes)} exceeded"
    elif exit_code == _EXIT_EXCEPTION and "disk" in claim:
        error = f"the working folder is full ({size_text(limits.disk_bytes)}, 10,000 files)"
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


@functools.cache
def _probe() -> tuple[tuple[str, bool | str], ...]:
    async def trivial() -> tuple[str, list[str], list[str]]:
        work = tempfile.mkdtemp(prefix="jetagent-sandbox-")
        run = SnippetProcess(work, _DEFAULT_LIMITS, guards=True)
        try:
            await run.start("pass", "")
            await run.watch()
            await run.finish()
        finally:
            run.close()
            await remove_tree_off_loop(work)
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
