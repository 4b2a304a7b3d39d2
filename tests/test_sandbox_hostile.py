"""Hostile snippets against the sandbox as it is deployed: its parent runs as an
unprivileged user (tests run as root, so the fixture starts the parent as `nobody`).

Every test asserts that the KERNEL refused: an errno from Landlock (EACCES, EXDEV), from
the seccomp filter (EPERM) or from a resource limit (ENOMEM, EFBIG, EMFILE), or the
process killed by a signal. A refusal by the in-process audit hooks is a PermissionError
without an errno, which `attempt` reports as "hook: ..." and no assertion accepts. Most
tests turn the hooks off (`guards=False`) to show the kernel layers on their own; the
hook-bypass tests keep them on and defeat them first, as an attacker would.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.unprivileged import NOBODY, SYSTEM_PYTHON, reachable_code

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")

# Each snippet starts with this: `attempt(f)` is "ok: <value>" or the errno's name.
PRELUDE = """
import errno, json, os, sys
def attempt(action):
    try:
        value = action()
    except OSError as error:
        if error.errno is None:
            return "hook: " + str(error)
        return errno.errorcode.get(error.errno, str(error.errno))
    return "ok: " + repr(value)[:200]
"""

# Raw libc calls through a `_ctypes` module object, however it was obtained.
LIBC = """
class c_long(_c._SimpleCData):
    _type_ = "l"
class Fn(_c.CFuncPtr):
    _flags_ = _c.FUNCFLAG_CDECL | _c.FUNCFLAG_USE_ERRNO
    _restype_ = c_long
class RTLD_DEFAULT:
    _handle = 0
def libc(name, *args):
    result = Fn((name, RTLD_DEFAULT()))(*args)
    if name != "syscall":  # these return a C int: the upper half of the register is junk
        result = (result + 2**31) % 2**32 - 2**31
    return "ok" if result >= 0 else errno.errorcode[_c.get_errno()]
"""


class Host:
    """The unprivileged sandbox parent, spoken to one JSON line at a time."""

    def __init__(self, process: subprocess.Popen[str], secret_file: Path) -> None:
        self.process = process
        self.secret_file = secret_file
        me = self.ask({"whoami": True})
        self.pid: int = me["pid"]
        self.uid: int = me["uid"]
        self.secret_fd: int = me["secret_fd"]

    def ask(self, request: dict[str, Any]) -> Any:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the sandbox host died (exit code {self.process.poll()})"
        return json.loads(line)

    def run(self, code: str, *, guards: bool = False, **limits: Any) -> dict[str, Any]:
        limits = {"cpu_seconds": 2, "wall_seconds": 10, **limits}
        request = {"code": PRELUDE + code, "guards": guards, "limits": limits}
        result: dict[str, Any] = self.ask(request)
        return result

    def outcomes(self, code: str, *, guards: bool = False, **limits: Any) -> dict[str, str]:
        """Run a snippet that ends with `print(json.dumps({...}))` and return that dict."""
        result = self.run(code, guards=guards, **limits)
        assert result["exit_code"] == 0, result
        lines = result["stdout"].strip().splitlines()
        assert lines, result
        outcome: dict[str, str] = json.loads(lines[-1])
        return outcome


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    # pytest's own temporary folders are private to root; this one the worker can reach.
    folder = Path(tempfile.mkdtemp(prefix="jetagent-hostile-"))
    folder.chmod(0o755)
    secret_file = folder / "worker-credentials"
    secret_file.write_text("nats-password-s3cr3t")
    secret_file.chmod(0o644)  # the worker must read it; the snippet must not
    code = contextlib.ExitStack()
    root, site_packages = code.enter_context(reachable_code(full_site_packages=False))
    host_script = root / "tests" / "support" / "sandbox_host.py"
    process = subprocess.Popen(
        [SYSTEM_PYTHON, "-B", str(host_script), str(root), str(site_packages), str(secret_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "JETAGENT_WORKER_PASSWORD": "env-s3cr3t"},
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
    )
    try:
        served = Host(process, secret_file)
        assert served.uid == NOBODY
        yield served
    finally:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        shutil.rmtree(folder)
        code.close()


def test_the_host_runs_unprivileged_with_every_required_layer(host: Host) -> None:
    report = host.ask({"protections": True})
    for layer in ("landlock_filesystem", "seccomp_filter", "no_new_privs", "resource_limits"):
        assert report[layer] is True, report
    assert report["landlock_network"] is True, report
    assert report["landlock_scopes"] is True, report
    assert report["python_tool"] == "served", report


# Host files: directly, through dir_fd, /proc, symlinks and hard links


def test_host_files_are_unreadable(host: Host) -> None:
    code = f"""
print(json.dumps({{
    "passwd": attempt(lambda: open("/etc/passwd").read()),
    "secret": attempt(lambda: open({str(host.secret_file)!r}).read()),
    "root": attempt(lambda: os.listdir("/")),
    "tmp": attempt(lambda: os.listdir("/tmp")),
}}))
"""
    assert host.outcomes(code) == dict.fromkeys(["passwd", "secret", "root", "tmp"], "EACCES")


def test_patching_realpath_does_not_open_host_files(host: Host) -> None:
    # The audit hook resolved paths with os.path.realpath; the snippet replaces it.
    code = """
os.path.realpath = lambda path, *args, **kwargs: os.getcwd()
print(json.dumps({"passwd": attempt(lambda: open("/etc/passwd").read())}))
"""
    assert host.outcomes(code, guards=True) == {"passwd": "EACCES"}


def test_dir_fd_with_dotdot_chains_does_not_open_host_files(host: Host) -> None:
    code = """
here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
up = "../" * 16 + "etc/passwd"
print(json.dumps({"passwd": attempt(lambda: os.open(up, os.O_RDONLY, dir_fd=here))}))
"""
    assert host.outcomes(code) == {"passwd": "EACCES"}


def test_proc_of_other_processes_is_unreadable(host: Host) -> None:
    code = f"""
paths = ["/proc/{host.pid}/environ", "/proc/{host.pid}/cmdline", "/proc/{host.pid}/mem",
         "/proc/1/environ", "/proc/self/environ", "/proc/self/status"]
print(json.dumps({{path: attempt(lambda: open(path, "rb").read()) for path in paths}}))
"""
    outcomes = host.outcomes(code)
    assert set(outcomes.values()) == {"EACCES"}, outcomes


def test_symlinks_in_the_temp_folder_lead_nowhere(host: Host) -> None:
    code = f"""
targets = {{"passwd": "/etc/passwd", "secret": {str(host.secret_file)!r},
           "environ": "/proc/{host.pid}/environ", "dir": "/etc"}}
outcome = {{}}
for name, target in targets.items():
    os.symlink(target, name)  # making the link is allowed: it is a file in its own folder
    outcome[name] = attempt(lambda: open(name, "rb").read())
outcome["dir_listing"] = attempt(lambda: os.listdir("dir"))
print(json.dumps(outcome))
"""
    outcomes = host.outcomes(code)
    assert set(outcomes.values()) == {"EACCES"}, outcomes


def test_hard_links_to_host_files_cannot_be_made(host: Host) -> None:
    code = f"""
outcome = {{}}
for name, target in {{"passwd": "/etc/passwd", "secret": {str(host.secret_file)!r}}}.items():
    outcome[name] = attempt(lambda: os.link(target, name))
    outcome[name + "_exists"] = os.path.lexists(name)
print(json.dumps(outcome))
"""
    outcomes = host.outcomes(code)
    # Landlock refuses a link that would move a file into another hierarchy (EXDEV);
    # fs.protected_hardlinks refuses files the user does not own (EPERM).
    assert outcomes["passwd"] in ("EXDEV", "EPERM")
    assert outcomes["secret"] in ("EXDEV", "EPERM")
    assert outcomes["passwd_exists"] is False
    assert outcomes["secret_exists"] is False


def test_writing_to_the_hosts_tmp_is_refused(host: Host) -> None:
    planted = Path("/tmp") / f"jetagent-planted-{uuid.uuid4().hex}"
    code = f"""
def plant():
    with open({str(planted)!r}, "wb") as file:
        file.write(bytes(8 * 2**20))
print(json.dumps({{"plant": attempt(plant), "mkdir": attempt(lambda: os.mkdir({str(planted)!r}))}}))
"""
    assert host.outcomes(code) == {"plant": "EACCES", "mkdir": "EACCES"}
    assert not planted.exists()


# Network, processes, signals, other processes


def test_no_socket_of_any_family(host: Host) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    code = f"""
import socket
kinds = {{
    "inet_stream": (socket.AF_INET, socket.SOCK_STREAM),
    "inet_dgram": (socket.AF_INET, socket.SOCK_DGRAM),
    "inet6": (socket.AF_INET6, socket.SOCK_STREAM),
    "unix_stream": (socket.AF_UNIX, socket.SOCK_STREAM),
    "unix_dgram": (socket.AF_UNIX, socket.SOCK_DGRAM),
    "netlink": (socket.AF_NETLINK, socket.SOCK_RAW),
    "packet": (socket.AF_PACKET, socket.SOCK_RAW),
    "vsock": (socket.AF_VSOCK, socket.SOCK_STREAM),
}}
outcome = {{name: attempt(lambda: socket.socket(*kind)) for name, kind in kinds.items()}}
outcome["connect"] = attempt(lambda: socket.create_connection(("127.0.0.1", {port}), 2))
print(json.dumps(outcome))
"""
    try:
        outcomes = host.outcomes(code)
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            connected = False
        else:
            connection.close()
            connected = True
    finally:
        listener.close()
    assert set(outcomes.values()) == {"EPERM"}, outcomes
    assert not connected


def test_fork_and_exec_of_any_binary_are_refused(host: Host) -> None:
    code = """
import subprocess
def fork():
    if os.fork() == 0:
        os._exit(0)
outcome = {
    "fork": attempt(fork),
    "posix_spawn": attempt(lambda: os.posix_spawn("/bin/true", ["true"], {})),
    "subprocess": attempt(lambda: subprocess.run(["/bin/true"])),
    "execv_python": attempt(lambda: os.execv(sys.executable, [sys.executable, "-c", "1"])),
    "execve_sh": attempt(lambda: os.execve("/bin/sh", ["sh", "-c", "true"], {})),
}
print(json.dumps(outcome))
"""
    outcomes = host.outcomes(code)
    assert set(outcomes.values()) == {"EPERM"}, outcomes


def test_frame_walking_past_the_hooks_then_execv_is_refused(host: Host) -> None:
    # A refusal's traceback holds the hook's frames; their globals are the hook's
    # tables, which the snippet empties. execv of a fresh interpreter (which would have
    # no hooks at all) must still fail.
    code = """
try:
    os.system("true")
except PermissionError as refusal:
    trace = refusal.__traceback__
emptied = []
while trace is not None:
    tables = trace.tb_frame.f_globals
    for name, value in list(tables.items()):
        if name.isupper() and isinstance(value, (frozenset, set, dict, tuple)) and value:
            tables[name] = type(value)()
            emptied.append(name)
    trace = trace.tb_next
python = "/usr/bin/python3"
outcome = {"execv": attempt(lambda: os.execv(python, [python, "-c", "print('escaped')"]))}
outcome["hooks_defeated"] = "PROCESS_EVENTS" in emptied
print(json.dumps(outcome))
"""
    outcomes = host.outcomes(code, guards=True)
    assert outcomes == {"execv": "EPERM", "hooks_defeated": True}


def test_signals_reach_nothing_outside_the_sandbox(host: Host) -> None:
    code = f"""
import signal
outcome = {{
    "kill_worker": attempt(lambda: os.kill({host.pid}, signal.SIGTERM)),
    "probe_worker": attempt(lambda: os.kill({host.pid}, 0)),
    "kill_init": attempt(lambda: os.kill(1, 0)),
    "killpg_worker": attempt(lambda: os.killpg({host.pid}, 0)),
    "pidfd_open": attempt(lambda: os.pidfd_open({host.pid})),
}}
print(json.dumps(outcome))
"""
    outcomes = host.outcomes(code)
    assert set(outcomes.values()) == {"EPERM"}, outcomes
    assert host.ask({"whoami": True})["pid"] == host.pid  # the worker is alive and serving


def test_pidfd_send_signal_and_ptrace_of_the_worker_are_refused(host: Host) -> None:
    # With ctypes (the hooks are off): raw syscalls, not Python's wrappers.
    code = f"""
import ctypes, signal
_c = ctypes._ctypes if hasattr(ctypes, "_ctypes") else __import__("_ctypes")
{LIBC}
SYS_pidfd_open, SYS_pidfd_send_signal, SYS_ptrace, SYS_process_vm_readv = 434, 424, 101, 310
buffer = ctypes.create_string_buffer(64)
local = (ctypes.c_void_p * 2)(ctypes.addressof(buffer), 64)
remote = (ctypes.c_void_p * 2)(0x400000, 64)
outcome = {{
    "pidfd_open": libc("syscall", SYS_pidfd_open, {host.pid}, 0),
    "pidfd_send_signal_self_pidfd": libc("syscall", SYS_pidfd_send_signal, 0, 15, 0, 0),
    "ptrace_attach": libc("syscall", SYS_ptrace, 16, {host.pid}, 0, 0),
    "process_vm_readv": libc("syscall", SYS_process_vm_readv, {host.pid},
                             ctypes.addressof(local), 1, ctypes.addressof(remote), 1, 0),
}}
print(json.dumps(outcome))
"""
    outcomes = host.outcomes(code)
    assert set(outcomes.values()) == {"EPERM"}, outcomes


# Descriptors and the result channel


def test_no_descriptor_of_the_worker_is_inherited(host: Host) -> None:
    code = f"""
def open_fds():
    found = []
    for fd in range(1024):
        try:
            os.fstat(fd)
            found.append(fd)
        except OSError:
            pass
    return found
print(json.dumps({{"fds": open_fds(), "secret": attempt(lambda: os.fstat({host.secret_fd}))}}))
"""
    outcomes = host.outcomes(code)
    # stdin, stdout, stderr and the result pipe (write end); nothing else.
    assert outcomes == {"fds": [0, 1, 2, 3], "secret": "EBADF"}


def test_a_forged_result_changes_nothing(host: Host) -> None:
    # The snippet writes "all is fine" records, and a flood, to every descriptor it has
    # and to the files a result could live in, then fails: the parent believes the kernel.
    code = """
forged = b"layer all\\nexit 0\\nclean\\nrefused all is fine\\nexception all is fine\\n"
for fd in range(3, 64):
    try:
        os.write(fd, forged)
        os.write(fd, b"x" * 200_000)
    except OSError:
        pass
for path in ("../status", "../report", "status", "report"):
    try:
        with open(path, "ab") as file:
            file.write(forged)
    except OSError:
        pass
os._exit(3)
"""
    result = host.run(code)
    assert (result["ok"], result["exit_code"], result["error"]) == (
        False,
        3,
        "exited with code 3",
    )
    burn = "import os\nos.write(3, b'exit 0\\n')\nwhile True: pass"
    result = host.run(burn, cpu_seconds=1)
    assert result["error"] == "CPU time limit of 1 s exceeded"
    assert result["signal"] in (9, 24)  # SIGKILL, SIGXCPU: killed by the kernel


# Exhaustion


def test_cpu_is_limited_by_the_kernel(host: Host) -> None:
    result = host.run("while True: pass", cpu_seconds=1)
    assert result["error"] == "CPU time limit of 1 s exceeded"
    assert result["exit_code"] is None
    assert result["signal"] in (9, 24)


def test_memory_is_limited_by_the_kernel(host: Host) -> None:
    code = """
import mmap
print(json.dumps({
    "mmap": attempt(lambda: mmap.mmap(-1, 2**30)),
    "memfd": attempt(lambda: os.memfd_create("outside-the-limit")),  # RAM not in RLIMIT_AS
}))
"""
    assert host.outcomes(code, memory_bytes=256 * 2**20) == {"mmap": "ENOMEM", "memfd": "EPERM"}
    result = host.run("x = bytearray(2**30)", memory_bytes=256 * 2**20)
    assert result["error"] == "memory limit of 256 MiB exceeded"


def test_processes_and_threads_are_limited_by_the_kernel(host: Host) -> None:
    code = """
import threading
def thread():
    try:
        threading.Thread(target=print).start()
        return "ok"
    except RuntimeError:
        return "refused"
print(json.dumps({"fork": attempt(os.fork), "thread": thread()}))
"""
    assert host.outcomes(code, max_processes=1) == {"fork": "EPERM", "thread": "refused"}
    assert host.outcomes(code, max_processes=4) == {"fork": "EPERM", "thread": "ok"}


def test_disk_is_limited(host: Host) -> None:
    big = """
def write():
    with open("big.bin", "wb") as file:
        file.write(bytes(2 * 2**20))
print(json.dumps({"big": attempt(write)}))
"""
    assert host.outcomes(big, disk_bytes=2**20) == {"big": "EFBIG"}
    # Many files, each under the file size limit: the run is stopped once its folder
    # holds more than disk_bytes (the parent watches it; the kernel has no per-folder
    # quota for an unprivileged user).
    many = """
import time
for n in range(300):
    with open(f"part-{n}", "wb") as file:
        file.write(bytes(100_000))
print("wrote 30 MB")
time.sleep(30)
"""
    result = host.run(many, disk_bytes=2**20, wall_seconds=20)
    assert result["error"] == "the working folder is full (1 MiB, 10,000 files)", result
    assert result["signal"] == 9  # stopped by the service, long before the wall clock
    assert result["duration_s"] < 15
    opened = """
files = []
def fill():
    while True:
        files.append(open("f", "wb"))
print(json.dumps({"open": attempt(fill)}))
"""
    assert host.outcomes(opened, max_open_files=32) == {"open": "EMFILE"}


# Bypassing the in-process hooks


def test_a_c_module_loaded_under_another_name_is_still_confined(host: Host) -> None:
    # The hooks refuse `import _ctypes` by name; the snippet loads the extension under a
    # name that compares equal to nothing, then calls libc directly.
    code = f"""
import importlib.machinery, importlib.util
class Alias(str):
    def __hash__(self):
        return 0
    def __eq__(self, other):
        return False
dynload = next(p for p in sys.path if p.endswith("lib-dynload"))
so = next(n for n in os.listdir(dynload) if n.startswith("_ctypes.") and n.endswith(".so"))
loader = importlib.machinery.ExtensionFileLoader(Alias("_ctypes"), os.path.join(dynload, so))
_c = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
{LIBC}
outcome = {{
    "open_passwd": libc("open", b"/etc/passwd", 0),
    "socket": libc("socket", 2, 1, 0),
    "kill_worker": libc("kill", {host.pid}, 0),
    "execve": libc("execve", b"/bin/sh", None, None),
}}
print(json.dumps(outcome))
"""
    outcomes = host.outcomes(code, guards=True)
    assert outcomes == {
        "open_passwd": "EACCES",
        "socket": "EPERM",
        "kill_worker": "EPERM",
        "execve": "EPERM",
    }
