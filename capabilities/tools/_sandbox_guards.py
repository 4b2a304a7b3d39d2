"""Audit hooks in the snippet's interpreter: early, clear refusals ("reading /etc/passwd
is not allowed") of what the kernel layers refuse anyway.

Not a barrier: a snippet can defeat them (patch what they call, empty their tables,
load native code they do not see). The barrier is Landlock, seccomp and the resource
limits that `_sandbox_child.py` applies before the snippet starts.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")

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


def install(work: str, readable: list[str], refusals: list[BaseException]) -> None:
    """Audit hooks refusing, with a clear message, what the snippet may not do.

    Audit hooks are no security boundary (PEP 578): code in the same interpreter can
    defeat them. They explain a refusal the kernel would make anyway.
    """
    work = os.path.realpath(work)
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


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")
