"""Every stream, subject, consumer and bucket name of jetagent, built and parsed here.

All names hang off one prefix (``JETAGENT_PREFIX``, default ``ja``; streams and buckets
use it upper-cased), laid out as ``docs/ARCHITECTURE.md`` ("Streams and subjects") shows::

    <p>.request.<tenant>                          JA_REQUESTS  a workflow request
    <p>.cancel.<workflow_id>                      JA_REQUESTS  a cancel
    <p>.signal.<workflow_id>.<name>               JA_REQUESTS  a signal (approval, ...)
    <p>.wf.<workflow_id>.<Event>[.<cap>[.<tool>]] JA_WORKFLOWS the Workflow's events
    <p>.step.<capability>.<workflow_id>.<step_id> JA_STEPS     a step's one result
    <p>.timer.at|due.<workflow_id>.<kind>         JA_TIMERS    a durable timer
    <p>.call.<workflow_id>.<step_id>.<delivery>   JA_CALLS     a run's provider calls
    <p>.dlq.<source>                              JA_DLQ       a dead letter
    <p>.tokens.<workflow_id>.<step_id>            (no stream)  live token deltas

``Names`` builds them; ``parse`` reads a subject back into a typed value (``None`` for a
subject that is not on this layout), so no other module splits a subject on dots. Ids
placed in subjects are tokens (``jetagent.contract.ID_PATTERN``); the platform checks
them where they enter (``jetagent.decoding``, the client).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "PLACEHOLDER",
    "TEMPLATE",
    "CallSubject",
    "CancelSubject",
    "DeadLetterSubject",
    "Names",
    "RequestSubject",
    "SignalSubject",
    "StepResultSubject",
    "Subject",
    "TimerSubject",
    "TokenSubject",
    "WorkflowSubject",
    "event_tail",
    "family",
    "parse",
]


@dataclass(frozen=True)
class Names:
    """Stream, subject, consumer and bucket names under one prefix."""

    prefix: str = "ja"

    @property
    def upper(self) -> str:
        """The prefix of stream and bucket names: ``ja`` → ``JA``."""
        return self.prefix.upper().replace("-", "_")

    def fill(self, template: str) -> str:
        """A name written with ``{p}`` / ``{P}`` (``TEMPLATE``) under this prefix."""
        return template.replace("{P}", self.upper).replace(PLACEHOLDER, self.prefix)

    def parse(self, subject: str) -> Subject | None:
        """``parse(subject, prefix=self.prefix)``."""
        return parse(subject, prefix=self.prefix)

    # ------------------------------------------------------------------ streams

    @property
    def requests_stream(self) -> str:
        """Requests, cancels and signals from client services."""
        return f"{self.upper}_REQUESTS"

    @property
    def workflows_stream(self) -> str:
        """The Workflow aggregates' events (the orchestrator's record)."""
        return f"{self.upper}_WORKFLOWS"

    @property
    def steps_stream(self) -> str:
        """Step results, one per step."""
        return f"{self.upper}_STEPS"

    @property
    def dlq_stream(self) -> str:
        """Dead letters: messages that could not be processed, with the reason."""
        return f"{self.upper}_DLQ"

    @property
    def timers_stream(self) -> str:
        """The orchestrator's durable timers."""
        return f"{self.upper}_TIMERS"

    @property
    def calls_stream(self) -> str:
        """The call journal: every provider call of every run of a step."""
        return f"{self.upper}_CALLS"

    def bucket(self, name: str) -> str:
        """``SESSIONS`` → ``JA_SESSIONS``."""
        return f"{self.upper}_{name}"

    # ------------------------------------------------------------------ requests

    def request(self, tenant: str) -> str:
        """Where a tenant's workflow requests are published."""
        return f"{self.prefix}.request.{tenant}"

    def cancel(self, workflow_id: str) -> str:
        """Where a workflow's cancel is published."""
        return f"{self.prefix}.cancel.{workflow_id}"

    def signal(self, workflow_id: str, name: str) -> str:
        """Where a named signal to a workflow is published."""
        return f"{self.prefix}.signal.{workflow_id}.{name}"

    # ------------------------------------------------------------------ workflows

    @property
    def workflow_root(self) -> str:
        """The root of every workflow's subject tree (``<p>.wf``)."""
        return f"{self.prefix}.wf"

    @property
    def all_workflows(self) -> str:
        """Every event of every workflow."""
        return f"{self.prefix}.wf.>"

    def workflow(self, workflow_id: str) -> str:
        """Every event of one workflow (and its rejection): one subscription."""
        return f"{self.prefix}.wf.{workflow_id}.>"

    def workflow_event(
        self, workflow_id: str, event: str, capability: str | None = None, tool: str | None = None
    ) -> str:
        """The subject of one message of a workflow: its (last) event's name, and for a
        ``StepScheduled`` the capability and tool, so that workers filter server-side."""
        return f"{self.prefix}.wf.{workflow_id}.{event_tail(event, capability, tool)}"

    def step_scheduled(self, capability: str) -> list[str]:
        """A capability's steps (with or without a tool): its worker's filter subjects."""
        return [
            f"{self.prefix}.wf.*.StepScheduled.{capability}",
            f"{self.prefix}.wf.*.StepScheduled.{capability}.*",
        ]

    def step_scheduled_tool(self, capability: str, tool: str) -> str:
        """The steps of one tool of a capability (a pool serving some tools only)."""
        return f"{self.prefix}.wf.*.StepScheduled.{capability}.{tool}"

    # ------------------------------------------------------------------ steps

    @property
    def all_step_results(self) -> str:
        """Every step result."""
        return f"{self.prefix}.step.>"

    def step_result(self, capability: str, workflow_id: str, step_id: str) -> str:
        """Where a step's one result goes: the capability first, so that NATS permissions
        confine each worker's user to its own capability's results."""
        return f"{self.prefix}.step.{capability}.{workflow_id}.{step_id}"

    def step_results(self, workflow_id: str) -> str:
        """Every step result of one workflow, of any capability."""
        return f"{self.prefix}.step.*.{workflow_id}.>"

    def step_calls(self, workflow_id: str, step_id: str, delivery: int | str) -> str:
        """The call journal of one run (delivery) of a step; ``*`` for every run."""
        return f"{self.prefix}.call.{workflow_id}.{step_id}.{delivery}"

    def tokens(self, workflow_id: str, step_id: str = "*") -> str:
        """Live token deltas of a step (``*``: of every step of the workflow)."""
        return f"{self.prefix}.tokens.{workflow_id}.{step_id}"

    # ------------------------------------------------------------------ timers, DLQ

    def timer_schedule(self, workflow_id: str, kind: str) -> str:
        """Where a workflow's timer of one kind is held (one schedule per subject)."""
        return f"{self.prefix}.timer.at.{workflow_id}.{kind}"

    def timer_due(self, workflow_id: str, kind: str) -> str:
        """Where nats-server puts the timer's message when it is due."""
        return f"{self.prefix}.timer.due.{workflow_id}.{kind}"

    @property
    def all_dead_letters(self) -> str:
        """Every dead letter, of any source."""
        return f"{self.prefix}.dlq.>"

    def dlq(self, source: str) -> str:
        """Where a source (a service, a capability) puts its dead letters."""
        return f"{self.prefix}.dlq.{source}"


PLACEHOLDER = "{p}"
"""The prefix in a name written before the prefix is known (stream definitions, a
capability's filter subjects); ``Names.fill`` replaces it."""

TEMPLATE = Names(PLACEHOLDER)
"""Names with the placeholder prefix (``{p}.wf.…``, ``{P}_WORKFLOWS``)."""


def event_tail(event: str, capability: str | None = None, tool: str | None = None) -> str:
    """The subject tokens after ``<p>.wf.<workflow_id>.`` for an event's message."""
    if capability is None:
        return event
    return f"{event}.{capability}" + (f".{tool}" if tool else "")


# ---------------------------------------------------------------------- parsing


@dataclass(frozen=True, slots=True)
class RequestSubject:
    """``<p>.request.<tenant>``: the tenant is the third token (any later ones are ignored)."""

    tenant: str


@dataclass(frozen=True, slots=True)
class CancelSubject:
    """``<p>.cancel.<workflow_id>``."""

    workflow_id: str


@dataclass(frozen=True, slots=True)
class SignalSubject:
    """``<p>.signal.<workflow_id>.<name>``."""

    workflow_id: str
    name: str


@dataclass(frozen=True, slots=True)
class WorkflowSubject:
    """``<p>.wf.<workflow_id>.<event>[.<capability>[.<tool>]]``."""

    workflow_id: str
    event: str
    capability: str | None = None
    tool: str | None = None


@dataclass(frozen=True, slots=True)
class StepResultSubject:
    """``<p>.step.<capability>.<workflow_id>.<step_id>``; ``capability`` is None for the
    layout before capability subjects (``<p>.step.<workflow_id>.<step_id>``), which only
    old histories hold."""

    capability: str | None
    workflow_id: str
    step_id: str


@dataclass(frozen=True, slots=True)
class TimerSubject:
    """``<p>.timer.at.<workflow_id>.<kind>`` (the schedule) or ``….due.…`` (fired)."""

    workflow_id: str
    kind: str
    due: bool


@dataclass(frozen=True, slots=True)
class TokenSubject:
    """``<p>.tokens.<workflow_id>.<step_id>``."""

    workflow_id: str
    step_id: str


@dataclass(frozen=True, slots=True)
class CallSubject:
    """``<p>.call.<workflow_id>.<step_id>.<delivery>``."""

    workflow_id: str
    step_id: str
    delivery: str


@dataclass(frozen=True, slots=True)
class DeadLetterSubject:
    """``<p>.dlq.<source>``: the source is the last token."""

    source: str


Subject = (
    RequestSubject
    | CancelSubject
    | SignalSubject
    | WorkflowSubject
    | StepResultSubject
    | TimerSubject
    | TokenSubject
    | CallSubject
    | DeadLetterSubject
)


def family(subject: str) -> str:
    """The token after the prefix (``request``, ``wf``, ``step``, ``timer`` …), or ``""``."""
    parts = subject.split(".", 2)
    return parts[1] if len(parts) > 1 else ""


def parse(subject: str, *, prefix: str) -> Subject | None:
    """What ``subject`` names, or None if it is not a jetagent subject under ``prefix``."""
    tokens = subject.split(".")
    if len(tokens) < 3 or tokens[0] != prefix or not all(tokens):
        return None
    match tokens[1:]:
        case ["request", tenant, *_]:
            return RequestSubject(tenant)
        case ["cancel", workflow_id]:
            return CancelSubject(workflow_id)
        case ["signal", workflow_id, name]:
            return SignalSubject(workflow_id, name)
        case ["wf", workflow_id, event]:
            return WorkflowSubject(workflow_id, event)
        case ["wf", workflow_id, event, capability]:
            return WorkflowSubject(workflow_id, event, capability)
        case ["wf", workflow_id, event, capability, tool]:
            return WorkflowSubject(workflow_id, event, capability, tool)
        case ["step", capability, workflow_id, step_id]:
            return StepResultSubject(capability, workflow_id, step_id)
        case ["step", workflow_id, step_id]:
            return StepResultSubject(None, workflow_id, step_id)
        case ["timer", "at" | "due" as when, workflow_id, kind]:
            return TimerSubject(workflow_id, kind, due=when == "due")
        case ["tokens", workflow_id, step_id]:
            return TokenSubject(workflow_id, step_id)
        case ["call", workflow_id, step_id, delivery]:
            return CallSubject(workflow_id, step_id, delivery)
        case ["dlq", *_, source]:
            return DeadLetterSubject(source)
    return None
