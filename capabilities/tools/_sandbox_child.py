"""The child side of the sandbox; `sandbox.py` runs this file as a script.

It runs as `python -I -S -B -u -X utf8 _sandbox_child.py key=value ...` and uses the
standard library only (json, re and traceback cost milliseconds to import, so the hot path
avoids them). Three roles, one process tree::

    launcher      unshares namespaces, builds the filesystem view, pivots into it
    └─ supervisor pid 1 of the new PID namespace, or the launcher itself without one;
       │          reaps everything and kills what the snippet leaves behind
       └─ snippet resource limits, per-run uid, audit hooks, then the user's code

Every layer is tried on its own; one the kernel refuses is reported ("off <name> <why>"),
never fatal. Records are "key value" lines in two files that `sandbox.py` reads: `status`
from the launcher and supervisor (layer, off, exit, signal, cpu, clean), closed to the
snippet before its code runs so it cannot forge them, and `report` from the snippet
process (refused, memory, disk, exception).
"""

from __future__ import annotations

import builtins
import os
import resource
import stat
import sys
import time

# typing, collections.abc and signal (enum, re) would add ~8 ms to every run's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

SIGKILL = 9  # the same number everywhere (POSIX)
FULL = (27, 28)  # EFBIG, ENOSPC on Linux

# <linux/sched.h>, <sys/mount.h>, <linux/prctl.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38

WORK_IN_VIEW = "/sandbox"
LIBRARY_DIRS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32")
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")

# Native modules that bypass the audit hooks: they call C code that opens files, starts
# interpreters without our hooks, or reaches arbitrary memory.
BLOCKED_IMPORTS = frozenset(
    [
        "ctypes",
        "_ctypes",
        "_ctypes_test",
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "_testcapi",
        "_testinternalcapi",
        "_testbuffer",
        "_testimportmultiple",
        "_testmultiphase",
        "_testsinglephase",
        "_testclinic",
        "_xxtestfuzz",
        "_tkinter",
        "_dbm",
        "_gdbm",
        "readline",
        "pwd",
        "grp",
        "spwd",
        "_posixshmem",
        "_multiprocessing",
    ]
)
PROCESS_EVENTS = frozenset(
    [
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.exec",
        "os.system",
        "os.startfile",
        "subprocess.Popen",
    ]
)
# Audit event -> indices of the arguments that are paths the event changes.
CHANGING_EVENTS = {
    "os.mkdir": (0,),
    "os.rmdir": (0,),
    "os.remove": (0,),
    "os.rename": (0, 1),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.chflags": (0,),
    "os.lchflags": (0,),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
}
LISTING_EVENTS = frozenset({"os.listdir", "os.scandir", "glob.glob", "glob.glob/2", "os.listxattr"})
GC_EVENTS = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents"})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
AF_UNIX = 1


class Config:
    """The launcher's arguments, parsed from `key=value` words."""

    def __init__(self, argv: list[str]) -> None:
        values = dict(word.split("=", 1) for word in argv)
        self.run_dir = values["run_dir"]
        self.parent = int(values["parent"])
        self.uid = int(values["uid"]) if values.get("uid") else None
        self.cpu_seconds = int(values["cpu"])
        self.memory_bytes = int(values["memory"])
        self.disk_bytes = int(values["disk"])
        self.open_files = int(values["files"])
        self.processes = int(values["processes"])
        self.guards = values["guards"] == "1"


class Status:
    """Appends records to the status file that `sandbox.py` reads after the run."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def record(self, key: str, value: object = "") -> None:
        line = f"{key} {value}".replace("\n", " ")[:2000] + "\n"
        try:  # noqa: SIM105 - contextlib would cost 4 ms of start-up
            os.write(self.fd, line.encode("utf-8", "replace"))
        except OSError:
            pass  # a full disk or a closed fd only costs the report, never the run


class Kernel:
    """The few libc calls Python 3.11 lacks (unshare, mount, prctl, sethostname)."""

    def __init__(self) -> None:
        import ctypes

        self._ctypes: Any = ctypes
        self._libc: Any = ctypes.CDLL(None, use_errno=True)
        self._libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        self._libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        self._libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            errno = self._ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)}")

    def unshare(self, flags: int, what: str) -> None:
        self._check(self._libc.unshare(flags), what)

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int) -> None:
        self.mount_with(source, target, fstype, flags, None)

    def mount_with(
        self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None
    ) -> None:
        encode = os.fsencode
        self._check(
            self._libc.mount(
                source and encode(source),
                encode(target),
                fstype and encode(fstype),
                flags,
                data and encode(data),
            ),
            f"mount {target}",
        )

    def enter_root(self, root: str) -> None:
        """Make `root` the root of this mount namespace and detach the host's tree, so no
        chroot escape can lead back to it; plain chroot where pivot_root is missing."""
        os.chdir(root)
        pivot_root = getattr(self._libc, "pivot_root", None)
        if pivot_root is None or pivot_root(b".", b".") != 0:
            os.chroot(".")
        else:
            # the old root now sits on top of the new one; lazily detach it
            self._check(self._libc.umount2(b".", MNT_DETACH), "umount2")
        os.chdir("/")

    def close(self) -> None:
        """Drop the library handle, so code that finds this object cannot call into it."""
        self._libc = None
        self._ctypes = None

    def prctl(self, option: int, value: int) -> None:
        self._check(self._libc.prctl(option, value, 0, 0, 0), f"prctl({option})")

    def sethostname(self, name: bytes) -> None:
        self._check(self._libc.sethostname(name, len(name)), "sethostname")


def main(argv: list[str]) -> NoReturn:
    """Launcher: set up what the kernel allows, then start the supervisor."""
    config = Config(argv)
    status = Status(os.path.join(config.run_dir, "status"))
    report = Status(os.path.join(config.run_dir, "report"))
    with open(os.path.join(config.run_dir, "snippet.py"), "rb") as file:
        code = file.read().decode("utf-8", "replace")
    kernel = Kernel()
    # If the calling service dies, so does the whole run (cleared by setuid, so the
    # snippet process sets it again).
    kernel.prctl(PR_SET_PDEATHSIG, SIGKILL)
    if os.getppid() != config.parent:
        os._exit(1)
    layer(status, "no_new_privs", lambda: kernel.prctl(PR_SET_NO_NEW_PRIVS, 1))
    layer(status, "network_namespace", lambda: kernel.unshare(CLONE_NEWNET, "unshare(NEWNET)"))
    layer(status, "ipc_uts_namespaces", lambda: isolate_ipc_uts(kernel))
    in_view = layer(status, "mount_namespace", lambda: build_view(kernel, config))
    work = WORK_IN_VIEW if in_view else make_work_dir(config)
    os.chdir(work)
    uid = config.uid
    if uid is None:
        status.record("off", "per_run_uid: not running as root")
    elif in_view or reachable_by_others(sys.path):
        status.record("layer", "per_run_uid")
    elif not layer(status, "per_run_uid", reach_stdlib_through_descriptors):
        uid = None
    pid_namespace = layer(
        status, "pid_namespace", lambda: kernel.unshare(CLONE_NEWPID, "unshare(NEWPID)")
    )
    os.environ.update(HOME=work, TMPDIR=work)
    if pid_namespace:
        supervisor = os.fork()  # the first child is pid 1 of the new namespace
        if supervisor == 0:
            kernel.prctl(PR_SET_PDEATHSIG, SIGKILL)
            supervise(config, status, report, kernel, code, work, uid, pid_namespace=True)
        os.close(0)
        os.waitpid(supervisor, 0)
        os._exit(0)
    layer(status, "subreaper", lambda: kernel.prctl(PR_SET_CHILD_SUBREAPER, 1), quiet=True)
    supervise(config, status, report, kernel, code, work, uid, pid_namespace=False)


def layer(status: Status, name: str, setup: Callable[[], object], *, quiet: bool = False) -> bool:
    """Try one protection; record whether it is active."""
    try:
        setup()
    except OSError as error:
        status.record("off", f"{name}: {error.strerror or error}")
        return False
    if not quiet:
        status.record("layer", name)
    return True


def isolate_ipc_uts(kernel: Kernel) -> None:
    kernel.unshare(CLONE_NEWIPC | CLONE_NEWUTS, "unshare(NEWIPC|NEWUTS)")
    kernel.sethostname(b"sandbox")  # the host's name is information too


def build_view(kernel: Kernel, config: Config) -> None:
    """A private mount namespace whose root holds the Python installation (read-only), the
    system libraries it loads, four harmless devices and a size-limited tmpfs working
    folder; nothing else of the host."""
    kernel.unshare(CLONE_NEWNS, "unshare(NEWNS)")
    # Private first, so nothing mounted below ever propagates back to the host.
    kernel.mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = os.path.join(config.run_dir, "root")
    os.mkdir(root, 0o755)
    kernel.mount_with("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    sources = [path for path in LIBRARY_DIRS if os.path.lexists(path)]
    for entry in sys.path:
        real = os.path.realpath(entry)
        if os.path.isdir(real) and not any(within(real, source) for source in sources):
            sources.append(real)
    for source in sources:
        target = root + source
        if os.path.islink(source):
            # /lib -> usr/lib on merged-/usr systems: the same link resolves inside the view
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(source), target)
            continue
        os.makedirs(target, exist_ok=True)
        kernel.mount(source, target, None, MS_BIND | MS_REC)
        keep = MS_NOEXEC if os.statvfs(source).f_flag & os.ST_NOEXEC else 0
        flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | keep
        kernel.mount(None, target, None, flags)
    os.makedirs(root + "/dev")
    for device in DEVICES:
        os.close(os.open(root + device, os.O_CREAT | os.O_WRONLY, 0o666))
        kernel.mount(device, root + device, None, MS_BIND)
    work = root + WORK_IN_VIEW
    os.mkdir(work, 0o700)
    owner = f",uid={config.uid},gid={config.uid}" if config.uid is not None else ""
    kernel.mount_with(
        "tmpfs",
        work,
        "tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,  # noexec: a .so written there cannot be loaded
        f"mode=0700,size={config.disk_bytes},nr_inodes=10000{owner}",
    )
    kernel.mount_with(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=1m")
    kernel.enter_root(root)


def make_work_dir(config: Config) -> str:
    """Without a view the working folder lives in the run folder on the host."""
    work = os.path.join(config.run_dir, "work")
    os.mkdir(work, 0o700)
    if config.uid is not None:
        os.chown(work, config.uid, config.uid)
    return work


def reachable_by_others(paths: list[str]) -> bool:
    """Whether an unprivileged uid could import the standard library from these paths."""
    for path in paths:
        real = os.path.realpath(path)
        if not os.path.isdir(real):
            continue
        if os.stat(real).st_mode & 0o005 != 0o005:
            return False
        parent = os.path.dirname(real)
        while parent != "/":
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            parent = os.path.dirname(parent)
    return True


def reach_stdlib_through_descriptors() -> None:
    """Let an unprivileged uid import the standard library from a folder it cannot reach
    (say /root/.pyenv): open its directories while still root and put /proc/self/fd/N on
    sys.path; the kernel checks permissions from an opened directory downwards only."""
    if not os.path.isdir("/proc/self/fd"):
        raise OSError(f"the Python installation ({sys.prefix}) is not readable by other users")
    moved = {
        entry: f"/proc/self/fd/{os.open(entry, os.O_RDONLY | os.O_DIRECTORY)}"
        for entry in sys.path
        if os.path.isdir(entry)
    }
    sys.path[:] = moved.values()
    # Packages imported at start-up (encodings, say) find their submodules through
    # __path__, which still names the unreachable folder.
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [relocate(entry, moved) for entry in search]


def relocate(path: str, moved: dict[str, str]) -> str:
    for old, new in moved.items():
        if within(path, old):
            return new + path[len(old) :]
    return path


def supervise(
    config: Config,
    status: Status,
    report: Status,
    kernel: Kernel,
    code: str,
    work: str,
    uid: int | None,
    *,
    pid_namespace: bool,
) -> NoReturn:
    """Start the snippet process, reap everything, kill what it leaves behind."""
    snippet = os.fork()
    if snippet == 0:
        run_snippet(config, status, report, kernel, code, work, uid)
    os.close(0)  # so a writer of stdin sees the pipe close when the snippet is gone
    del kernel
    me = os.getpid()
    exit_status: int | None = None
    deadline = float("inf")
    clean = False
    rounds = 0
    while True:
        if exit_status is not None:
            # Should anything outlive the first, atomic round (the per-run uid could not
            # be taken, say), later rounds also kill children one by one.
            kill_leftovers(uid, me, pid_namespace=pid_namespace, one_by_one=rounds > 0)
            rounds += 1
        try:
            pid, wait_status, _ = os.wait4(-1, 0 if exit_status is None else os.WNOHANG)
        except ChildProcessError:
            clean = True  # a subreaper or pid 1 with no children: nothing of the run is left
            break
        if pid == snippet:
            exit_status = wait_status
            deadline = time.monotonic() + 2.0
        elif pid == 0:
            if time.monotonic() > deadline:
                break  # the service's own sweep takes over
            time.sleep(0.002)
    if exit_status is not None:
        if os.WIFSIGNALED(exit_status):
            status.record("signal", os.WTERMSIG(exit_status))
        else:
            status.record("exit", os.waitstatus_to_exitcode(exit_status))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    status.record("cpu", round(usage.ru_utime + usage.ru_stime, 4))
    if clean:
        status.record("clean")
    os._exit(0)


def kill_leftovers(uid: int | None, me: int, *, pid_namespace: bool, one_by_one: bool) -> None:
    """Kill every other process of this run, with the strongest means available."""
    if pid_namespace:
        # pid 1's kill(-1) reaches exactly the processes of its own namespace
        try:  # noqa: SIM105 - see Status.record
            os.kill(-1, SIGKILL)
        except ProcessLookupError:
            pass
        return
    if uid is not None:
        # kill(-1) by the per-run uid reaches all of its processes in one atomic step
        helper = os.fork()
        if helper == 0:
            try:
                os.setuid(uid)
                os.kill(-1, SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(helper, 0)
        if not one_by_one:
            return
    # A subreaper inherits orphans, so its children are all that is left.
    for pid in children_of(me):
        try:  # noqa: SIM105 - see Status.record
            os.kill(pid, SIGKILL)
        except ProcessLookupError:
            pass


def children_of(parent: int) -> list[int]:
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
                fields = file.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            found.append(int(entry))
    return found


def run_snippet(
    config: Config,
    status: Status,
    report: Status,
    kernel: Kernel,
    code: str,
    work: str,
    uid: int | None,
) -> NoReturn:
    """The snippet process: limits, identity, guards, then the user's code."""
    limits = [
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_CPU, config.cpu_seconds),
        (resource.RLIMIT_AS, config.memory_bytes),
        (resource.RLIMIT_FSIZE, config.disk_bytes),
        (resource.RLIMIT_NOFILE, config.open_files),
        (resource.RLIMIT_NPROC, config.processes),
    ]
    for which, value in limits:
        # CPU: SIGXCPU at the soft limit, SIGKILL one second later should it be caught
        hard = value + 1 if which == resource.RLIMIT_CPU else value
        try:
            resource.setrlimit(which, (value, hard))
        except (OSError, ValueError) as error:
            status.record("off", f"rlimit {which}: {error}")
    if uid is not None:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        except OSError as error:  # no CAP_SETUID, or a user namespace without this uid
            status.record("off", f"per_run_uid: {error.strerror or error}")
    kernel.prctl(PR_SET_PDEATHSIG, SIGKILL)
    # The launcher's frames still reference the kernel object, and a snippet can walk
    # frames; Python 3.11 audits no foreign call, so the handle itself must go.
    kernel.close()
    for name in [name for name in sys.modules if name == "ctypes" or name.startswith("ctypes.")]:
        del sys.modules[name]
    sys.modules.pop("_ctypes", None)
    os.close(status.fd)
    refusals: list[BaseException] = []
    if config.guards:
        install_guards(work, refusals)
    sys.argv = [""]
    # -S leaves out site's exit() and quit(); snippets call them
    builtins.__dict__.setdefault("exit", sys.exit)
    builtins.__dict__.setdefault("quit", sys.exit)
    main_module = type(sys)("__main__")
    main_module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main_module
    exit_code = execute(code, main_module.__dict__, report, refusals)
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - see Status.record
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(exit_code)


def execute(
    code: str, namespace: dict[str, object], report: Status, refusals: list[BaseException]
) -> int:
    """Run the snippet as `python -c` would and return its exit code."""
    try:
        exec(compile(code, "<snippet>", "exec"), namespace)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException as error:
        report_exception(code, error, report, refusals)
        return 1
    return 0


def report_exception(
    code: str, error: BaseException, report: Status, refusals: list[BaseException]
) -> None:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(isinstance(link, MemoryError) for link in chain):
        report.record("memory")
    elif full := next((x for x in chain if isinstance(x, OSError) and x.errno in FULL), None):
        report.record("disk", full.errno)
    elif refused := next((link for link in chain if any(link is r for r in refusals)), None):
        report.record("refused", refused)
    else:
        report.record("exception", f"{type(error).__name__}: {error}"[:300])
    try:
        import linecache
        import traceback

        lines = code.splitlines(keepends=True)
        linecache.cache["<snippet>"] = (len(code), None, lines, "<snippet>")
        # The user's traceback starts at their code and ends where a guard refused.
        first = error.__traceback__ and error.__traceback__.tb_next
        link = first
        while link is not None and link.tb_next is not None:
            if link.tb_next.tb_frame.f_code.co_filename == __file__:
                link.tb_next = None
            link = link.tb_next
        error = error.with_traceback(first)
        traceback.print_exception(error)
    except BaseException:  # out of memory, say; the record above stands
        print(f"{type(error).__name__}: {error}", file=sys.stderr)


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def install_guards(work: str, refusals: list[BaseException]) -> None:
    """Audit hooks refusing, with a clear message, what the snippet may not do.

    Audit hooks are no security boundary on their own (PEP 578): they are the layer that
    explains a refusal, and the one left where the kernel allows no namespaces.
    """
    work = os.path.realpath(work)
    readable = tuple(os.path.realpath(entry) for entry in sys.path if os.path.isdir(entry))
    # Imported before the hook exists; later imports of it are refused, so this copy
    # with its fork_exec replaced is the only one (Popen's own event is refused anyway).
    import _posixsubprocess

    def refuse(message: str, kind: type[BaseException] = PermissionError) -> NoReturn:
        error = kind(message)
        refusals.append(error)
        raise error

    def refuse_fork_exec(*args: object, **kwargs: object) -> NoReturn:
        refuse("starting processes is not allowed")

    _posixsubprocess.fork_exec = refuse_fork_exec

    def resolve(path: object) -> str | None:
        if isinstance(path, int):
            return None  # an open file descriptor: its opening was checked
        if not isinstance(path, str | bytes | os.PathLike):
            return ""
        return os.path.realpath(os.fsdecode(path))

    def shown(path: object) -> str:
        return os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else repr(path)

    def check_read(path: object, verb: str) -> None:
        full = resolve(path if path is not None else ".")
        if full is None or within(full, work) or full in DEVICES:
            return
        if any(within(full, root) for root in readable):
            return
        refuse(f"{verb} {shown(path)} is not allowed")

    def check_change(path: object) -> None:
        full = resolve(path)
        if full is not None and not within(full, work) and full != "/dev/null":
            refuse(f"changing {shown(path)} is not allowed")

    def check_open(args: tuple[object, ...]) -> None:
        path, flags = args[0], args[2]
        if isinstance(flags, int) and not flags & WRITE_FLAGS:
            check_read(path, "reading")
            return
        full = resolve(path)
        if full is not None and not within(full, work) and full != "/dev/null":
            refuse(f"writing {shown(path)} is not allowed")

    def check_import(args: tuple[object, ...]) -> None:
        name, filename = args[0], args[1]
        if name in BLOCKED_IMPORTS:
            refuse(f"importing {name} is not allowed", ImportError)
        if name == "_posixsubprocess":
            refuse("starting processes is not allowed", ImportError)
        if filename is not None:
            full = resolve(filename)
            if full is not None and not any(within(full, root) for root in readable):
                refuse(f"loading the native module {shown(filename)} is not allowed", ImportError)

    def called_from_stdlib() -> bool:
        # importlib unmarshals cached bytecode, types.coroutine replaces code flags;
        # a snippet doing either could forge bytecode that corrupts memory
        caller = sys._getframe(2).f_code.co_filename
        if caller.startswith("<frozen importlib"):
            return True
        full = os.path.realpath(caller)  # /proc/self/fd/N/... when reached by descriptor
        return any(within(full, root) for root in readable)

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "open":
            check_open(args)
        elif event == "import":
            check_import(args)
        elif event in CHANGING_EVENTS:
            for index in CHANGING_EVENTS[event]:
                check_change(args[index])
        elif event in LISTING_EVENTS:
            check_read(args[0], "listing")
        elif event in PROCESS_EVENTS:
            refuse("starting processes is not allowed")
        elif event.startswith("socket."):
            if event == "socket.__new__" and args[1] == AF_UNIX:
                return  # socketpair() for asyncio's self-pipe; connect and bind stay refused
            if event != "socket.gethostname":
                refuse("network access is not allowed")
        elif event.startswith("ctypes."):
            refuse("ctypes is not allowed")
        elif event in ("os.kill", "os.killpg", "signal.pthread_kill"):
            if event != "os.kill" or args[0] != os.getpid():
                refuse("sending signals to other processes is not allowed")
        elif event in GC_EVENTS:
            refuse("inspecting the garbage collector's objects is not allowed")
        elif event == "code.__new__" and not called_from_stdlib():
            refuse("creating code objects is not allowed")
        elif event in ("marshal.load", "marshal.loads") and not called_from_stdlib():
            refuse("unmarshalling code is not allowed")
        elif event in ("resource.setrlimit", "resource.prlimit"):
            refuse("changing resource limits is not allowed")
        elif event == "sqlite3.connect":
            database = args[0]
            if isinstance(database, str) and database.startswith("file:"):
                refuse("SQLite URIs are not allowed")
            if database not in (":memory:", "", b":memory:", b""):
                check_change(database)
        elif event in ("sqlite3.enable_load_extension", "sqlite3.load_extension"):
            refuse("loading SQLite extensions is not allowed")
        elif event.startswith("syslog."):
            refuse("syslog is not allowed")

    sys.addaudithook(hook)


if __name__ == "__main__":
    main(sys.argv[1:])
