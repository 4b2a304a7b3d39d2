"""The public request contract: what a service publishes to start a workflow.

A request is JSON on ``<prefix>.request.<tenant>`` with ``Nats-Msg-Id`` set to its
``request_id``; ``schemas/workflow-request.schema.json`` describes it for any language.
Validation collects *every* problem, so a rejected sender learns all of them at once.

The seed article's own shape is accepted as it is (README "The request contract"): a
string ``session_context`` names the session it continues, an omitted ``tenant`` is the
subject's (or the configured default), ``capability_limits`` is a plain mapping.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Collection, Mapping
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

__all__ = [
    "ID_PATTERN",
    "CapabilityLimits",
    "ContextMessage",
    "ModelPreferences",
    "OutputFormat",
    "SessionContext",
    "Status",
    "WorkflowRequest",
    "rejection_id",
    "session_id_of",
    "validate_request",
]

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""Request ids and tenants become subject tokens: letters, digits, ``-`` and ``_``."""

REJECTION_PREFIX = "rejected-"


def rejection_id(request_id: object, msg_id: str | None) -> str | None:
    """Under which workflow id a rejected request's ``RequestRejected`` is recorded.

    The rule a sender in any language can compute (README "Rejections and dead
    letters"): take the body's ``request_id`` if it is a JSON string, else the
    ``Nats-Msg-Id`` header. A valid id (``ID_PATTERN``) is used as it is; any other
    string becomes ``rejected-`` + the first 32 hex digits of the SHA-256 of its UTF-8
    bytes. ``None``: the message carries no id at all (the caller falls back to the
    stream sequence, which the sender has in its PubAck).
    """
    chosen = request_id if isinstance(request_id, str) else msg_id
    if chosen is None:
        return None
    if re.fullmatch(ID_PATTERN, chosen):
        return chosen
    digest = hashlib.sha256(chosen.encode("utf-8", "surrogatepass")).hexdigest()
    return REJECTION_PREFIX + digest[:32]


class Status(StrEnum):
    """Where a workflow is in its life (the seed article's states, plus cancelled)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    WAITING_APPROVAL = "waiting_approval"
    FINALIZED = "finalized"
    TERMINATED = "terminated"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        return self in (Status.FINALIZED, Status.TERMINATED, Status.CANCELLED, Status.REJECTED)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CapabilityLimits(_Strict):
    """Budgets the orchestrator enforces from folded usage, race-free."""

    max_iterations: int = Field(12, ge=1, le=100, description="Reasoning calls at most.")
    token_cap: int = Field(16384, ge=16, le=10_000_000, description="Tokens at most, in+out.")
    cost_cap_usd: Decimal | None = Field(None, gt=0, le=100_000, description="USD at most.")
    deadline_s: float | None = Field(
        None, gt=0, le=7 * 86400, description="Seconds from start until the workflow ends."
    )


class ModelPreferences(_Strict):
    """Which models to use, in order of preference (names from the model catalog)."""

    models: list[str] = Field(
        default_factory=lambda: ["offline-planner"], min_length=1, max_length=8
    )
    max_output_tokens: int = Field(512, ge=1, le=65536, description="Per reasoning call.")
    temperature: float | None = Field(None, ge=0, le=2)


class ContextMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=200_000)


class SessionContext(_Strict):
    """What the agent knows before the instruction: earlier turns and facts."""

    session_id: str | None = Field(None, pattern=ID_PATTERN)
    messages: list[ContextMessage] = Field(default_factory=list, max_length=500)
    facts: dict[str, str] = Field(default_factory=dict, max_length=200)


def session_id_of(text: str) -> str:
    """The session a string ``session_context`` names: the string itself when it is a valid
    id, else a digest of it (same string, same session; it becomes a subject token)."""
    if re.fullmatch(ID_PATTERN, text):
        return text
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _session_from_string(value: object) -> object:
    # The article sends the session as a string; an empty one is no session at all.
    if isinstance(value, str):
        if len(value) > 4096:
            raise ValueError("a session_context string is at most 4096 characters")
        return {"session_id": session_id_of(value)} if value else {}
    return value


SessionContextField = Annotated[
    SessionContext,
    BeforeValidator(_session_from_string, json_schema_input_type=SessionContext | str),
]
"""``SessionContext``, or (the article's form) a string naming the session it continues."""


class OutputFormat(_Strict):
    """The form of the final answer."""

    type: Literal["text", "json"] = "text"
    json_schema: dict[str, Any] | None = Field(
        None, description="For type=json: the JSON Schema the answer must satisfy."
    )
    summarize: bool = Field(False, description="Add a summarisation step before finalizing.")


def _tenant_optional(schema: dict[str, Any]) -> None:
    # The article's requests carry no tenant: the subject (or the default) supplies it.
    schema["required"] = [name for name in schema.get("required", []) if name != "tenant"]


class WorkflowRequest(_Strict):
    """A request to run an agent workflow. The workflow's id is its ``request_id``."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_tenant_optional)

    request_id: str = Field(default_factory=lambda: str(uuid.uuid4()), pattern=ID_PATTERN)
    tenant: str = Field(
        pattern=ID_PATTERN,
        description="Omitted: the tenant of the subject it is published on (or the default).",
    )
    instruction: str = Field(min_length=1, max_length=100_000)
    session_context: SessionContextField = Field(default_factory=SessionContext)
    capability_limits: CapabilityLimits = Field(default_factory=CapabilityLimits)
    model_preferences: ModelPreferences = Field(default_factory=ModelPreferences)
    allowed_tools: list[str] | None = Field(
        None, max_length=64, description="Tools the agent may call; null means all registered."
    )
    output: OutputFormat = Field(default_factory=OutputFormat)
    metadata: dict[str, str] = Field(default_factory=dict, max_length=32)

    @model_validator(mode="before")
    @classmethod
    def _tenant_from_context(cls, data: Any, info: ValidationInfo) -> Any:
        tenant = (info.context or {}).get("tenant") if info.context else None
        if isinstance(data, dict) and "tenant" not in data and tenant:
            return {**data, "tenant": tenant}
        return data


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "request"
    if error["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    if error["type"] == "missing":
        return f"missing field {where!r}"
    return f"{where}: {error['msg']}"


def validate_request(
    raw: bytes,
    *,
    subject_tenant: str | None,
    tenants: Collection[str] | None,
    tools: Collection[str] | None,
    models: Collection[str],
    max_bytes: int,
    unserved: Mapping[str, str] | None = None,
    default_tenant: str | None = None,
) -> tuple[WorkflowRequest | None, list[str]]:
    """Parse and check a request; return it, or ``None`` and every problem found.

    ``tenants`` / ``tools`` of ``None`` accept any tenant / any tool. ``unserved`` maps
    known tools that no running worker serves (dedicated tools whose pool is not up) to
    the command that would serve them: a request naming one is refused with that command.
    A request without a tenant gets ``subject_tenant``, else ``default_tenant``.
    """
    problems: list[str] = []
    if len(raw) > max_bytes:
        return None, [f"the request is {len(raw)} bytes; the limit is {max_bytes} bytes"]
    from jetagent._depth import MAX_DEPTH, nests_deeper_than

    if nests_deeper_than(raw, MAX_DEPTH):
        return None, [f"the request is nested more than {MAX_DEPTH} levels deep"]
    try:
        request = WorkflowRequest.model_validate_json(
            raw, context={"tenant": subject_tenant or default_tenant}
        )
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            problems = [f"the body is not valid JSON: {exc.errors()[0]['msg']}"]
        return None, problems
    if subject_tenant is not None and subject_tenant != request.tenant:
        problems.append(
            f"tenant {request.tenant!r} does not match the subject's tenant {subject_tenant!r}"
        )
    if tenants is not None and request.tenant not in tenants:
        problems.append(f"unknown tenant {request.tenant!r}")
    for model in request.model_preferences.models:
        if model not in models:
            problems.append(f"unknown model {model!r} (known: {', '.join(sorted(models))})")
    if tools is not None and request.allowed_tools:
        for tool in request.allowed_tools:
            if tool not in tools:
                problems.append(
                    f"unknown tool {tool!r}: no running worker has announced it "
                    f"(registered: {', '.join(sorted(tools)) or 'none'}); start the worker "
                    "whose JETAGENT_TOOLS provides it"
                )
            elif unserved and tool in unserved:
                problems.append(
                    f"tool {tool!r} is known but no running worker serves it: "
                    f"start `{unserved[tool]}`"
                )
    if request.output.type == "json" and request.output.json_schema is None:
        problems.append("output.json_schema is required when output.type is 'json'")
    if request.output.json_schema is not None:
        from jetagent.output_schema import output_schema_problems

        problems.extend(output_schema_problems(request.output.json_schema))
    return (None if problems else request), problems
