"""The tools worker as it is deployed: an unprivileged user, NATS credentials in a file
(never in its environment), and the python tool confined so that a hostile snippet
reaches neither the credentials nor the worker.

A nats-server runs with nats/accounts.conf; an operator provisions with the admin
user's password file; the orchestrator and reasoning worker run as processes; the tools
worker runs as `nobody` with the system's Python, as the Dockerfile's user would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from jetagent.client import Client
from jetagent.config import Settings
from jetagent.embedded import EmbeddedServer
from jetagent.errors import ConfigError
from jetagent.events import StepCompleted
from jetagent.jetstream import connect
from jetagent.testing import SupervisedProcess, eventually, tools_registered
from tests.support.platform import ROOT, service_processes
from tests.support.unprivileged import NOBODY, SYSTEM_PYTHON, reachable_code

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")

USERS = (
    "admin",
    "client",
    "orchestrator",
    "worker-reasoning",
    "worker-tools",
    "worker-summarize",
    "worker-memory",
    "projections",
)


@pytest.fixture
def secrets_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: that is private to root, and the worker is not root.
    folder = Path(tempfile.mkdtemp(prefix="jetagent-secrets-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.fixture
def secured(
    tmp_path: Path, secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[EmbeddedServer]:
    for user in USERS:
        password = f"{user}-{os.urandom(8).hex()}"
        file = secrets_dir / f"nats-{user}-password"
        file.write_text(password + "\n")
        file.chmod(0o400)  # only its own user reads it
        if user == "worker-tools":
            os.chown(file, NOBODY, NOBODY)
        # The server side still takes them from its environment (its own container).
        monkeypatch.setenv(f"JETAGENT_{user.upper().replace('-', '_')}_PASSWORD", password)
    accounts = (ROOT / "nats" / "accounts.conf").read_text()
    with EmbeddedServer(tmp_path / "nats", extra_config=accounts) as server:
        yield server


def login(secrets_dir: Path, user: str) -> dict[str, str]:
    return {"NATS_USER": user, "NATS_PASSWORD_FILE": str(secrets_dir / f"nats-{user}-password")}


async def test_a_password_file_logs_in_and_bad_ones_are_clear_errors(
    secured: EmbeddedServer, secrets_dir: Path
) -> None:
    url = f"nats://127.0.0.1:{secured.port}"
    settings = Settings(nats_url=url, **login(secrets_dir, "client"))  # type: ignore[arg-type]
    client = await Client.connect(settings=settings)
    await client.close()
    missing = Settings(nats_url=url, nats_user="client", nats_password_file=secrets_dir / "nope")
    with pytest.raises(ConfigError, match="cannot read NATS_PASSWORD_FILE"):
        await Client.connect(settings=missing)
    (secrets_dir / "empty").write_text("\n")
    empty = Settings(nats_url=url, nats_user="client", nats_password_file=secrets_dir / "empty")
    with pytest.raises(ConfigError, match="must hold one password"):
        await Client.connect(settings=empty)
    # The settings never carry the secret itself, so neither do child processes.
    assert "NATS_PASSWORD_FILE" in settings.to_env()
    assert settings.nats_password() not in json.dumps(settings.to_env())


async def test_the_unprivileged_tools_worker_keeps_its_credentials_from_snippets(
    secured: EmbeddedServer, secrets_dir: Path, tmp_path: Path
) -> None:
    url = f"nats://127.0.0.1:{secured.port}"
    # An operator provisions with the admin user's password file.
    provision = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "jetagent.cli", "provision"],
        cwd=ROOT,
        env={**os.environ, "NATS_URL": url, **login(secrets_dir, "admin")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert provision.returncode == 0, provision.stdout + provision.stderr
    procs = service_processes(url, "ja", tmp_path)
    procs.env.update(login(secrets_dir, "orchestrator"))
    procs.start("orchestrator", "orchestrator")
    procs.env.update(login(secrets_dir, "worker-reasoning"))
    procs.start("reasoning", "worker", "reasoning")
    code_copy = contextlib.ExitStack()
    root, site_packages = code_copy.enter_context(reachable_code(full_site_packages=True))
    tools = SupervisedProcess(
        "tools",
        [SYSTEM_PYTHON, "-m", "jetagent.cli", "worker", "tools"],
        log_file=tmp_path / "tools.log",
        cwd="/",
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{root / 'platform'}:{root}:{site_packages}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "NATS_URL": url,
            "JETAGENT_PREFIX": "ja",
            "JETAGENT_TENANTS": "*",
            "JETAGENT_METRICS_PORT": "0",
            **login(secrets_dir, "worker-tools"),
        },
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
    ).start()
    password_file = secrets_dir / "nats-worker-tools-password"
    password = password_file.read_text().strip()
    settings = Settings(nats_url=url, tenants="*", **login(secrets_dir, "client"))  # type: ignore[arg-type]
    client = await Client.connect(settings=settings)
    try:
        # The worker reports its sandbox at start: every required layer, python served.
        def started() -> str:
            return tools.output

        async def announced() -> bool:
            return "sandbox layers active" in started()

        await eventually(announced, timeout=60)
        assert "python tool: served" in started(), started()
        for layer in ("landlock_filesystem", "seccomp_filter", "no_new_privs"):
            assert layer in started()

        async def python_registered() -> bool:
            admin = Settings(nats_url=url, **login(secrets_dir, "admin"))  # type: ignore[arg-type]
            nc = await connect(url, name="check", user="admin", password=admin.nats_password())
            try:
                return await tools_registered(nc.jetstream(), admin, "python")
            finally:
                await nc.close()

        await eventually(python_registered, timeout=60)
        # Its environment names the file, never the password.
        environ = await asyncio.to_thread(Path(f"/proc/{tools.pid}/environ").read_bytes)
        assert password.encode() not in environ
        # A snippet defeats the hooks and goes for the password file and the worker.
        code = f"""import os
os.path.realpath = lambda path, *args, **kwargs: os.getcwd()
os.getpid = lambda: {tools.pid}
out = []
for path in ({str(password_file)!r}, "/proc/{tools.pid}/environ"):
    try:
        open(path).read()
    except OSError as error:
        out.append(error.errno)
try:
    os.kill({tools.pid}, 15)
except OSError as error:
    out.append(error.errno)
print(out)
"""
        wid = await client.submit(
            instruction=f"call python {json.dumps({'code': code})}",
            tenant="acme",
            allowed_tools=["python"],
        )
        result = await client.result(wid, timeout=60)
        assert result.ok, procs.log("orchestrator") + started()
        steps = [e for e in await client.events(wid) if isinstance(e, StepCompleted)]
        ran = next(e.output for e in steps if e.tool == "python")
        # EACCES (Landlock) for both files, EPERM (seccomp) for the signal.
        assert ran["result"]["stdout"] == "[13, 13, 1]\n", ran
        assert tools.poll() is None  # the worker is alive
    finally:
        await client.close()
        procs.stop_all()
        tools.close()
        code_copy.close()


def test_compose_hands_credentials_over_as_files_only() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for key, value in env.items():
            assert "PASSWORD" not in key or key == "NATS_PASSWORD_FILE", (name, key)
            assert "@" not in str(value), (name, key, value)  # no user:password@host
        if service.get("image") == "jetagent:latest":
            assert env["NATS_PASSWORD_FILE"] == "/run/secrets/nats-password", name
            (secret,) = service["secrets"]
            assert secret["target"] == "nats-password", name
            assert secret["source"] == f"nats-{env['NATS_USER']}-password", name
    tools = compose["services"]["tools"]
    assert tools["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in tools["security_opt"]
    assert "OPENAI_API_KEY" not in tools["environment"]
