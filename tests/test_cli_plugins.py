"""Plugins reach the core through entry points, and the command line has no import cycle
(issue 11, item 3).

The core (``platform/jetagent``) never imports ``capabilities`` or ``projections``: it
finds them through the entry-point groups of ``jetagent.plugins``. Here a distribution of
a test's own (a ``.dist-info`` folder on the path, as ``pip install`` leaves one) declares
capabilities, tools and projection services, and the platform finds, loads and serves them.
"""

from __future__ import annotations

import ast
import asyncio
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetagent.cli._services import (
    capability_specs,
    dedicated_tool_names,
    projection_factory,
)
from jetagent.cli._up import default_services
from jetagent.errors import ConfigError
from jetagent.models import ModelCatalog
from jetagent.testing import SupervisedProcess, eventually, tools_registered
from tests.support.cli import JETAGENT, ROOT, cli_env, run_cli
from tests.support.platform import InProcessPlatform

CORE = ROOT / "platform" / "jetagent"
PLUGIN_PACKAGES = ("capabilities", "projections")


# --- the core's imports, read from its source ------------------------------------------


def _modules(core: Path) -> dict[str, Path]:
    """Module name → file, for every module of the core package at ``core``."""
    found = {}
    for path in core.rglob("*.py"):
        parts = list(path.relative_to(core.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(
    module: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]
) -> list[str]:
    """The modules ``node`` imports: ``from a import b`` is ``a.b`` when that is a module,
    else ``a``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        package = module.split(".")
        if path.name != "__init__.py":
            package.pop()
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, *([node.module] if node.module else [])])
    return [
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
        for alias in node.names
    ]


_DYNAMIC = {"import_module", "find_spec", "__import__", "resolve_name"}


def _dynamic(node: ast.Call) -> str | None:
    """The module a call such as ``importlib.import_module("x")`` names literally."""
    name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
    if name in _DYNAMIC and node.args and isinstance(node.args[0], ast.Constant):
        value = node.args[0].value
        return value if isinstance(value, str) else None
    return None


def import_graph(core: Path) -> tuple[dict[str, set[str]], list[str]]:
    """The core's module graph (every import, also inside functions: a lazy import
    still makes one module depend on another) and each import of a plugin package."""
    modules = _modules(core)
    edges: dict[str, set[str]] = {name: set() for name in modules}
    upward = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = _imported(module, path, node, modules)
            elif isinstance(node, ast.Call) and (name := _dynamic(node)) is not None:
                names = [name]
            else:
                continue
            for name in names:
                if name.split(".")[0] in PLUGIN_PACKAGES:
                    upward.append(f"{path.relative_to(core.parent)}:{node.lineno} {name}")
                if name in modules and name != module:
                    edges[module].add(name)
    return edges, upward


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in edges[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in edges:
        if module not in index:
            visit(module)
    return found


def test_the_core_never_imports_capabilities_or_projections() -> None:
    _, upward = import_graph(CORE)
    assert not upward, "the core imports plugins by name:\n" + "\n".join(upward)


def test_the_command_line_has_no_import_cycle() -> None:
    edges, _ = import_graph(CORE)
    assert "jetagent.cli._ops" in edges  # the graph is read from the real source
    cli = [m for m in edges if m == "jetagent.cli" or m.startswith("jetagent.cli.")]
    involved = [c for c in cycles(edges) if set(c) & set(cli)]
    assert not involved, f"import cycles through the command line: {involved}"
    plugins = [c for c in cycles(edges) if "jetagent.plugins" in c]
    assert not plugins, f"import cycles through jetagent.plugins: {plugins}"


# --- a distribution of the test's own --------------------------------------------------

_PLUGIN = """
from jetagent import CapabilitySpec, tool
from jetagent.plugins import CapabilityContext
from jetagent.worker.tools import ToolBox


@tool(description="Say it louder.", capability="shouter")
def shout(text: str) -> str:
    return text.upper() + "!"


@tool(description="A heavy tool with a pool of its own.", dedicated=True)
def grind(n: int) -> int:
    return n * 2


TOOLS = [grind]


def capabilities(context: CapabilityContext) -> list[CapabilitySpec]:
    assert isinstance(context, CapabilityContext)
    box = ToolBox.of([shout])
    return [CapabilitySpec(name="shouter", handler=box.serve, tools=[shout.registration()])]


class Views:
    def __init__(self, nc: object, settings: object) -> None:
        self.views: dict[str, object] = {}
"""


def install(folder: Path, name: str, entry_points: str, modules: dict[str, str]) -> Path:
    """A distribution ``name`` in ``folder`` as pip installs one: its modules and a
    ``.dist-info`` with ``entry_points.txt``. Returns ``folder`` (for the path)."""
    # The folder's name as pip writes it: "-" in the name would end it early.
    info = folder / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(textwrap.dedent(source))
    return folder


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution with a capability, a dedicated tool and broken entry points,
    installed on this process's path."""
    module = f"jetagent_test_plugin_{tmp_path.name.replace('-', '_')}"
    folder = install(
        tmp_path / "site",
        "jetagent-test-plugin",
        f"""
        [jetagent.capabilities]
        shouter = {module}:capabilities
        missing = no_such_plugin_module:capabilities
        no_attr = {module}:nothing_here
        raises = {module}_boom:capabilities
        not_a_factory = {module}:Views

        [jetagent.tools]
        grinders = {module}:TOOLS
        """,
        {module: _PLUGIN, f"{module}_boom": "raise RuntimeError('the plugin is broken')\n"},
    )
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in (module, f"{module}_boom"):
        sys.modules.pop(name, None)


def test_a_capability_from_an_entry_point_is_found(plugin_dir: Path) -> None:
    (spec,) = capability_specs(["shouter"], ModelCatalog.load())
    assert spec.name == "shouter"
    assert [t.spec.name for t in spec.tools] == ["shout"]
    # `jetagent up` starts a worker for it, and one for the dedicated tool it brings.
    names = [s.name for s in default_services(gateway=False)]
    assert "shouter" in names
    assert "tools-grind" in names
    assert dedicated_tool_names() == ["grind"]
    # The tools worker serves the installed tools beside the built-in ones.
    (tools,) = capability_specs(["tools"], ModelCatalog.load())
    assert {"grind", "calculator"} <= {t.spec.name for t in tools.tools}


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("missing", "No module named 'no_such_plugin_module'"),
        ("no_attr", "has no attribute 'nothing_here'"),
        ("raises", "RuntimeError: the plugin is broken"),
        ("not_a_factory", "a capability factory takes one argument"),
    ],
)
def test_an_entry_point_that_cannot_be_loaded_is_a_clear_config_error(
    plugin_dir: Path, name: str, says: str
) -> None:
    with pytest.raises(ConfigError) as error:
        capability_specs([name], ModelCatalog.load())
    message = str(error.value)
    assert f"entry point {name!r}" in message, message
    assert says in message, message
    if name != "not_a_factory":  # which group, which reference, which distribution
        assert "jetagent.capabilities" in message, message
        assert "from jetagent-test-plugin" in message, message


def test_a_broken_entry_point_stops_the_worker_with_one_line(plugin_dir: Path) -> None:
    env = cli_env(None, PYTHONPATH=str(plugin_dir))
    result = run_cli("worker", "missing", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "entry point 'missing'" in line
    assert "no_such_plugin_module" in line
    assert "PYTHONPATH" in line


def test_environment_references_go_through_the_same_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JETAGENT_CAPABILITIES", "no_such_plugin_module:capabilities")
    with pytest.raises(ConfigError, match=r"JETAGENT_CAPABILITIES entry .*no_such_plugin"):
        capability_specs(["reasoning"], ModelCatalog.load())
    monkeypatch.delenv("JETAGENT_CAPABILITIES")
    monkeypatch.setenv("JETAGENT_TOOLS", "json:dumps")
    with pytest.raises(ConfigError, match=r"JETAGENT_TOOLS entry 'json:dumps'.*not a jetagent"):
        dedicated_tool_names()


def test_the_projection_service_is_the_installed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from projections.service import ProjectionService

    assert projection_factory() is ProjectionService
    # A second one installed: which to run is not guessed.
    module = f"jetagent_test_views_{tmp_path.name.replace('-', '_')}"
    folder = install(
        tmp_path / "site",
        "jetagent-test-views",
        f"[jetagent.projections]\nmine = {module}:Views\n",
        {module: _PLUGIN},
    )
    monkeypatch.syspath_prepend(str(folder))
    with pytest.raises(ConfigError, match=r"runs one projection service, found .*mine"):
        projection_factory()
    sys.modules.pop(module, None)


async def test_a_capability_from_an_entry_point_is_served(
    engine: InProcessPlatform, plugin_dir: Path
) -> None:
    settings = engine.settings
    # `jetagent worker shouter`, as a deployment runs it: the capability is found only
    # through the entry point of the distribution on PYTHONPATH.
    log = plugin_dir / "worker.log"
    worker = SupervisedProcess(
        "worker",
        [str(JETAGENT), "worker", "shouter"],
        log_file=log,
        env=cli_env(settings.nats_url, settings.prefix, PYTHONPATH=str(plugin_dir)),
        cwd=plugin_dir,
    )
    with worker.start():
        try:
            await eventually(
                lambda: tools_registered(engine.client.js, settings, "shout"),
                timeout=60,
                interval=0.2,
            )
            workflow = await engine.client.submit(
                instruction='call shout {"text": "hello"}', tenant="t", allowed_tools=["shout"]
            )
            result = await engine.client.result(workflow, timeout=60)
            assert "HELLO!" in str(result.output), result
        finally:
            worker.send_signal(signal.SIGTERM)
            await asyncio.to_thread(worker.wait, 30)
    assert worker.returncode == 0, log.read_text()
