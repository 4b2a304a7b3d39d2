"""deploy/k8s: the Kubernetes manifests and KEDA ScaledObjects, validated offline.

Core kinds are checked against Kubernetes' own JSON schemas (kubernetes-validate, strict:
an unknown field is an error) for the versions below; ScaledObjects against KEDA's CRD
(cloudcoil-models-keda, strict types, and an unknown field is an error here too). Then
what no schema knows, each derived from the code and the definitions in nats/, never
restated: every container runs a command the `jetagent` CLI accepts, reads only real
settings, logs in as a user of nats/accounts.conf with that user's password file, runs
unprivileged; each capability's worker scales on the consumer it creates itself, through
a `nats-jetstream` trigger with KEDA's metadata keys only. ``problems()`` runs every
check; the broken copies at the end show that each kind of mistake is caught.

One module although over 400 lines: the checks and the broken manifests that prove them
belong together, and they share the loading and the derived facts.
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import kubernetes_validate
import pydantic
import pytest
import typer
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from pydantic import AliasChoices

from jetagent import plugins
from jetagent.cli import app
from jetagent.config import Settings
from jetagent.embedded import find_server_binary
from jetagent.gateway import GatewaySettings
from jetagent.jetstream.provision import consumer_config, stream_configs
from jetagent.models import ModelCatalog

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes the manifests claim (nothing newer than 1.30's API is used) and
# the newest kubernetes-validate 1.37 bundles.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# deploy/k8s/README.md: `helm install nats nats/nats ...`; the chart's client port.
NATS_RELEASE = "nats"
NATS_CLIENT_PORT = 4222
# The chart mounts its nats.conf here; config.merge's $include is relative to it.
NATS_CONFIG_DIR = "/etc/nats-config"
# KEDA's nats-jetstream scaler (docs/2.20/scalers/nats-jetstream.md): every metadata key
# it reads; all values are strings.
TRIGGER_KEYS = frozenset(
    {
        "natsServerMonitoringEndpoint",
        "account",
        "accountID",
        "stream",
        "consumer",
        "lagThreshold",
        "activationLagThreshold",
        "useHttps",
    }
)
# KEDA's kinds the manifests may use, as cloudcoil's models of KEDA's CRDs.
KEDA_MODELS: dict[str, type[pydantic.BaseModel]] = {"ScaledObject": ScaledObject}

Doc = dict[str, Any]


@dataclass
class Manifests:
    """Everything in deploy/k8s: the kustomization's resources, the kustomization itself
    and the NATS chart's values."""

    docs: list[Doc]
    kustomization: Doc
    nats_values: Doc

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def named(self, kind: str, name: str) -> Doc | None:
        return next((d for d in self.of_kind(kind) if d["metadata"]["name"] == name), None)


def load() -> Manifests:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = [
        doc
        for resource in kustomization["resources"]
        for doc in yaml.safe_load_all((K8S / resource).read_text())
        if doc is not None
    ]
    values = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    return Manifests(docs, kustomization, values)


def _id(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# ---------------------------------------------------------------- facts from the code


@functools.cache
def _accounts_conf() -> str:
    return (ROOT / "nats" / "accounts.conf").read_text()


def nats_users() -> dict[str, str]:
    """User -> the variable accounts.conf takes its password from."""
    found = re.findall(r'user:\s*"([^"]+)",\s*password:\s*\$(\w+)', _accounts_conf())
    return dict(found)


def user_may_publish(user: str, subject: str) -> bool:
    """Whether ``subject`` is in the user's publish allow list (its block of the file)."""
    block = _accounts_conf().split(f'user: "{user}"', 1)[1].split('user: "', 1)[0]
    return f'"{subject}"' in block


def jetstream_accounts() -> set[str]:
    return set(re.findall(r"^\s*(\w+)\s*\{\s*\n\s*jetstream:\s*enabled", _accounts_conf(), re.M))


@functools.cache
def capabilities() -> frozenset[str]:
    """The capabilities `jetagent worker` knows: its entry points, as the CLI finds them."""
    return frozenset(plugins.installed(plugins.CAPABILITIES))


@functools.cache
def setting_names() -> frozenset[str]:
    """Every environment variable jetagent's settings read, and the provider keys the
    model catalog names."""
    names = set()
    for cls, prefix in ((Settings, "JETAGENT_"), (GatewaySettings, "JETAGENT_GATEWAY_")):
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                names |= {choice for choice in alias.choices if isinstance(choice, str)}
            else:
                names.add(alias if isinstance(alias, str) else prefix + field_name.upper())
    catalog = ModelCatalog.load()
    names |= {m.api_key_env for m in catalog.models.values() if m.api_key_env}
    return frozenset(names)


def dockerfile() -> tuple[list[str], int]:
    """The image's ENTRYPOINT and its user's uid."""
    text = (ROOT / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", text, re.M)
    uid = re.search(r"--uid (\d+)", text)
    assert entrypoint, "the Dockerfile has no ENTRYPOINT"
    assert uid, "the Dockerfile makes no user"
    return json.loads(entrypoint[1]), int(uid[1])


@functools.cache
def _cli() -> Any:
    return typer.main.get_command(app)


def parse_cli(args: list[str]) -> tuple[list[str], dict[str, Any]]:
    """The command path and parameters of ``jetagent <args>``, parsed by the CLI itself;
    raises ValueError, with the CLI's own message, where it would refuse them."""
    command = _cli()
    path: list[str] = []
    while hasattr(command, "commands"):  # a group: its next argument names a command
        if not args or args[0] not in command.commands:
            raise ValueError(f"no command {' '.join([*path, *args[:1]])!r}")
        path.append(args[0])
        command, args = command.commands[args[0]], args[1:]
    try:
        context = command.make_context(" ".join(["jetagent", *path]), list(args))
    except typer.TyperException as exc:
        raise ValueError(exc.format_message()) from exc
    return path, dict(context.params)


# ---------------------------------------------------------------- the services as they run


@dataclass
class Container:
    """One jetagent container of a workload, with the environment it will have."""

    owner: Doc
    pod: Doc
    spec: Doc
    env: dict[str, str]  # the ConfigMap's data, then the container's own values
    env_names: list[str]  # every name set, including those from Secrets

    @property
    def where(self) -> str:
        return f"{_id(self.owner)}[{self.spec.get('name')}]"

    def settings(self, cls: type[pydantic.BaseModel] = Settings) -> Any:
        with mock.patch.dict(os.environ, self.env, clear=True):
            return cls()

    def volume(self, mount_path: str) -> Doc | None:
        """The volume mounted at ``mount_path``."""
        for mount in self.spec.get("volumeMounts", []):
            if mount["mountPath"] == mount_path:
                volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
                return volumes.get(mount["name"])
        return None


def containers(m: Manifests) -> Iterator[Container]:
    for owner in [*m.of_kind("Deployment"), *m.of_kind("Job")]:
        pod = owner["spec"]["template"]["spec"]
        for spec in pod["containers"]:
            env: dict[str, str] = {}
            names: list[str] = []
            for source in spec.get("envFrom", []):
                if "secretRef" in source:  # every key of a Secret, as a variable
                    names.append(f"Secret/{source['secretRef'].get('name')}")
                    continue
                config = m.named("ConfigMap", source.get("configMapRef", {}).get("name"))
                data = (config or {}).get("data", {})
                env.update(data)
                names += list(data)
            for var in spec.get("env", []):
                names.append(var["name"])
                if "value" in var:
                    env[var["name"]] = str(var["value"])
            yield Container(owner, pod, spec, env, names)


def _command(c: Container) -> tuple[list[str], dict[str, Any]]:
    """What the container runs; nothing where the CLI refuses it (check_commands says so)."""
    try:
        return parse_cli(list(c.spec.get("args", [])))
    except ValueError:
        return [], {}


def _worker_capabilities(c: Container) -> list[str]:
    path, params = _command(c)
    return list(params["capabilities"]) if path == ["worker"] else []


# ---------------------------------------------------------------- checks


@functools.cache
def _core_schema_problem(text: str, kube_version: str) -> str | None:
    doc = json.loads(text)
    try:
        kubernetes_validate.validate(doc, kube_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return f"{_id(doc)}: Kubernetes {kube_version}: {where}: {exc.message}"
    except kubernetes_validate.SchemaNotFoundError as exc:
        return f"{_id(doc)}: {exc.message}"
    return None


def _unknown_fields(given: Any, kept: Any, path: str = "") -> Iterator[str]:
    """Fields of ``given`` the model dropped (pydantic ignores what it does not know)."""
    if isinstance(given, dict) and isinstance(kept, dict):
        for key, value in given.items():
            if key not in kept:
                yield f"{path}{key}"
            else:
                yield from _unknown_fields(value, kept[key], f"{path}{key}.")
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (value, other) in enumerate(zip(given, kept, strict=False)):
            yield from _unknown_fields(value, other, f"{path}{i}.")


def check_schemas(m: Manifests) -> Iterator[str]:
    for doc in m.docs:
        if doc.get("apiVersion", "").startswith("keda.sh/"):
            model_class = KEDA_MODELS.get(doc.get("kind", ""))
            if model_class is None:
                yield f"{_id(doc)}: no KEDA model for this kind here"
                continue
            try:
                model = model_class.model_validate(doc, strict=True)
            except pydantic.ValidationError as exc:
                for error in exc.errors():
                    where = ".".join(str(p) for p in error["loc"])
                    yield f"{_id(doc)}: KEDA: {where}: {error['msg']}"
                continue
            kept = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
            for field in _unknown_fields(doc, kept):
                yield f"{_id(doc)}: KEDA: unknown field {field}"
            continue
        for kube_version in KUBERNETES_VERSIONS:
            problem = _core_schema_problem(json.dumps(doc, sort_keys=True), kube_version)
            if problem:
                yield problem


def check_commands(m: Manifests) -> Iterator[str]:
    entrypoint, _ = dockerfile()
    if entrypoint != ["jetagent"]:
        yield f"Dockerfile: ENTRYPOINT {entrypoint}: containers' args are jetagent's"
    tag = version("jetagent")
    image = next(i for i in m.kustomization["images"] if i["name"] == "jetagent")
    if image["newTag"] != tag:
        yield f"kustomization: image tag {image['newTag']} is not jetagent's version {tag}"
    for c in containers(m):
        if c.spec.get("image") != f"jetagent:{tag}":
            yield f"{c.where}: image {c.spec.get('image')!r} is not jetagent:{tag}"
        if "command" in c.spec:
            yield f"{c.where}: `command` replaces the image's entrypoint {entrypoint}"
        try:
            path, _ = parse_cli(list(c.spec.get("args", [])))
        except ValueError as exc:
            yield f"{c.where}: `jetagent {' '.join(c.spec.get('args', []))}`: {exc}"
            continue
        for capability in set(_worker_capabilities(c)) - capabilities():
            yield f"{c.where}: no capability {capability!r} (known: {sorted(capabilities())})"
        if path != ["provision"] and c.owner["kind"] == "Job":
            yield f"{c.where}: a Job runs `jetagent provision` only"


def check_settings(m: Manifests) -> Iterator[str]:
    for c in containers(m):
        for name in c.env_names:
            if name not in setting_names():
                yield f"{c.where}: {name} is not a jetagent setting"
        try:
            c.settings()
            c.settings(GatewaySettings)
        except pydantic.ValidationError as exc:
            yield f"{c.where}: invalid settings: {exc}"


def check_credentials(m: Manifests) -> Iterator[str]:
    users = nats_users()
    server_env = m.nats_values["container"]["env"]
    for c in containers(m):
        settings = c.settings()
        for name in c.env_names:
            from_secret = name.startswith("Secret/") or "PASSWORD" in name
            if from_secret and name != "NATS_PASSWORD_FILE":
                yield f"{c.where}: {name}: NATS credentials are files, never variables"
        for server in settings.nats_url.split(","):
            if urlsplit(server).username or urlsplit(server).password:
                yield f"{c.where}: NATS_URL carries credentials"
        user = settings.nats_user
        if user not in users:
            yield f"{c.where}: NATS_USER {user!r} is not a user of nats/accounts.conf"
            continue
        secret = server_env[users[user]]["valueFrom"]["secretKeyRef"]
        file = str(settings.nats_password_file)
        volume = c.volume(posixpath.dirname(file)) or {}
        items = volume.get("secret", {}).get("items", [])
        source = [
            (volume["secret"]["secretName"], item["key"])
            for item in items
            if item["path"] == posixpath.basename(file)
        ]
        if source != [(secret["name"], secret["key"])]:
            yield f"{c.where}: {file} is not {user}'s password ({secret['name']}/{secret['key']})"
        for capability in _worker_capabilities(c):
            if not user_may_publish(user, f"{settings.prefix}.step.{capability}.>"):
                yield f"{c.where}: {user} may not publish {capability} step results"


def check_security(m: Manifests) -> Iterator[str]:
    _, uid = dockerfile()
    for c in containers(m):
        pod_context = c.pod.get("securityContext", {})
        context = {**pod_context, **c.spec.get("securityContext", {})}
        wanted = {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        for key, value in wanted.items():
            if context.get(key) != value:
                yield f"{c.where}: securityContext.{key} is {context.get(key)!r}, not {value!r}"
        if context.get("privileged") or any(c.pod.get(h) for h in ("hostPID", "hostNetwork")):
            yield f"{c.where}: privileged"
        if c.pod.get("automountServiceAccountToken") is not False:
            yield f"{c.where}: mounts a service account token it never uses"
        tmp = (c.volume("/tmp") or {}).get("emptyDir", {})
        if not tmp.get("sizeLimit"):
            yield f"{c.where}: /tmp is not a size-limited emptyDir"
        if "tools" in _worker_capabilities(c) and tmp.get("medium") != "Memory":
            yield f"{c.where}: the sandbox's folders need a tmpfs (medium: Memory)"
        resources = c.spec.get("resources", {})
        if not {"cpu", "memory"} <= set(resources.get("requests", {})):
            yield f"{c.where}: no cpu and memory requests"
        if "memory" not in resources.get("limits", {}):
            yield f"{c.where}: no memory limit"


def check_ports(m: Manifests) -> Iterator[str]:
    openapi = json.loads((ROOT / "schemas" / "openapi.json").read_text())["paths"]
    for c in containers(m):
        grace = c.pod.get("terminationGracePeriodSeconds", 30)
        if c.owner["kind"] == "Deployment" and grace <= c.settings().shutdown_grace_s:
            yield f"{c.where}: killed before its shutdown grace (JETAGENT_SHUTDOWN_GRACE_S) ends"
        path, _ = _command(c)
        ports = {p["name"]: p["containerPort"] for p in c.spec.get("ports", [])}
        probes = {k: c.spec.get(k) for k in ("livenessProbe", "readinessProbe", "startupProbe")}
        if path == ["gateway"]:
            http = c.settings(GatewaySettings)
            listens = http.addr == "0.0.0.0" and ports.get("http") == http.port
            paths = {"/healthz", "/readyz"}
        elif path == ["projections", "run"]:
            settings = c.settings()
            listens = settings.metrics_addr == "0.0.0.0"
            listens &= ports.get("metrics") == settings.metrics_port
            paths = {"/metrics"}
        else:
            continue
        if not listens:
            yield f"{c.where}: its probes and Service cannot reach the port it listens on"
        for kind, probe in probes.items():
            get = (probe or {}).get("httpGet", {})
            if get.get("port") not in ports or get.get("path") not in paths:
                yield f"{c.where}: {kind} {get} is not one of {sorted(paths)} on {ports}"
            elif path == ["gateway"] and "get" not in openapi.get(get["path"], {}):
                yield f"{c.where}: the gateway has no GET {get['path']}"
    for service in m.of_kind("Service"):
        selector = service["spec"]["selector"]
        pods = [d for d in m.of_kind("Deployment") if selector.items() <= _labels(d).items()]
        names = {p["name"] for d in pods for c in _pod(d)["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            if not pods or port["targetPort"] not in names:
                yield f"{_id(service)}: port {port['name']} reaches no container port"
    for deployment in m.of_kind("Deployment"):
        if not deployment["spec"]["selector"]["matchLabels"].items() <= _labels(deployment).items():
            yield f"{_id(deployment)}: its selector does not match its pods"


def _pod(deployment: Doc) -> Doc:
    pod: Doc = deployment["spec"]["template"]["spec"]
    return pod


def _labels(deployment: Doc) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"].get("labels", {})
    return labels


def check_scaling(m: Manifests) -> Iterator[str]:
    values = m.nats_values["config"]
    endpoint = (
        f"{NATS_RELEASE}-headless.{m.kustomization['namespace']}.svc.cluster.local"
        f":{values['monitor']['port']}"
    )
    workers = {c.owner["metadata"]["name"]: c for c in containers(m) if _worker_capabilities(c)}
    scaled: list[str] = []
    for so in m.of_kind("ScaledObject"):
        spec = so.get("spec", {})
        target = spec.get("scaleTargetRef", {})
        scaled.append(target.get("name"))
        c = workers.get(target.get("name"))
        if target.get("kind", "Deployment") != "Deployment" or c is None:
            yield f"{_id(so)}: scales {target.get('name')!r}, no worker Deployment here"
            continue
        if "replicas" in c.owner["spec"]:
            yield f"{_id(so)}: {_id(c.owner)} sets replicas; every apply would reset the HPA's"
        if spec.get("minReplicaCount", 0) < 1:
            yield f"{_id(so)}: at 0 replicas nothing creates the consumer or serves its tools"
        settings = c.settings()
        _, params = _command(c)
        concurrency = params.get("concurrency") or settings.worker_concurrency
        streams = {s["name"] for s in stream_configs(settings)}
        wanted = set()
        for capability in _worker_capabilities(c):
            consumer = consumer_config(settings, "capability", capability=capability)
            wanted.add((consumer["stream"], consumer["durable_name"]))
        read = set()
        for trigger in spec.get("triggers", []):
            meta = trigger.get("metadata", {})
            if trigger.get("type") != "nats-jetstream":
                yield f"{_id(so)}: trigger {trigger.get('type')!r} is not nats-jetstream"
                continue
            for key in sorted(set(meta) - TRIGGER_KEYS):
                yield f"{_id(so)}: nats-jetstream has no metadata key {key!r}"
            for key in sorted({"stream", "consumer", "natsServerMonitoringEndpoint"} - set(meta)):
                yield f"{_id(so)}: nats-jetstream needs {key!r}"
            read.add((meta.get("stream"), meta.get("consumer")))
            if meta.get("stream") not in streams:
                yield f"{_id(so)}: jetagent has no stream {meta.get('stream')!r}"
            if meta.get("natsServerMonitoringEndpoint") != endpoint:
                yield f"{_id(so)}: the endpoint must be the headless service {endpoint}"
            if meta.get("account", meta.get("accountID")) not in jetstream_accounts():
                yield f"{_id(so)}: no JetStream account {meta.get('account')!r}"
            if meta.get("useHttps", "false") != "false":
                yield f"{_id(so)}: the monitoring port has no TLS (nats-values.yaml)"
            if meta.get("lagThreshold") != str(concurrency):
                yield f"{_id(so)}: lagThreshold is not the worker's concurrency {concurrency}"
        if read != wanted:
            yield f"{_id(so)}: reads consumers {sorted(read)}, the worker creates {sorted(wanted)}"
    for name in sorted(set(workers) - set(scaled)):
        yield f"Deployment/{name}: no ScaledObject"
    for name in sorted(n for n in set(scaled) if scaled.count(n) > 1):
        yield f"Deployment/{name}: scaled by more than one ScaledObject"
    deployed = {cap for c in workers.values() for cap in _worker_capabilities(c)}
    for capability in sorted(capabilities() - deployed):
        yield f"capability {capability!r} has no worker Deployment"


def check_nats_release(m: Manifests) -> Iterator[str]:
    values = m.nats_values["config"]
    nodes = values["cluster"]["replicas"]
    urls = [
        f"nats://{NATS_RELEASE}-{i}.{NATS_RELEASE}-headless:{NATS_CLIENT_PORT}"
        for i in range(nodes)
    ]
    if not (values["cluster"]["enabled"] and values["jetstream"]["enabled"]):
        yield "nats-values.yaml: not a JetStream cluster"
    if not values["jetstream"]["fileStore"]["pvc"]["enabled"]:
        yield "nats-values.yaml: JetStream's file store is not on a volume"
    for c in containers(m):
        settings = c.settings()
        if settings.nats_url.split(",") != urls:
            yield f"{c.where}: NATS_URL is not every server of the release: {','.join(urls)}"
        if settings.replicas != nodes:
            yield f"{c.where}: JETAGENT_REPLICAS={settings.replicas} on {nodes} servers"


CHECKS: tuple[Callable[[Manifests], Iterator[str]], ...] = (
    check_schemas,
    check_commands,
    check_settings,
    check_credentials,
    check_security,
    check_ports,
    check_scaling,
    check_nats_release,
)


def problems(m: Manifests) -> list[str]:
    return [problem for check in CHECKS for problem in check(m)]


# ---------------------------------------------------------------- tests


def test_the_kustomization_applies_every_manifest() -> None:
    listed = set(load().kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {
        "kustomization.yaml",
        "nats-values.yaml",
    }


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_the_manifests_pass(check: Callable[[Manifests], Iterator[str]]) -> None:
    assert list(check(load())) == []


def test_what_is_deployed() -> None:
    m = load()
    kinds = sorted(_id(d) for d in m.docs)
    assert kinds.count("ScaledObject/worker-tools") == 1
    assert {"Job/provision", "Service/gateway", "Service/projections"} <= set(kinds)
    assert m.named("Deployment", "orchestrator")["spec"]["replicas"] == 2  # type: ignore[index]
    assert len(m.of_kind("ScaledObject")) == len(capabilities())


def test_the_nats_servers_load_the_accounts_with_the_release_values(tmp_path: Path) -> None:
    """The chart's nats.conf includes accounts.conf from the mounted ConfigMap, and the
    servers' environment (from the Secret) sets every password variable it names."""
    values = load().nats_values
    include = values["config"]["merge"]["$include"]
    mounts = [p["value"] for p in values["container"]["patch"] if p["path"] == "/volumeMounts/-"]
    volumes = [p["value"] for p in values["podTemplate"]["patch"] if p["path"] == "/spec/volumes/-"]
    accounts_dir = posixpath.dirname(posixpath.normpath(posixpath.join(NATS_CONFIG_DIR, include)))
    mount = next(m for m in mounts if m["mountPath"] == accounts_dir)
    volume = next(v for v in volumes if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "jetagent-nats-accounts"  # deploy/k8s/README.md
    # The same layout on disk: the config folder and the mounted accounts next to it.
    config_dir = tmp_path / NATS_CONFIG_DIR.strip("/")
    config_dir.mkdir(parents=True)
    (tmp_path / accounts_dir.strip("/")).mkdir(parents=True, exist_ok=True)
    (tmp_path / accounts_dir.strip("/") / "accounts.conf").write_text(_accounts_conf())
    (config_dir / "nats.conf").write_text(f"port: 4222\ninclude {include};\n")
    env = {name: f"pw-{name}" for name in values["container"]["env"]}
    result = subprocess.run(
        [str(find_server_binary()), "-t", "-c", str(config_dir / "nats.conf")],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), **env},
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(nats_users().values()) <= set(env)


def _change(doc: Doc, path: str, value: Any) -> None:
    """Set a dotted path (list indexes as numbers; a list's length appends); ``...``
    deletes."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = doc
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    elif isinstance(target, list) and last == len(target):
        target.append(value)
    else:
        target[last] = value


POD = "spec.template.spec"
CONTAINER = f"{POD}.containers.0"
TRIGGER = "spec.triggers.0.metadata"
# (what is broken: the manifest, the path, the value; what the problem says)
BROKEN = [
    ("Deployment/orchestrator", "spec.replicas", "two", "'two' is not of type 'integer'"),
    ("Deployment/gateway", f"{CONTAINER}.portz", [], "'portz' was unexpected"),
    ("ScaledObject/worker-tools", f"{TRIGGER}.lagThreshold", 4, "Input should be a valid string"),
    ("ScaledObject/worker-memory", "spec.scaleTargetRef", ..., "scaleTargetRef: Field required"),
    (
        "ScaledObject/worker-tools",
        "spec.pollingIntervall",
        5,
        "unknown field spec.pollingIntervall",
    ),
    ("ScaledObject/worker-tools", f"{TRIGGER}.lagTreshold", "4", "no metadata key 'lagTreshold'"),
    ("ScaledObject/worker-reasoning", f"{TRIGGER}.consumer", "cap-summarize", "worker creates"),
    ("ScaledObject/worker-memory", f"{TRIGGER}.stream", "JA_STEP", "no stream 'JA_STEP'"),
    ("ScaledObject/worker-tools", "spec.scaleTargetRef.name", "tools", "no worker Deployment"),
    (
        "ScaledObject/worker-tools",
        f"{TRIGGER}.natsServerMonitoringEndpoint",
        "nats.jetagent.svc.cluster.local:8222",
        "must be the headless service",
    ),
    ("Deployment/gateway", f"{CONTAINER}.args", ["gateways"], "no command 'gateways'"),
    ("Deployment/worker-tools", f"{CONTAINER}.args", ["worker", "tool"], "no capability 'tool'"),
    (
        "Deployment/worker-memory",
        f"{CONTAINER}.args",
        ["worker", "memory", "--concurency", "4"],
        "No such option: --concurency",
    ),
    (
        "Deployment/worker-tools",
        f"{CONTAINER}.env.1.name",
        "JETAGENT_WORKER_CONCURENCY",
        "JETAGENT_WORKER_CONCURENCY is not a jetagent setting",
    ),
    (
        "Deployment/orchestrator",
        f"{CONTAINER}.env.1",
        {"name": "NATS_PASSWORD", "value": "x"},
        "NATS_PASSWORD: NATS credentials are files",
    ),
    (
        "Deployment/orchestrator",
        f"{CONTAINER}.envFrom.1",
        {"secretRef": {"name": "jetagent-nats-passwords"}},
        "NATS credentials are files",
    ),
    (
        "Deployment/worker-tools",
        f"{POD}.volumes.0.secret.items.0.key",
        "admin",
        "is not worker-tools's password",
    ),
    ("Deployment/worker-tools", f"{POD}.securityContext.runAsUser", 0, "runAsUser is 0"),
    (
        "Deployment/worker-tools",
        f"{CONTAINER}.securityContext.allowPrivilegeEscalation",
        True,
        "allowPrivilegeEscalation is True",
    ),
    ("Deployment/worker-tools", f"{POD}.volumes.1.emptyDir.medium", ..., "need a tmpfs"),
    ("Deployment/projections", f"{CONTAINER}.env.2.value", "127.0.0.1", "cannot reach the port"),
    ("Deployment/worker-reasoning", "spec.replicas", 3, "every apply would reset"),
    ("Deployment/worker-tools", f"{POD}.terminationGracePeriodSeconds", 10, "killed before"),
    ("Deployment/gateway", f"{CONTAINER}.readinessProbe.httpGet.path", "/ready", "is not one of"),
]


@pytest.mark.parametrize(
    ("target", "path", "value", "expected"),
    BROKEN,
    ids=[f"{t.split('/')[1]}:{p.rsplit('.', 1)[-1]}={v!r}"[:60] for t, p, v, _ in BROKEN],
)
def test_a_broken_manifest_is_rejected(target: str, path: str, value: Any, expected: str) -> None:
    broken = load()
    _change(next(d for d in broken.docs if _id(d) == target), path, value)
    found = problems(broken)
    assert any(expected in problem for problem in found), found
