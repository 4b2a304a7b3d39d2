"""The snippet process of the sandbox; `sandbox.py` runs this file as a script. (A little
over 400 lines: the snippet process imports this one file before any limit is in place,
with the standard library only, so every layer it sets up stays here; the service's side
is ``_sandbox_process``, the audit hooks ``_sandbox_guards``.)

    python -I -S -B -u -X utf8 _sandbox_child.py result=N control=M work=... cpu=... ...

It uses the standard library only, and of it the cheap parts (ctypes' Python layer, json,
re, typing cost milliseconds per run; the raw `_ctypes` module costs nothing). In order,
before a line of the snippet runs:

1. read the control pipe to its end: the seccomp program the service compiled for this
   pid, then the snippet; keep the result pipe as descriptor 3 and close every other one;
2. resource limits (CPU, address space, file size, open files, no core dumps); as root,
   drop every capability;
3. no_new_privs, then Landlock: read-only access to the Python installation and system
   libraries, read-write to its own working folder, nothing else of the filesystem; no
   TCP bind or connect (ABI >= 4); no signals or abstract UNIX sockets beyond its own
   Landlock domain (ABI >= 6);
4. the seccomp filter (no sockets, processes, programs, ptrace, other processes' memory,
   pidfds, signals to others, limits raised, mounts, io_uring, ...);
5. one trusted record on descriptor 3: the layers that are active, or why it refuses to
   run; then the snippet, with audit hooks (`_sandbox_guards.py`) that explain refusals
   early. Everything the process writes from then on, descriptor 3 included, is the
   snippet's and the service treats it as such.

A required layer (Landlock filesystem, seccomp, no_new_privs, resource limits) that the
kernel refuses stops the run before the snippet starts, unless `weaker=1` (the service's
documented opt-in, JETAGENT_SANDBOX_ALLOW_WEAKER).
"""

from __future__ import annotations

import _ctypes
import builtins
import os
import resource
import struct
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

RESULT_FD = 3
EXIT_REFUSED = 70  # EX_SOFTWARE: the sandbox could not be set up; the snippet never ran
EXIT_EXCEPTION = 1

# <linux/prctl.h>, <linux/capability.h>, <linux/landlock.h>, <linux/seccomp.h>
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_SECCOMP, SYS_CAPSET = 317, 126
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
SECCOMP_SET_MODE_FILTER = 1
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 16, 32, 64, 128
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK = 256, 512, 1024, 2048
FS_MAKE_SYM, FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 4096, 8192, 16384, 32768
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2

READ = FS_READ_FILE | FS_READ_DIR
# Its own folder: everything but running programs and making devices, sockets, FIFOs.
WORK = (
    FS_WRITE_FILE
    | FS_READ_FILE
    | FS_READ_DIR
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SYM
    | FS_REFER
    | FS_TRUNCATE
)
# The system libraries extension modules load, and the files they need to find them.
LIBRARY_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/share/zoneinfo")
LIBRARY_FILES = ("/etc/ld.so.cache",)
DEVICES = {"/dev/null": FS_READ_FILE | FS_WRITE_FILE, "/dev/zero": FS_READ_FILE}
DEVICES |= {"/dev/urandom": FS_READ_FILE, "/dev/random": FS_READ_FILE}
REQUIRED = ("resource_limits", "no_new_privs", "landlock_filesystem", "seccomp_filter")


class c_long(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "l"


class c_char(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "c"


class LibcCall(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = c_long


class DefaultLibrary:
    """dlsym(RTLD_DEFAULT, ...): the C library the interpreter already links."""

    _handle = 0


class Kernel:
    """The syscalls Python's standard library lacks, through the raw `_ctypes` module."""

    def __init__(self) -> None:
        self._syscall: Any = LibcCall(("syscall", DefaultLibrary()))  # type: ignore[arg-type]
        self._prctl: Any = LibcCall(("prctl", DefaultLibrary()))  # type: ignore[arg-type]

    def call(self, what: str, number: int, *args: object) -> int:
        # Every integer as a C long: a variadic int would leave a register's upper half
        # undefined.
        wide = [c_long(a) if isinstance(a, int) else a for a in args]
        result: int = self._syscall(c_long(number), *wide)
        if result < 0:
            code = _ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")
        return result

    def prctl(self, option: int, value: int) -> None:
        args = [c_long(option), c_long(value), c_long(0), c_long(0), c_long(0)]
        if self._prctl(*args) < 0:
            code = _ctypes.get_errno()
            raise OSError(code, f"prctl({option}): {os.strerror(code)}")

    def close(self) -> None:
        """Drop the function pointers before the snippet runs. Tidiness, not a barrier:
        a snippet can make its own (`_ctypes` is a module like any other), and the
        kernel layers confine whatever it calls."""
        self._syscall = None
        self._prctl = None


class Setup:
    """The run's arguments, and the layers tried so far."""

    def __init__(self, argv: list[str]) -> None:
        values = dict(word.split("=", 1) for word in argv)
        self.result_fd = int(values["result"])
        self.control_fd = int(values["control"])
        self.parent = int(values["parent"])
        self.work = values["work"]
        self.cpu_seconds = int(values["cpu"])
        self.memory_bytes = int(values["memory"])
        self.disk_bytes = int(values["disk"])
        self.open_files = int(values["files"])
        self.guards = values["guards"] == "1"
        self.weaker = values["weaker"] == "1"
        self.active: list[str] = []
        self.off: list[str] = []

    def layer(self, name: str, error: BaseException | None) -> None:
        if error is None:
            self.active.append(name)
        else:
            self.off.append(f"{name}: {getattr(error, 'strerror', None) or error}")


def main(argv: list[str]) -> NoReturn:
    setup = Setup(argv)
    seccomp_program, code = read_control(setup.control_fd)
    keep_only_the_result_pipe(setup.result_fd)
    kernel = Kernel()
    # If the service dies, so does the run; a parent other than the service means it
    # already died.
    kernel.prctl(PR_SET_PDEATHSIG, 9)
    if os.getppid() != setup.parent:
        os._exit(EXIT_REFUSED)
    setup.layer("resource_limits", attempt(lambda: set_limits(setup)))
    if os.geteuid() == 0:
        setup.layer("capabilities_dropped", attempt(lambda: drop_capabilities(kernel)))
    setup.layer("no_new_privs", attempt(lambda: kernel.prctl(PR_SET_NO_NEW_PRIVS, 1)))
    readable = [os.path.realpath(entry) for entry in sys.path if os.path.isdir(entry)]
    guards = load_guards() if setup.guards else None  # its file is out of reach after this
    apply_landlock(kernel, setup, readable)
    program = _ctypes_buffer(seccomp_program)
    fprog = struct.pack("HxxxxxxQ", len(seccomp_program) // 8, _ctypes.addressof(program))
    if seccomp_program:
        error = attempt(
            lambda: kernel.call("seccomp", SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, fprog)
        )
    else:
        error = OSError(0, "the service sent no filter (is libseccomp installed?)")
    setup.layer("seccomp_filter", error)
    kernel.close()
    missing = [name for name in REQUIRED if name not in setup.active]
    if missing and not setup.weaker:
        record(f"refused {','.join(setup.active)}|{'; '.join(setup.off)}")
        os._exit(EXIT_REFUSED)
    record(f"layers {','.join(setup.active)}|{'; '.join(setup.off)}")
    run_snippet(setup, code, readable, guards)


def load_guards() -> Any:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        guards = __import__("_sandbox_guards")
    finally:
        del sys.path[0]
    del sys.modules["_sandbox_guards"]
    return guards


def attempt(action: Any) -> BaseException | None:
    try:
        action()
    except (OSError, ValueError) as error:
        return error
    return None


def read_control(fd: int) -> tuple[bytes, str]:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    data = b"".join(chunks)
    header, _, rest = data.partition(b"\n")
    size = int(header)
    return rest[:size], rest[size:].decode("utf-8", "surrogateescape")


def keep_only_the_result_pipe(result_fd: int) -> None:
    if result_fd != RESULT_FD:
        os.dup2(result_fd, RESULT_FD, inheritable=False)
        os.close(result_fd)
    # The service starts this process with close_fds; this holds even if it did not.
    os.closerange(RESULT_FD + 1, 1 << 20)


def set_limits(setup: Setup) -> None:
    limits = [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, setup.cpu_seconds),
        (resource.RLIMIT_AS, setup.memory_bytes),
        (resource.RLIMIT_FSIZE, setup.disk_bytes),
        (resource.RLIMIT_NOFILE, setup.open_files),
    ]
    for which, value in limits:
        # CPU: SIGXCPU at the soft limit, SIGKILL one second later should it be caught.
        hard = value + 1 if which == resource.RLIMIT_CPU else value
        resource.setrlimit(which, (value, hard))


def drop_capabilities(kernel: Kernel) -> None:
    """As root: no capability left, in any set, and none that can come back."""
    for cap in range(64):
        try:
            kernel.prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            break  # EINVAL past the last capability this kernel knows
    kernel.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0)
    kernel.call("capset", SYS_CAPSET, header, bytes(24))


def apply_landlock(kernel: Kernel, setup: Setup, readable: list[str]) -> None:
    try:
        abi = kernel.call(
            "landlock", SYS_LANDLOCK_CREATE_RULESET, 0, 0, LANDLOCK_CREATE_RULESET_VERSION
        )
    except OSError as error:
        for name in ("landlock_filesystem", "landlock_network", "landlock_scopes"):
            setup.layer(name, error)
        return
    handled = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    handled |= FS_REFER if abi >= 2 else 0
    handled |= FS_TRUNCATE if abi >= 3 else 0
    handled |= FS_IOCTL_DEV if abi >= 5 else 0
    network = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("QQQ", handled, network, scoped)[: 8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = -1
    try:
        ruleset = kernel.call("landlock", SYS_LANDLOCK_CREATE_RULESET, attr, len(attr), 0)
        rules = [(path, READ) for path in [*readable, *LIBRARY_DIRS]]
        rules += [(path, FS_READ_FILE) for path in LIBRARY_FILES]
        rules += list(DEVICES.items())
        rules.append((setup.work, WORK & handled))
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # not on this system
            try:
                beneath = struct.pack("=Qi", access & handled, fd)
                kernel.call(
                    "landlock",
                    SYS_LANDLOCK_ADD_RULE,
                    ruleset,
                    LANDLOCK_RULE_PATH_BENEATH,
                    beneath,
                    0,
                )
            finally:
                os.close(fd)
        kernel.call("landlock", SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
    except OSError as error:
        setup.layer("landlock_filesystem", error)
        return
    finally:
        if ruleset >= 0:
            os.close(ruleset)
    setup.layer("landlock_filesystem", None)
    setup.layer("landlock_network", None if network else OSError(0, f"Landlock ABI {abi} < 4"))
    setup.layer("landlock_scopes", None if scoped else OSError(0, f"Landlock ABI {abi} < 6"))


def _ctypes_buffer(data: bytes) -> Any:
    class Buffer(_ctypes.Array):  # type: ignore[type-arg]
        _type_ = c_char
        _length_ = max(len(data), 1)

    return Buffer.from_buffer_copy(data.ljust(1, b"\0"))


def record(line: str) -> None:
    """One line on the result pipe; a full or closed pipe only costs the report."""
    try:  # noqa: SIM105 - contextlib costs milliseconds of start-up
        os.write(RESULT_FD, (line.replace("\n", " ")[:4000] + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def run_snippet(setup: Setup, code: str, readable: list[str], guards: Any) -> NoReturn:
    os.chdir(setup.work)
    os.environ.clear()  # it was empty already; these name its own folder
    os.environ.update(HOME=setup.work, TMPDIR=setup.work, LANG="C.UTF-8")
    through_descriptors()
    refusals: list[BaseException] = []
    if guards is not None:
        guards.install(setup.work, readable, refusals)
    sys.argv = [""]
    # -S leaves out site's exit() and quit(); snippets call them
    builtins.__dict__.setdefault("exit", sys.exit)
    builtins.__dict__.setdefault("quit", sys.exit)
    main_module = type(sys)("__main__")
    main_module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main_module
    exit_code = execute(code, main_module.__dict__, refusals)
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - see record
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(exit_code)


def through_descriptors() -> None:
    """os.chmod and os.utime by path, as the filter allows them: open the file (Landlock
    decides), change it through the descriptor. A convenience for shutil and tarfile,
    not a barrier: the filter refuses the path-based syscalls whoever makes them."""
    chmod, utime = os.chmod, os.utime

    def opened(path: Any, dir_fd: Any) -> int:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)

    def fd_chmod(path: Any, mode: int, *, dir_fd: Any = None, follow_symlinks: bool = True) -> None:
        if isinstance(path, int) or not follow_symlinks:
            return chmod(path, mode, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        fd = opened(path, dir_fd)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def fd_utime(
        path: Any, times: Any = None, *, dir_fd: Any = None, follow_symlinks: bool = True, **ns: Any
    ) -> None:
        if isinstance(path, int) or not follow_symlinks:
            return utime(path, times, dir_fd=dir_fd, follow_symlinks=follow_symlinks, **ns)
        fd = opened(path, dir_fd)
        try:
            utime(fd, times, **ns)
        finally:
            os.close(fd)

    os.chmod = fd_chmod
    os.utime = fd_utime


def execute(code: str, namespace: dict[str, object], refusals: list[BaseException]) -> int:
    """Run the snippet as `python -c` would and return its exit code."""
    try:
        exec(compile(code, "<snippet>", "exec"), namespace)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return EXIT_EXCEPTION
    except BaseException as error:
        report_exception(code, error, refusals)
        return EXIT_EXCEPTION
    return 0


def report_exception(code: str, error: BaseException, refusals: list[BaseException]) -> None:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    full = next((x for x in chain if isinstance(x, OSError) and x.errno in (27, 28)), None)
    if any(isinstance(link, MemoryError) for link in chain):
        record("memory")
    elif full is not None:
        record(f"disk {full.errno}")  # EFBIG, ENOSPC
    elif refused := next((link for link in chain if any(link is r for r in refusals)), None):
        record(f"refused {refused}")
    else:
        record(f"exception {type(error).__name__}: {error}"[:300])
    try:
        import linecache
        import traceback

        lines = code.splitlines(keepends=True)
        linecache.cache["<snippet>"] = (len(code), None, lines, "<snippet>")
        # The user's traceback starts at their code and ends where a guard refused.
        first = error.__traceback__ and error.__traceback__.tb_next
        link = first
        while link is not None and link.tb_next is not None:
            if link.tb_next.tb_frame.f_code.co_filename.endswith("_sandbox_guards.py"):
                link.tb_next = None
            link = link.tb_next
        traceback.print_exception(error.with_traceback(first))
    except BaseException:  # out of memory, say; the record above stands
        print(f"{type(error).__name__}: {error}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
