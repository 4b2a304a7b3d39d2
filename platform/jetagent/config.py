"""Settings, from one place: environment variables (``JETAGENT_*`` and ``NATS_URL``).

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
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jetagent.errors import ConfigError
from jetagent.subjects import Names

__all__ = ["OverQuota", "Settings", "TenantQuota", "TenantQuotas"]

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
    prefix: str = Field("ja", description="Subject prefix; stream names use it upper-cased.")
    replicas: int = Field(1, ge=1, le=5, description="Stream replicas (3 in a cluster).")
    data_dir: Path = Field(Path(".jetagent"), description="Embedded server's data folder.")
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
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics port.")
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
        override = self.tenant_quotas.get(tenant) or TenantQuota()
        return TenantQuotas(
            max_workflows=_first(override.max_workflows, self.tenant_max_workflows),
            tokens_per_minute=_first(override.tokens_per_minute, self.tenant_tokens_per_minute),
            over_quota=override.over_quota or self.over_quota,
        )

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
