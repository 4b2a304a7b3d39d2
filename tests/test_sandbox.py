"""The sandboxed snippet runner: normal snippets work, hostile ones are stopped or refused
with a clear error, nothing of a run outlives it, and the service's event loop keeps
serving meanwhile.

These tests go through `run_python`, audit hooks included, with the service's own
user (root here). tests/test_sandbox_hostile.py attacks the kernel layers with the
sandbox's parent running as an unprivileged user, as it is deployed.
"""

from __future__ import annotations

import asyncio
import glob
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from capabilities.tools import _sandbox_process, sandbox
from capabilities.tools.sandbox import SandboxLimits, SandboxResult, protections, run_python

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")

# CPU-bound runs reach the CPU limit long before the wall clock, even on a loaded box.
FAST = SandboxLimits(cpu_seconds=1, wall_seconds=15)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _another_workers(pid: int) -> bool:
    """Whether ``pid`` runs under another pytest-xdist worker (its sandbox runs are that
    worker's to check). A process that reaches init without passing this worker or a
    sibling is an orphan: counted, wherever it came from."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return False
    me, controller = os.getpid(), os.getppid()
    try:
        while pid > 1 and pid != me:
            parent = _parent(pid)
            if parent == controller:
                return True  # a sibling worker's own process tree
            pid = parent
    except (OSError, IndexError, ValueError):
        return False  # ended meanwhile: counted if it is still listed
    return False


def processes_of_sandbox_runs() -> list[str]:
    """Live processes started by any sandbox run of this test process, or orphaned by
    one (they run the child script, and the seccomp filter lets them start nothing
    else)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
        if state in "ZX" or sandbox._CHILD.encode() not in command:
            continue
        if not _another_workers(int(entry)):
            found.append(f"{entry} {state} {command[:80]!r}")
    return found


@pytest.fixture(autouse=True)
def nothing_of_a_run_remains() -> Iterator[None]:
    # Every test, hostile or not: once run_python has returned, no process of it lives.
    assert processes_of_sandbox_runs() == [], "left over by an earlier test"
    yield
    assert processes_of_sandbox_runs() == []


async def wait_for(condition: Callable[[], object], *, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def refused(result: SandboxResult, message: str) -> None:
    assert not result.ok
    assert result.error == message, (result.error, result.stderr)
    assert message in result.stderr  # the snippet's own traceback says so too


# Normal snippets


async def test_prints_and_computes() -> None:
    result = await run_python("print(sum(range(10)) * 2)")
    assert result.ok, result
    assert (result.stdout, result.stderr, result.exit_code, result.error) == ("90\n", "", 0, None)
    assert result.cpu_s is not None
    assert not result.truncated


async def test_reads_stdin() -> None:
    result = await run_python("import sys; print(sys.stdin.read().upper())", stdin="hello")
    assert result.ok, result
    assert result.stdout == "HELLO\n"


async def test_works_with_files_in_its_own_folder_which_is_private_and_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Runs' folders in a temporary folder of this test's own: other tests may be running
    # snippets at the same time (pytest-xdist).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    runs_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "jetagent-sandbox-*")))
    code = """
import os, tempfile
print(sorted(os.listdir(".")))
with open("notes.txt", "w") as f:
    f.write("kept")
os.mkdir("sub")
with tempfile.NamedTemporaryFile(dir="sub") as tmp:
    tmp.write(b"x")
print(open("notes.txt").read(), sorted(os.listdir(".")))
"""
    first = await run_python(code)
    assert first.ok, first
    assert first.stdout == "[]\nkept ['notes.txt', 'sub']\n"
    # A second run starts empty: the folder of the first is gone.
    second = await run_python(code)
    assert second.stdout.splitlines()[0] == "[]"
    runs_after = set(glob.glob(os.path.join(tempfile.gettempdir(), "jetagent-sandbox-*")))
    assert runs_after <= runs_before


async def test_reports_the_exception_that_ended_the_snippet() -> None:
    result = await run_python("x = 1\nprint('before')\nx / 0")
    assert not result.ok
    assert result.error == "ZeroDivisionError: division by zero"
    assert result.exit_code == 1
    assert result.stdout == "before\n"
    assert 'File "<snippet>", line 3' in result.stderr
    assert "x / 0" in result.stderr  # the source line, as python -c would not even show


async def test_reports_exit_codes() -> None:
    assert (await run_python("exit()")).ok
    result = await run_python("import sys; sys.exit(3)")
    assert (result.ok, result.exit_code, result.error) == (False, 3, "exited with code 3")


async def test_standard_library_including_asyncio_is_usable() -> None:
    code = "import asyncio, json\nprint(asyncio.run(asyncio.sleep(0, json.dumps([1]))))"
    result = await run_python(code)
    assert result.ok, result
    assert result.stdout == "[1]\n"


async def test_output_is_capped_with_a_marker() -> None:
    result = await run_python("print('x' * 100_000)", limits=SandboxLimits(max_output_bytes=1024))
    assert result.truncated
    assert result.error == "output truncated at 1 KiB"
    assert result.stdout.startswith("x" * 1024)
    assert result.stdout.endswith("\n[output truncated at 1 KiB]")


async def test_endless_output_is_stopped() -> None:
    result = await run_python("while True: print('y' * 1000)", limits=FAST)
    assert result.truncated
    assert result.error == "output truncated at 64 KiB"
    assert len(result.stdout) < 64 * 1024 + 100


async def test_file_size_is_limited() -> None:
    code = "open('big.bin', 'wb').write(bytes(2 * 2**20))"
    result = await run_python(code, limits=SandboxLimits(disk_bytes=2**20))
    assert result.error == "file size limit of 1 MiB exceeded"


THREAD = "import threading\nt = threading.Thread(target=print, args=('hi',))\nt.start(); t.join()"


async def test_threads_run_when_max_processes_allows() -> None:
    result = await run_python(THREAD, limits=SandboxLimits(max_processes=4))
    assert result.ok, result
    assert result.stdout == "hi\n"


async def test_threads_count_against_max_processes() -> None:
    assert (await run_python(THREAD)).error == "RuntimeError: can't start new thread"


async def test_event_loop_keeps_serving_while_a_snippet_burns_cpu() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    other_work = asyncio.create_task(ticker())
    run = asyncio.create_task(run_python("while True: pass", limits=FAST))
    try:
        # The other task keeps making progress while the snippet is still running.
        await wait_for(lambda: ticks >= 20 and processes_of_sandbox_runs())
        assert not run.done()
        result = await run
    finally:
        other_work.cancel()
    assert result.error == "CPU time limit of 1 s exceeded"


async def test_runs_concurrently() -> None:
    results = await asyncio.gather(*(run_python(f"print({n} * {n})") for n in range(6)))
    assert [r.stdout for r in results] == [f"{n * n}\n" for n in range(6)]


async def test_cancelling_the_caller_kills_the_run() -> None:
    run = asyncio.create_task(run_python("while True: pass", limits=FAST))
    await wait_for(lambda: processes_of_sandbox_runs() != [])
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert processes_of_sandbox_runs() == []


def test_protections_report_every_layer() -> None:
    report = protections()
    for layer in sandbox.REQUIRED_LAYERS:
        assert report[layer] is True, report
    for layer in ("landlock_network", "landlock_scopes", "capabilities_dropped"):
        assert report[layer] is True, report  # this kernel has them, and tests run as root
    assert report["python_tool"] == "served"
    assert report["notes"] == ""


async def test_every_run_reports_its_layers() -> None:
    result = await run_python("pass")
    assert set(sandbox.REQUIRED_LAYERS) <= set(result.layers), result


# Hostile snippets, audit hooks on


async def test_endless_loop_is_stopped_at_the_cpu_limit() -> None:
    result = await run_python("while True: pass", limits=FAST)
    assert not result.ok
    assert result.error == "CPU time limit of 1 s exceeded"
    assert result.exit_code is None


async def test_wall_clock_timeout_stops_a_sleeping_snippet() -> None:
    limits = SandboxLimits(wall_seconds=1)
    result = await run_python("import time\nprint('started')\ntime.sleep(60)", limits=limits)
    assert result.error == "wall-clock timeout of 1 s exceeded"
    assert result.stdout == "started\n"  # unbuffered: what it wrote before survives


@pytest.mark.parametrize(
    "code", ["x = bytearray(4 * 2**30)", "blocks = []\nwhile True: blocks.append(bytes(2**24))"]
)
async def test_allocating_4_gib_hits_the_memory_limit(code: str) -> None:
    result = await run_python(code, limits=FAST)
    assert not result.ok
    assert result.error == "memory limit of 256 MiB exceeded"
    assert "MemoryError" in result.stderr


@pytest.mark.parametrize(
    "code",
    [
        "import os\nwhile True: os.fork()",
        "import subprocess\nwhile True: subprocess.Popen(['true'])",
        "import os\nos.system('true')",
        "import _posixsubprocess\n_posixsubprocess.fork_exec()",
    ],
)
async def test_fork_bomb_is_refused(code: str) -> None:
    refused(await run_python(code, limits=FAST), "starting processes is not allowed")


async def test_grandchild_is_refused_and_nothing_of_the_run_remains() -> None:
    code = "import subprocess\nsubprocess.Popen(['sleep', '600'], start_new_session=True)"
    refused(await run_python(code, limits=FAST), "starting processes is not allowed")
    assert processes_of_sandbox_runs() == []


@pytest.mark.parametrize("host", ["127.0.0.1", "8.8.8.8"])
async def test_sockets_are_refused(host: str) -> None:
    connections = 0

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1] if host == "127.0.0.1" else 53
    async with server:
        code = f"import socket\nsocket.create_connection(({host!r}, {port}), timeout=2)"
        refused(await run_python(code, limits=FAST), "network access is not allowed")
        raw = "import socket\ns = socket.socket()"
        refused(await run_python(raw, limits=FAST), "network access is not allowed")
    assert connections == 0


async def test_reading_etc_passwd_is_refused() -> None:
    result = await run_python("print(open('/etc/passwd').read())")
    refused(result, "reading /etc/passwd is not allowed")
    assert "root:" not in result.stdout


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("import os\nos.listdir('/')", "listing / is not allowed"),
        ("open('/tmp/planted', 'w')", "writing /tmp/planted is not allowed"),
        ("import ctypes", "importing ctypes is not allowed"),
        ("import pwd", "importing pwd is not allowed"),
        (
            "import gc\ngc.get_objects()",
            "inspecting the garbage collector's objects is not allowed",
        ),
    ],
)
async def test_other_escape_hatches_are_refused(code: str, message: str) -> None:
    refused(await run_python(code), message)


async def test_parent_environment_is_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETAGENT_TEST_SECRET", "s3cr3t-token")
    code = """
import os
print(sorted(os.environ))
for path in (f"/proc/{os.getppid()}/environ", "/proc/1/environ", f"/proc/{os.getpid()}/environ"):
    try:
        print(open(path, "rb").read())
    except OSError as error:
        print(type(error).__name__)
"""
    result = await run_python(code)
    assert "s3cr3t-token" not in result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == "['HOME', 'LANG', 'TMPDIR']"


# Never silently weaker


@pytest.fixture
def host_without_seccomp(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A host without libseccomp: the service has no filter to hand over, so the snippet
    # process finds the seccomp layer missing (the kernel refuses an empty program).
    monkeypatch.setattr(_sandbox_process, "_filter_program", lambda pid, *, threads: b"")
    monkeypatch.delenv(sandbox.ALLOW_WEAKER_ENV, raising=False)
    sandbox._probe.cache_clear()
    yield
    sandbox._probe.cache_clear()


@pytest.mark.usefixtures("host_without_seccomp")
async def test_a_missing_required_layer_refuses_the_snippet_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    result = await run_python("print('ran')")
    assert not result.ok
    assert result.stdout == ""  # the snippet never started
    assert result.exit_code == 70
    assert result.error is not None
    assert result.error.startswith("the sandbox refused to run the snippet: seccomp_filter:")
    assert "JETAGENT_SANDBOX_ALLOW_WEAKER=1" in result.error
    # At start, the worker's report says so too, as an error.
    report = await asyncio.to_thread(sandbox.announce_protections)
    assert report["seccomp_filter"] is False
    assert str(report["python_tool"]).startswith("refused: seccomp_filter:")
    assert any(
        r.levelname == "ERROR" and "python tool: refused" in r.message for r in caplog.records
    )


@pytest.mark.usefixtures("host_without_seccomp")
async def test_running_weaker_is_an_explicit_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.ALLOW_WEAKER_ENV, "1")
    result = await run_python("print('ran')")
    assert result.ok, result
    assert result.stdout == "ran\n"
    assert "seccomp_filter" not in result.layers
    assert "landlock_filesystem" in result.layers
    report = await asyncio.to_thread(protections)
    assert str(report["python_tool"]).startswith("served with fewer layers")
