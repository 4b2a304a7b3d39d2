"""The errors of jetagent, one tree (STYLE.md)::

    JetagentError
     ├── ConfigError                 bad settings or configuration files, found at start
     ├── CapabilityError             raised by a capability handler; decides the retry
     │    ├── TransientError         try again (after ``retry_after`` seconds, if given)
     │    │    └── RateLimitedError  the provider said "slow down": retried, not a failure
     │    └── PermanentError         retrying cannot help: the step fails at once
     ├── RequestRejectedError        the platform refused a request (reasons attached)
     └── WorkflowFailedError         ``Client.result()`` of a terminated workflow

A capability raises ``TransientError(retry_after=...)`` or ``PermanentError(...)``; the
worker runtime alone turns them into ``nak(delay)``, a failed ``StepResult`` or a dead
letter. Errors from dependencies (nats-py, httpx) are translated where they happen.
"""

from __future__ import annotations

from typing import Any

from .llm import Usage

__all__ = [
    "CapabilityError",
    "ConfigError",
    "JetagentError",
    "PermanentError",
    "RateLimitedError",
    "RequestRejectedError",
    "TransientError",
    "WorkflowFailedError",
]


class JetagentError(Exception):
    """Base class of every error jetagent raises on purpose."""


class ConfigError(JetagentError):
    """Settings or a configuration file are invalid; the message says which and why."""


class CapabilityError(JetagentError):
    """A capability could not complete a step.

    ``usage`` is what a provider billed for the failed attempt (recorded on the step, so
    a failed call's cost is never lost); ``details`` is extra structured context.
    """

    def __init__(
        self,
        message: str,
        *,
        usage: Usage | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage
        self.details = details or {}


class TransientError(CapabilityError):
    """A failure that may pass: the step is retried, after ``retry_after`` if given."""

    counts_as_failure = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        usage: Usage | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, usage=usage, details=details)
        self.retry_after = retry_after


class RateLimitedError(TransientError):
    """The provider asked to slow down (HTTP 429): retried after ``retry_after``, and not
    counted against the step's attempts or the provider's circuit breaker."""

    counts_as_failure = False


class PermanentError(CapabilityError):
    """A failure that retrying cannot fix (bad input, unknown tool, refused request)."""


class RequestRejectedError(JetagentError):
    """A request was rejected; ``reasons`` lists every problem found."""

    def __init__(self, request_id: str, reasons: list[str]) -> None:
        super().__init__(f"request {request_id} was rejected: " + "; ".join(reasons))
        self.request_id = request_id
        self.reasons = reasons


class WorkflowFailedError(JetagentError):
    """The workflow ended without a final answer (terminated or cancelled)."""

    def __init__(
        self, workflow_id: str, status: str, reason: str, partial_output: str = ""
    ) -> None:
        super().__init__(f"workflow {workflow_id} {status}: {reason}")
        self.workflow_id = workflow_id
        self.status = status
        self.reason = reason
        self.partial_output = partial_output
