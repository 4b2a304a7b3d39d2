"""Settings, from one place: environment variables (``JETAGENT_*`` and ``NATS_URL``).

Validated at start; every field is documented in the README's configuration table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Names", "Settings"]


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
        description="A NATS credentials file for an authenticated server.",
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
    snapshot_every: int = Field(100, ge=10, description="Events between aggregate snapshots.")
    cache_size: int = Field(10_000, ge=10, description="Workflows cached per orchestrator.")
    orchestrator_concurrency: int = Field(256, ge=1, description="Inputs processed at once.")
    step_ack_wait_s: float = Field(30.0, gt=0, description="Seconds before redelivery.")
    step_max_deliver: int = Field(5, ge=2, description="Deliveries before a step fails.")
    worker_concurrency: int = Field(16, ge=1, description="Steps one worker runs at once.")
    shutdown_grace_s: float = Field(20.0, ge=0, description="Seconds to finish steps on stop.")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics port.")
    metrics_addr: str = Field("127.0.0.1", description="Address /metrics listens on.")
    models: str | None = Field(None, description="Model catalog TOML (default: built in).")
    mcp: str | None = Field(
        None, description="MCP servers TOML; their tools join the tools worker."
    )

    @field_validator("prefix")
    @classmethod
    def _token(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9_-]{0,15}", value):
            raise ValueError("must be 1-16 lower-case letters, digits, '-' or '_'")
        return value

    @property
    def tenant_set(self) -> frozenset[str] | None:
        """Accepted tenants, or None for any."""
        items = {t.strip() for t in self.tenants.split(",") if t.strip()}
        return None if "*" in items else frozenset(items)

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables, for the processes a command starts."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            key = "NATS_URL" if name == "nats_url" else f"JETAGENT_{name.upper()}"
            if name == "nats_creds":
                key = "NATS_CREDS"
            env[key] = str(value)
        return env

    @property
    def names(self) -> Names:
        return Names(self.prefix)


@dataclass(frozen=True)
class Names:
    """Stream, subject, consumer and bucket names under one prefix (DESIGN.md)."""

    prefix: str = "ja"

    @property
    def upper(self) -> str:
        return self.prefix.upper().replace("-", "_")

    @property
    def requests_stream(self) -> str:
        return f"{self.upper}_REQUESTS"

    @property
    def workflows_stream(self) -> str:
        return f"{self.upper}_WORKFLOWS"

    @property
    def steps_stream(self) -> str:
        return f"{self.upper}_STEPS"

    @property
    def dlq_stream(self) -> str:
        return f"{self.upper}_DLQ"

    def request(self, tenant: str) -> str:
        return f"{self.prefix}.request.{tenant}"

    def cancel(self, workflow_id: str) -> str:
        return f"{self.prefix}.cancel.{workflow_id}"

    def signal(self, workflow_id: str, name: str) -> str:
        return f"{self.prefix}.signal.{workflow_id}.{name}"

    @property
    def workflow_root(self) -> str:
        return f"{self.prefix}.wf"

    def workflow(self, workflow_id: str) -> str:
        """Every event of one workflow (and its rejection): one subscription."""
        return f"{self.prefix}.wf.{workflow_id}.>"

    def step_scheduled(self, capability: str) -> list[str]:
        return [
            f"{self.prefix}.wf.*.StepScheduled.{capability}",
            f"{self.prefix}.wf.*.StepScheduled.{capability}.*",
        ]

    def step_result(self, workflow_id: str, step_id: str) -> str:
        return f"{self.prefix}.step.{workflow_id}.{step_id}"

    def dlq(self, source: str) -> str:
        return f"{self.prefix}.dlq.{source}"

    def bucket(self, name: str) -> str:
        """``SESSIONS`` → ``JA_SESSIONS``."""
        return f"{self.upper}_{name}"
