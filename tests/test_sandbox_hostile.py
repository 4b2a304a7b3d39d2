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

import asyncio
import contextlib
import dataclasses
import json
import os
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


# Found by review: routes around the layers above


@pytest.fixture
def datagram_listener() -> Iterator[tuple[socket.socket, str]]:
    """A UNIX datagram socket the worker's user may write to, as /dev/log is."""
    folder = Path(tempfile.mkdtemp(prefix="jetagent-listener-"))
    folder.chmod(0o755)
    path = str(folder / "listener.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    Path(path).chmod(0o777)
    listener.setblocking(False)
    try:
        yield listener, path
    finally:
        listener.close()
        shutil.rmtree(folder)


def test_a_datagram_socketpair_reaches_no_local_socket(
    host: Host, datagram_listener: tuple[socket.socket, str]
) -> None:
    # socketpair() is allowed (asyncio's self-pipe), but a datagram pair can be
    # re-addressed: sendto() or connect() to any socket file, which Landlock does not
    # check. Only stream pairs, which stay connected to each other, are allowed.
    listener, path = datagram_listener
    code = f"""
import socket
def pair(kind):
    return socket.socketpair(socket.AF_UNIX, kind)
def sendto():
    return pair(socket.SOCK_DGRAM)[0].sendto(b"exfiltrated", {path!r})
def connect():
    return pair(socket.SOCK_DGRAM)[0].connect({path!r})
print(json.dumps({{
    "dgram": attempt(lambda: pair(socket.SOCK_DGRAM)),
    "dgram_nonblock": attempt(lambda: pair(socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)),
    "raw": attempt(lambda: pair(socket.SOCK_RAW)),
    "sendto": attempt(sendto),
    "connect": attempt(connect),
    "stream_connect": attempt(lambda: pair(socket.SOCK_STREAM)[0].connect({path!r})),
    "stream": "ok" if len(pair(socket.SOCK_STREAM | socket.SOCK_CLOEXEC)) == 2 else "?",
}}))
"""
    outcomes = host.outcomes(code)
    with contextlib.suppress(BlockingIOError):
        received = listener.recv(100)
        pytest.fail(f"the listener received {received!r}")
    assert outcomes == {
        "dgram": "EPERM",
        "dgram_nonblock": "EPERM",
        "raw": "EPERM",
        "sendto": "EPERM",
        "connect": "EPERM",
        "stream_connect": "EPERM",
        "stream": "ok",
    }


def test_no_descriptor_can_name_an_owner_for_sigio(host: Host) -> None:
    # F_SETOWN (or the FIOSETOWN ioctl) makes the kernel send SIGIO, or any signal
    # F_SETSIG names, to the owner whenever the pipe is ready: a signal to the worker
    # that no kill() carries. Landlock's scopes (ABI >= 6) drop it, but they are an
    # optional layer (Linux 6.8, say, has none); the filter refuses naming an owner,
    # also with junk in the upper half of the command (the kernel reads 32 bits).
    code = f"""
import _ctypes as _c, fcntl, socket
{LIBC}
end, _ = socket.socketpair()  # FIOSETOWN and SIOCSPGRP are socket ioctls
F_SETOWN, F_SETOWN_EX, FIOSETOWN, SIOCSPGRP = 8, 15, 0x8901, 0x8902
print(json.dumps({{
    "setown": attempt(lambda: fcntl.fcntl(1, F_SETOWN, {host.pid})),
    "setown_group": attempt(lambda: fcntl.fcntl(1, F_SETOWN, -{host.pid})),
    "setown_wide": libc("syscall", c_long(72), c_long(1), c_long(2**32 + F_SETOWN),
                        c_long({host.pid})),
    "setown_ex": attempt(lambda: fcntl.fcntl(1, F_SETOWN_EX, bytes(8))),
    "fiosetown": attempt(lambda: fcntl.ioctl(end, FIOSETOWN, ({host.pid}).to_bytes(4, "little"))),
    "siocspgrp": attempt(lambda: fcntl.ioctl(end, SIOCSPGRP, ({host.pid}).to_bytes(4, "little"))),
}}))
"""
    outcomes = host.outcomes(code)
    assert set(outcomes.values()) == {"EPERM"}, outcomes


def test_no_metadata_of_the_workers_files_changes(host: Host) -> None:
    # Landlock does not cover modes, owners, times or extended attributes: without the
    # filter a snippet makes the worker's files outside its folder readable to every
    # user of the host (or to none, the worker included), and retimes or tags them.
    owned = Path(tempfile.mkdtemp(prefix="jetagent-owned-"))
    target = owned / "credentials"
    target.write_text("s3cr3t")
    shutil.chown(owned, NOBODY, NOBODY)
    shutil.chown(target, NOBODY, NOBODY)
    target.chmod(0o600)
    owned.chmod(0o700)
    code = f"""
path = {str(target)!r}
AT_EMPTY_PATH, SYS_fchmodat2 = 0x1000, 452
def chmod_handle():
    handle = os.open(path, os.O_PATH)
    result = libc("syscall", c_long(SYS_fchmodat2), c_long(handle), b"", c_long(0o644),
                  c_long(AT_EMPTY_PATH))
    if result != "ok":
        raise OSError(getattr(errno, result), result)
print(json.dumps({{
    "chmod": attempt(lambda: os.chmod(path, 0o644)),
    "chmod_folder": attempt(lambda: os.chmod({str(owned)!r}, 0o777)),
    "chmod_raw": attempt(lambda: libc_checked("chmod", path.encode(), 0o644)),
    "chmod_handle": attempt(chmod_handle),
    "utime": attempt(lambda: os.utime(path, (0, 0))),
    "utime_raw": attempt(lambda: libc_checked("utimes", path.encode(), None)),
    "chown": attempt(lambda: os.chown(path, {NOBODY}, {NOBODY})),
    "lchown": attempt(lambda: os.chown(path, -1, -1, follow_symlinks=False)),
    "setxattr": attempt(lambda: os.setxattr(path, "user.tag", b"1")),
    "removexattr": attempt(lambda: os.removexattr(path, "user.tag")),
    "inotify": attempt(lambda: __import__("_ctypes") and watch(path)),
}}))
"""
    watch = """
import _ctypes as _c
LIBC
def libc_checked(name, *args):
    result = libc(name, *args)
    if result != "ok":
        raise OSError(getattr(errno, result), result)
def watch(path):
    fd = Fn(("inotify_init1", RTLD_DEFAULT()))(0)
    result = libc("inotify_add_watch", fd, path.encode(), 0xFFF)
    if result != "ok":
        raise OSError(getattr(errno, result), result)
""".replace("LIBC", LIBC)
    try:
        outcomes = host.outcomes(watch + code)
        attributes = os.listxattr(target)
        modes = [oct(path.stat().st_mode & 0o777) for path in (owned, target)]
        mtime = target.stat().st_mtime
    finally:
        shutil.rmtree(owned)
    # os.chmod and os.utime open the file first: Landlock's EACCES; every raw route
    # (by path, or by an O_PATH handle that Landlock never checked) meets the filter.
    shimmed = ("chmod", "chmod_folder", "utime")
    assert {key: outcomes.pop(key) for key in shimmed} == dict.fromkeys(shimmed, "EACCES")
    assert set(outcomes.values()) == {"EPERM"}, outcomes
    assert attributes == []
    assert modes == ["0o700", "0o600"]
    assert mtime > 0


def test_modes_and_times_in_its_own_folder_still_change(host: Host) -> None:
    # The filter refuses chmod and utime by path; the snippet's os.chmod and os.utime
    # open the file (which Landlock checks) and change it through the descriptor.
    code = """
import shutil, stat
with open("a", "w") as file:
    file.write("text")
os.mkdir("folder")
os.chmod("a", 0o640)
os.chmod("folder", 0o750)
os.utime("a", (1, 2))
shutil.copy2("a", "b")
shutil.copytree("folder", "tree")
print(json.dumps({
    "a": oct(os.stat("a").st_mode & 0o777),
    "b": oct(os.stat("b").st_mode & 0o777),
    "b_mtime": os.stat("b").st_mtime,
    "folder": oct(os.stat("folder").st_mode & 0o777),
    "tree": oct(os.stat("tree").st_mode & 0o777),
}))
"""
    expected = {"a": "0o640", "b": "0o640", "b_mtime": 2.0, "folder": "0o750", "tree": "0o750"}
    assert host.outcomes(code) == expected
    assert host.outcomes(code, guards=True) == expected


def test_a_folder_too_deep_to_name_is_still_counted(host: Host) -> None:
    # Paths past PATH_MAX (4096) cannot be opened by name; the service walks the
    # snippet's folder by descriptor, so what lies that deep still counts.
    code = """
import time
name = "d" * 250
for _ in range(20):
    os.mkdir(name)
    os.chdir(name)
for n in range(40):
    with open(f"f{n}", "wb") as file:
        file.write(bytes(2**20))
print("wrote 40 MiB", flush=True)
time.sleep(30)
"""
    result = host.run(code, disk_bytes=2**20, wall_seconds=20)
    assert result["error"] == "the working folder is full (1 MiB, 10,000 files)", result
    assert result["signal"] == 9
    assert result["duration_s"] < 15


def test_a_folder_made_unreadable_is_still_counted(host: Host) -> None:
    code = """
import time
os.mkdir("hidden")
for n in range(4):
    with open(f"hidden/f{n}", "wb") as file:
        file.write(bytes(2**20))
os.chmod("hidden", 0)
os.chmod(".", 0)
print("wrote 4 MiB", flush=True)
time.sleep(30)
"""
    result = host.run(code, disk_bytes=2**20, wall_seconds=20)
    assert result["error"] == "the working folder is full (1 MiB, 10,000 files)", result
    assert result["duration_s"] < 15


def test_a_folder_of_many_entries_does_not_stall_the_service() -> None:
    # 9,000 empty folders (under every limit) make each look at the snippet's folder
    # cost ~100 ms; taken on the event loop every 25 ms, they left the worker's other
    # steps (and its NATS heartbeats) almost no time. Ticks of a 10 ms timer during the
    # run, against what an idle loop gets.
    from capabilities.tools import sandbox

    code = """
import time
for n in range(9000):
    os.mkdir(f"d{n}")
print("made", flush=True)
time.sleep(3)
"""

    async def run_and_tick() -> tuple[dict[str, Any], int, float]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            limits = sandbox.SandboxLimits(cpu_seconds=5, wall_seconds=20, disk_bytes=2**26)
            result = await sandbox._run(PRELUDE + code, limits=limits, stdin="", guards=False)
        finally:
            ticker.cancel()
        return dataclasses.asdict(result), ticks, loop.time() - started

    result, ticks, elapsed = asyncio.run(run_and_tick())
    assert result["ok"], {k: result[k] for k in ("error", "signal", "stderr", "layers")}
    ideal = elapsed / 0.01
    assert ticks > 0.4 * ideal, f"{ticks} ticks of {ideal:.0f} in {elapsed:.1f} s"


def test_machine_code_meets_the_filter_in_every_abi(host: Host) -> None:
    # Shellcode in an executable mapping makes the syscalls itself: native ones get the
    # filter's EPERM; the i386 (int 0x80) and x32 (number | 0x40000000) ABIs kill the
    # process (SIGSYS), which a filter written for x86_64 numbers alone would let by.
    run = """
import ctypes, mmap
code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
code.write(bytes.fromhex(MACHINE_CODE))
function = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(code)))
print(json.dumps({"result": function()}), flush=True)
"""
    # mov eax, NR; xor rdi, rdi; mov dil, 2; mov rsi, 1; xor edx, edx; syscall; ret
    socket_native = "b829000000" + "4831ff40b70248c7c60100000031d20f05c3"
    socket_x32 = "b829000040" + "4831ff40b70248c7c60100000031d20f05c3"
    getpid_i386 = "b814000000cd80c3"  # mov eax, 20; int 0x80; ret
    native = host.outcomes(run.replace("MACHINE_CODE", repr(socket_native)))
    assert native == {"result": -1}  # a raw syscall returns -errno: -EPERM
    for machine_code in (socket_x32, getpid_i386):
        result = host.run(run.replace("MACHINE_CODE", repr(machine_code)))
        assert (result["signal"], result["stdout"]) == (31, ""), result


def test_preallocating_past_the_file_size_limit_is_refused(host: Host) -> None:
    # fallocate(FALLOC_FL_KEEP_SIZE) reserves blocks without growing the file, so
    # RLIMIT_FSIZE never applies: a gigabyte of disk in ~25 ms, between two looks of
    # the service at the folder.
    code = f"""
import _ctypes as _c
{LIBC}
fd = os.open("reserved", os.O_CREAT | os.O_RDWR)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
print(json.dumps({{
    "keep_size": libc("fallocate", fd, FALLOC_FL_KEEP_SIZE, c_long(0), c_long(2**30)),
    "keep_size_wide": libc("syscall", c_long(285), c_long(fd), c_long(2**32 + 1), c_long(0),
                           c_long(2**30)),
    "grow": attempt(lambda: os.posix_fallocate(fd, 0, 2**30)),
    "blocks": os.fstat(fd).st_blocks,
}}))
"""
    outcomes = host.outcomes(code, disk_bytes=2**20)
    assert outcomes == {
        "keep_size": "EPERM",
        "keep_size_wide": "EPERM",
        "grow": "EFBIG",
        "blocks": 0,
    }


def test_the_death_signal_cannot_be_cleared(host: Host) -> None:
    # The snippet process dies with the worker (PR_SET_PDEATHSIG); a snippet that
    # cleared it would outlive a killed worker, asleep and unbounded by any clock.
    code = f"""
import _ctypes as _c
{LIBC}
PR_SET_PDEATHSIG, PR_GET_PDEATHSIG = 1, 2
signal_number = (c_long * 1)()
def death_signal():
    libc("prctl", c_long(PR_GET_PDEATHSIG), signal_number, c_long(0), c_long(0), c_long(0))
    return signal_number[0]
print(json.dumps({{
    "clear": libc("prctl", c_long(PR_SET_PDEATHSIG), c_long(0), c_long(0), c_long(0), c_long(0)),
    "clear_wide": libc("prctl", c_long(2**32 + PR_SET_PDEATHSIG), c_long(0), c_long(0),
                       c_long(0), c_long(0)),
    "death_signal": death_signal(),
}}))
"""
    assert host.outcomes(code) == {"clear": "EPERM", "clear_wide": "EPERM", "death_signal": 9}


def test_no_system_v_ipc_object_outlives_the_run(host: Host) -> None:
    # Shared memory segments, message queues and semaphores outlive the process that
    # made them: memory outside every limit, and a mailbox the next tenant's snippet
    # (the same uid) or any user of the host can open by its key.
    key = 0x5EC0_0000 + uuid.uuid4().int % 0xFFFF
    code = f"""
import _ctypes as _c
{LIBC}
IPC_CREAT = 0o1000
print(json.dumps({{
    "shmget": libc("shmget", c_long({key}), c_long(2**20), c_long(IPC_CREAT | 0o666)),
    "msgget": libc("msgget", c_long({key} + 1), c_long(IPC_CREAT | 0o666)),
    "semget": libc("semget", c_long({key} + 2), c_long(1), c_long(IPC_CREAT | 0o666)),
}}))
"""
    outcomes = host.outcomes(code)
    left = subprocess.run(["ipcs"], capture_output=True, text=True, check=True).stdout
    for offset in range(3):
        subprocess.run(["ipcrm", "-M", hex(key + offset)], capture_output=True, check=False)
        subprocess.run(["ipcrm", "-Q", hex(key + offset)], capture_output=True, check=False)
        subprocess.run(["ipcrm", "-S", hex(key + offset)], capture_output=True, check=False)
    assert outcomes == dict.fromkeys(["shmget", "msgget", "semget"], "EPERM")
    assert f"{key:#010x}"[2:] not in left
