"""The errors of jetagent, one tree (docs/ARCHITECTURE.md §6): everything the client,
the CLI and the services raise on purpose is a ``JetagentError``::

    JetagentError
     ├── ConfigError                 bad settings or configuration files, found at start
     ├── InvalidRequestError         a request that fails validation before it is sent
     ├── UnavailableError            NATS unreachable, or no answer in time
     │    └── JetStreamUnavailableError  (jetagent.jetstream)
     │         └── StoreUnavailableError  (jetagent.store; also eventsourcing's OperationalError)
     ├── NotProvisionedError         a stream or bucket the platform needs does not exist
     ├── WorkflowNotFoundError       no workflow has this id (or an id starting with it)
 ├── AmbiguousWorkflowIdError    an id prefix that more than one workflow's id starts with
     ├── WorkflowTimeoutError        ``Client.result()`` waited ``timeout`` (also TimeoutError)
     ├── CapabilityError             raised by a capability handler; decides the retry
     │    ├── TransientError         try again (after ``retry_after`` seconds, if given)
     │    │    └── RateLimitedError  the provider said "slow down": retried, not a failure
     │    └── PermanentError         retrying cannot help: the step fails at once
     ├── RequestRejectedError        the platform refused a request (reasons attached)
     ├── WorkflowFailedError         ``Client.result()`` of a terminated workflow
     ├── (jetagent.jetstream)        StreamConfigError, WriteTooLargeError, ConcurrencyConflict
     ├── (jetagent.store)            StoreConflictError, and StreamConfigError and
     │                               WriteTooLargeError as jetstream's (each also one of
     │                               eventsourcing's PEP 249 names)
     ├── (jetagent.embedded)         EmbeddedServerError and its kinds (also RuntimeError),
     │                               DataDirLockedError
     └── (projections.checkpoints)   CheckpointError (also RuntimeError)

A capability raises ``TransientError(retry_after=...)`` or ``PermanentError(...)``; the
worker runtime alone turns them into ``nak(delay)``, a failed ``StepResult`` or a dead
letter. Errors from dependencies (nats-py, pydantic, httpx) are translated where they
happen: the client's edge (``jetagent.client``), the store, the provider adapters. Where
a library's base class must stay (callers of eventsourcing catch its names), an error
derives from both.
"""

from __future__ import annotations

from typing import Any

from .llm import Usage

__all__ = [
    "AmbiguousWorkflowIdError",
    "CapabilityError",
    "ConfigError",
    "InvalidRequestError",
    "JetagentError",
    "NotProvisionedError",
    "PermanentError",
    "RateLimitedError",
    "RequestRejectedError",
    "TransientError",
    "UnavailableError",
    "WorkflowFailedError",
    "WorkflowNotFoundError",
    "WorkflowTimeoutError",
]


class JetagentError(Exception):
    """Base class of every error jetagent raises on purpose."""


class ConfigError(JetagentError):
    """Settings or a configuration file are invalid; the message says which and why."""


class InvalidRequestError(JetagentError, ValueError):
    """A request (or a command's arguments) fails validation; ``reasons`` lists why.

    Also a ``ValueError``: code that validated requests before this tree existed
    caught that."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("invalid request: " + "; ".join(reasons))
        self.reasons = reasons


class UnavailableError(JetagentError):
    """The NATS server could not be reached, or did not answer in time."""


class NotProvisionedError(JetagentError):
    """A stream or bucket the platform needs is missing (run ``jetagent provision``)."""


class WorkflowNotFoundError(JetagentError, LookupError):
    """No workflow (and no rejected request) has this id."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"no workflow {workflow_id}")
        self.workflow_id = workflow_id


class AmbiguousWorkflowIdError(JetagentError, LookupError):
    """More than one workflow's id starts with ``prefix``; ``candidates`` are their ids
    (sorted, at most :attr:`SHOWN` of them), ``matches`` how many there are."""

    SHOWN = 10

    def __init__(self, prefix: str, candidates: list[str], *, matches: int | None = None) -> None:
        matches = len(candidates) if matches is None else matches
        shown = sorted(candidates)[: self.SHOWN]
        more = f" and {matches - len(shown)} more" if matches > len(shown) else ""
        super().__init__(
            f"workflow id {prefix!r} is ambiguous: {matches} workflows start with it "
            f"({', '.join(shown)}{more}); give more of the id"
        )
        self.prefix = prefix
        self.candidates = shown
        self.matches = matches


class WorkflowTimeoutError(JetagentError, TimeoutError):
    """The workflow did not end within the time waited (it may still end later)."""

    def __init__(self, workflow_id: str, timeout: float | None) -> None:
        super().__init__(f"workflow {workflow_id} did not end within {timeout} s")
        self.workflow_id = workflow_id
        self.timeout = timeout


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
