"""Settings, from one place: environment variables (``JETAGENT_*`` and ``NATS_URL``).
(A little over 400 lines: one ``Settings`` class holds every setting with its description
and validator, so that one place lists them all.)

Validated at start; every field is documented in the README's configuration table.
Secrets are never settings: NATS credentials are files (``NATS_CREDS``,
``NATS_PASSWORD_FILE``) read when connecting, so no process environment holds them
(README "Credentials").
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jetagent.errors import ConfigError
from jetagent.subjects import Names

__all__ = ["ConnectionOptions", "OverQuota", "Settings", "TenantQuota", "TenantQuotas"]

OverQuota = Literal["hold", "reject"]
"""What happens to a request over its tenant's concurrency quota."""


class TenantQuota(BaseModel):
    """One tenant's quotas in ``JETAGENT_TENANT_QUOTAS``; a field left out is the default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_workflows: int | None = Field(
        None, ge=0, description="Workflows the tenant may run at once (0: no limit)."
    )
    tokens_per_minute: int | None = Field(
        None, ge=0, description="Tokens the tenant's steps may reserve per minute (0: no limit)."
    )
    over_quota: OverQuota | None = Field(
        None, description="hold or reject a request over max_workflows."
    )


_NO_OVERRIDE = TenantQuota()
_QUOTAS_BUILT: dict[tuple[TenantQuota, int, int, str], TenantQuotas] = {}
"""``Settings.quotas_of``'s answers, by the override and defaults they came from."""


class TenantQuotas(BaseModel):
    """The quotas in force for one tenant (the defaults with its overrides applied)."""

    model_config = ConfigDict(frozen=True)

    max_workflows: int
    """0: no limit."""
    tokens_per_minute: int
    """0: no limit."""
    over_quota: OverQuota


log = logging.getLogger(__name__)

_MAX_SECRET_BYTES = 4096


class ConnectionOptions(TypedDict):
    """The failure-detection keywords of :func:`jetagent.jetstream.connect`."""

    ping_interval: float
    max_pings_out: int
    reconnect_wait: float


class Settings(BaseSettings):
    """jetagent's settings. Each field reads ``JETAGENT_<FIELD>`` unless noted."""

    model_config = SettingsConfigDict(env_prefix="JETAGENT_", extra="ignore", frozen=True)

    nats_url: str = Field(
        "",
        validation_alias=AliasChoices("NATS_URL", "JETAGENT_NATS_URL"),
        description="NATS server URL(s); empty means the embedded server (`jetagent up`).",
    )
    nats_creds: str | None = Field(
        None,
        validation_alias=AliasChoices("NATS_CREDS", "JETAGENT_NATS_CREDS"),
        description="A NATS credentials file (JWT and NKEY seed) for an authenticated server.",
    )
    nats_user: str | None = Field(
        None,
        validation_alias=AliasChoices("NATS_USER", "JETAGENT_NATS_USER"),
        description="NATS user name, with its password in NATS_PASSWORD_FILE.",
    )
    nats_password_file: Path | None = Field(
        None,
        validation_alias=AliasChoices("NATS_PASSWORD_FILE", "JETAGENT_NATS_PASSWORD_FILE"),
        description="A file holding the NATS user's password (a Docker secret, say).",
    )
    nats_ping_interval_s: float = Field(
        1.0,
        gt=0,
        le=600,
        description="Seconds between a service's pings to its NATS server; a server that "
        "leaves (max pings out + 1) of them unanswered counts as gone and the service "
        "moves to another node (3 s by default: a hung node is left in about 3 s).",
    )
    nats_max_pings_out: int = Field(
        2, ge=1, le=100, description="Unanswered pings before the NATS server counts as gone."
    )
    nats_reconnect_wait_s: float = Field(
        0.25,
        ge=0,
        le=60,
        description="Seconds before dialing again a NATS server that was tried a moment ago "
        "(other nodes of a cluster are tried at once).",
    )
    prefix: str = Field("ja", description="Subject prefix; stream names use it upper-cased.")
    replicas: int | Literal["auto"] = Field(
        "auto",
        description="Replicas of every stream, KV bucket and object store: 'auto' (R3 on a "
        "cluster of three or more servers, R1 on a single server; never shrinks a stream) "
        "or a count from 1 to 5.",
    )
    placement_tags: str = Field(
        "",
        description="Comma-separated server tags (nats-server `server_tags`) every stream, KV "
        "bucket and object store is placed on, e.g. 'ssd' or 'az:1'; empty: anywhere.",
    )
    placement_cluster: str | None = Field(
        None,
        description="The cluster of a NATS super-cluster every stream, bucket and object "
        "store is placed in; unset: the cluster the client is connected to.",
    )
    provision_wait_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds provisioning (at every service's start and `jetagent "
        "provision`) waits for JetStream to answer while its cluster elects leaders "
        "(4-9 s after a server crash) before it gives up.",
    )
    data_dir: Path = Field(Path(".jetagent"), description="Embedded server's data folder.")
    nats_port: int = Field(
        4222,
        ge=0,
        le=65535,
        description="Client port of the nats-server `jetagent up` starts (NATS's own "
        "default, what nats tools and clients assume); 0 picks any free port.",
    )
    tenants: str = Field(
        "default,demo", description="Comma-separated tenants accepted; '*' accepts any."
    )
    default_tenant: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Tenant of a request that names none and whose subject names none.",
    )
    max_request_bytes: int = Field(256 * 1024, ge=1024, description="Largest request body.")
    payload_threshold_bytes: int = Field(
        64 * 1024, ge=1024, description="Larger payloads go to the object store by reference."
    )
    max_step_attempts: int = Field(2, ge=1, le=10, description="Attempts of one logical step.")
    early_input_wait_s: float = Field(
        300.0,
        gt=0,
        le=7 * 86400,
        description="Seconds a cancel or signal for a workflow not started yet is kept "
        "before it is answered with InputRejected.",
    )
    snapshot_every: int = Field(100, ge=10, description="Events between aggregate snapshots.")
    cache_size: int = Field(10_000, ge=10, description="Workflows cached per orchestrator.")
    orchestrator_concurrency: int = Field(256, ge=1, description="Inputs processed at once.")
    orchestrator_tenant_share: int = Field(
        4,
        ge=1,
        description="Requests (and step results) of one tenant an orchestrator processes at "
        "once while other tenants have some too; a tenant alone may use an eighth of "
        "JETAGENT_ORCHESTRATOR_CONCURRENCY.",
    )
    step_ack_wait_s: float = Field(
        30.0,
        gt=0,
        description="Seconds without an ack or heartbeat before a step goes to another "
        "worker (the server's ack wait; heartbeats run at a quarter of it).",
    )
    step_max_deliver: int = Field(
        5, ge=2, description="Runs of a step (deliveries) before it fails for good."
    )
    step_retry_base_s: float = Field(
        1.0, gt=0, description="First retry delay of a transient failure; doubles per run."
    )
    step_retry_max_delay_s: float = Field(
        30.0, gt=0, description="Longest delay between two runs of a step."
    )
    step_retry_budget_s: float = Field(
        300.0,
        gt=0,
        description="Seconds from a step's scheduling after which it is not retried again "
        "(also never past the workflow's deadline).",
    )
    step_rate_limit_retries: int = Field(
        5, ge=0, description="Rate-limit waits within one run of a step before it fails."
    )
    worker_concurrency: int = Field(16, ge=1, description="Steps one worker runs at once.")
    shutdown_grace_s: float = Field(20.0, ge=0, description="Seconds to finish steps on stop.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Services' log lines: plain text, or JSON objects one per line (for Loki, "
        "Elastic); both carry the workflow, step, capability, tool and tenant being handled. "
        "Also `jetagent --log-format`.",
    )
    metrics_port: int = Field(
        9464,
        ge=0,
        le=65535,
        description="This service's Prometheus /metrics port (every service serves one); 0: "
        "any free port (logged). `jetagent up` gives it to the projections and the next "
        "ports to the other services (0: a free port each).",
    )
    metrics_addr: str = Field("127.0.0.1", description="Address /metrics listens on.")
    models: str | None = Field(None, description="Model catalog TOML (default: built in).")
    mcp: str | None = Field(
        None, description="MCP servers TOML; their tools join the tools worker."
    )
    tool_processes: int | None = Field(
        None,
        ge=1,
        le=512,
        description="Processes of a tools worker's pool for runs_in='process' tools "
        "(default: one per CPU).",
    )
    tenant_max_workflows: int = Field(
        100,
        ge=0,
        description="Workflows one tenant may run at once (0: no limit); requests over it are "
        "held or rejected (JETAGENT_OVER_QUOTA). Per tenant: JETAGENT_TENANT_QUOTAS.",
    )
    tenant_tokens_per_minute: int = Field(
        0,
        ge=0,
        description="Tokens one tenant's steps may reserve per minute, settled by actual usage "
        "(0: no limit); a step over it waits on a durable timer.",
    )
    over_quota: OverQuota = Field(
        "hold",
        description="A request over its tenant's max_workflows: 'hold' (recorded as Held, "
        "started in arrival order when a slot frees) or 'reject' (RequestRejected).",
    )
    tenant_quotas: Annotated[dict[str, TenantQuota], NoDecode] = Field(
        default_factory=dict,
        description='Per-tenant overrides, as JSON: {"acme": {"max_workflows": 10, '
        '"tokens_per_minute": 50000, "over_quota": "reject"}}.',
    )
    quota_recheck_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="Seconds between the durable rechecks of a held workflow (it starts as "
        "soon as a slot frees; the recheck only repairs a wake-up lost in a crash).",
    )
    request_lookahead: int = Field(
        1000,
        ge=0,
        description="Requests an orchestrator holds beyond those it processes, to take "
        "them round robin across tenants (0: stream order).",
    )
    worker_lookahead: int = Field(
        64,
        ge=0,
        description="Steps a worker holds beyond those it runs, to start them round robin "
        "across tenants (0: stream order).",
    )
    tool_wait_s: float = Field(
        0.0,
        ge=0,
        le=300,
        description="How long the orchestrator holds a request naming a tool no running "
        "worker serves yet before rejecting it (0: reject at once).",
    )

    @field_validator("nats_url")
    @classmethod
    def _no_password_in_url(cls, value: str) -> str:
        for server in value.split(","):
            if urlsplit(server.strip()).password:
                # Still accepted (tests and one-off tools use it), never for a service:
                # a URL is an environment variable, and environments are readable.
                log.warning(
                    "NATS_URL carries a password; services should use NATS_USER with "
                    "NATS_PASSWORD_FILE (or NATS_CREDS) instead"
                )
                break
        return value

    def connection_options(self) -> ConnectionOptions:
        """The keyword arguments of :func:`jetagent.jetstream.connect` that these
        settings choose (failure detection and reconnects)."""
        return {
            "ping_interval": self.nats_ping_interval_s,
            "max_pings_out": self.nats_max_pings_out,
            "reconnect_wait": self.nats_reconnect_wait_s,
        }

    def nats_password(self) -> str | None:
        """The NATS password, read from ``nats_password_file`` now (never kept in the
        settings, so ``to_env`` and logs cannot carry it)."""
        if self.nats_password_file is None:
            return None
        try:
            with self.nats_password_file.open("rb") as file:
                raw = file.read(_MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise ConfigError(
                f"cannot read NATS_PASSWORD_FILE {self.nats_password_file}: {exc.strerror}"
            ) from exc
        password = raw.decode("utf-8", "replace").strip()
        if not password or len(raw) > _MAX_SECRET_BYTES:
            raise ConfigError(
                f"NATS_PASSWORD_FILE {self.nats_password_file} must hold one password "
                f"(1 to {_MAX_SECRET_BYTES} bytes)"
            )
        if self.nats_user is None:
            raise ConfigError("NATS_PASSWORD_FILE needs NATS_USER, the user it belongs to")
        return password

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("replicas", mode="before")
    @classmethod
    def _replicas(cls, value: object) -> object:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        try:
            count = int(text)
        except ValueError:
            raise ValueError(f"must be 'auto' or a number from 1 to 5, not {value!r}") from None
        if not 1 <= count <= 5:
            raise ValueError(f"must be 'auto' or a number from 1 to 5, not {count}")
        return count

    @field_validator("placement_tags")
    @classmethod
    def _tags(cls, value: str) -> str:
        tags = [t.strip().lower() for t in value.split(",") if t.strip()]
        for tag in tags:
            if any(c.isspace() or c in "\"'" for c in tag):
                raise ValueError(f"tag {tag!r} has a space or a quote")
        return ",".join(dict.fromkeys(tags))

    @field_validator("placement_cluster")
    @classmethod
    def _cluster(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", value.strip()):
            raise ValueError("must be a cluster name: letters, digits, '_', '-', '.', ':'")
        return value.strip() if value else None

    @property
    def placement(self) -> dict[str, object] | None:
        """nats-server's stream ``placement`` for the placement settings (None: anywhere)."""
        placement: dict[str, object] = {}
        if self.placement_cluster:
            placement["cluster"] = self.placement_cluster
        if self.placement_tags:
            placement["tags"] = self.placement_tags.split(",")
        return placement or None

    @field_validator("prefix")
    @classmethod
    def _token(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,15}", value):
            raise ValueError("must be 1-16 lower-case letters, digits, '-' or '_'")
        return value

    @field_validator("tenant_quotas", mode="before")
    @classmethod
    def _quotas_json(cls, value: Any) -> Any:
        # Read here rather than by pydantic-settings, so that bad JSON is said as such.
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"JETAGENT_TENANT_QUOTAS is not JSON ({exc.msg} at character {exc.pos}); "
                    'expected {"<tenant>": {"max_workflows": 10}, ...}'
                ) from None
        return value

    @field_validator("tenant_quotas")
    @classmethod
    def _tenant_ids(cls, value: dict[str, TenantQuota]) -> dict[str, TenantQuota]:
        bad = [t for t in value if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", t)]
        if bad:
            raise ValueError(f"tenants {bad} are not tenant ids (1-64 letters, digits, '-' or '_')")
        return value

    def quotas_of(self, tenant: str) -> TenantQuotas:
        """The quotas in force for ``tenant``: its overrides, else the defaults."""
        # Asked a few times per decision: built once per override and defaults (the key
        # holds them all, so settings with other quotas never read another's answer).
        override = self.tenant_quotas.get(tenant) or _NO_OVERRIDE
        key = (override, self.tenant_max_workflows, self.tenant_tokens_per_minute, self.over_quota)
        found = _QUOTAS_BUILT.get(key)
        if found is None:
            found = TenantQuotas(
                max_workflows=_first(override.max_workflows, self.tenant_max_workflows),
                tokens_per_minute=_first(override.tokens_per_minute, self.tenant_tokens_per_minute),
                over_quota=override.over_quota or self.over_quota,
            )
            if len(_QUOTAS_BUILT) >= 1_000:  # settings made in a loop: bounded
                _QUOTAS_BUILT.clear()
            _QUOTAS_BUILT[key] = found
        return found

    @property
    def tenant_set(self) -> frozenset[str] | None:
        """Accepted tenants, or None for any."""
        items = {t.strip() for t in self.tenants.split(",") if t.strip()}
        return None if "*" in items else frozenset(items)

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, for the processes a command starts."""
        env = {}
        for name, value in self.model_dump(mode="json", exclude_none=True).items():
            key = "NATS_URL" if name == "nats_url" else f"JETAGENT_{name.upper()}"
            if name in ("nats_creds", "nats_user", "nats_password_file"):
                key = name.upper()  # file names and a user name; never a secret itself
            # Complex settings are JSON, as pydantic-settings reads them back.
            env[key] = json.dumps(value) if isinstance(value, dict | list) else str(value)
        return env

    @property
    def names(self) -> Names:
        """Every stream, subject and bucket name under this prefix (``jetagent.subjects``)."""
        return Names(self.prefix)


def _first(value: int | None, default: int) -> int:
    return default if value is None else value
