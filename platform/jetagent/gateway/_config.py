"""The gateway's settings (``JETAGENT_GATEWAY_*``) and its bearer-token → tenant map."""

from __future__ import annotations

import hmac
import re
import tomllib
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jetagent.errors import ConfigError

__all__ = ["GatewaySettings", "TokenMap"]

_TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class GatewaySettings(BaseSettings):
    """Settings of ``jetagent gateway``. Each field reads ``JETAGENT_GATEWAY_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="JETAGENT_GATEWAY_", extra="ignore", frozen=True)

    addr: str = Field("127.0.0.1", description="Address the HTTP server listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Its port (0: any free port).")
    tokens: str = Field(
        "",
        description="Bearer tokens and their tenants, 'token=tenant,...' (or use tokens_file).",
    )
    tokens_file: Path | None = Field(
        None, description="A TOML file with a [tokens] table: token = tenant."
    )
    max_body_bytes: int = Field(
        256 * 1024, ge=1024, description="Largest request body; larger is a 413."
    )
    accept_wait_s: float = Field(
        3.0,
        ge=0,
        le=60,
        description="How long a read waits for a just-accepted workflow's first event.",
    )
    page_size: int = Field(50, ge=1, le=1000, description="Workflows per page when unasked.")

    @field_validator("tokens")
    @classmethod
    def _pairs(cls, value: str) -> str:
        TokenMap.parse(value)  # fails at start, not on the first request
        return value

    def token_map(self) -> TokenMap:
        pairs = TokenMap.parse(self.tokens)
        if self.tokens_file is not None:
            try:
                table = tomllib.loads(self.tokens_file.read_text()).get("tokens", {})
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"JETAGENT_GATEWAY_TOKENS_FILE: {exc}") from exc
            for token, tenant in table.items():
                pairs.update(TokenMap.parse(f"{token}={tenant}"))
        return TokenMap(pairs)


class TokenMap:
    """Which tenant a bearer token speaks for. Compared in constant time."""

    def __init__(self, pairs: dict[str, str]) -> None:
        self._pairs = [(token.encode(), tenant) for token, tenant in pairs.items()]

    @staticmethod
    def parse(text: str) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            token, sep, tenant = item.partition("=")
            token, tenant = token.strip(), tenant.strip()
            if not sep or len(token) < 8 or not _TENANT.match(tenant):
                raise ConfigError(
                    "gateway tokens are 'token=tenant' pairs; a token has at least 8 "
                    "characters and a tenant is letters, digits, '-' or '_'"
                )
            pairs[token] = tenant
        return pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def tenant(self, token: str) -> str | None:
        given = token.encode()
        found = None
        for known, tenant in self._pairs:  # every pair compared: no early exit to time
            if hmac.compare_digest(known, given):
                found = tenant
        return found
