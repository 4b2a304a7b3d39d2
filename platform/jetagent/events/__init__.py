"""Every event jetagent writes, as frozen msgspec Structs (JSON, tagged by ``type``).

A written event is a contract: its shape changes only with a new schema version ``v``
and an upcaster from the old one (``UPCASTERS``), so old streams stay readable.

- Workflow aggregate events (``JA_WORKFLOWS``, ``<prefix>.wf.<workflow_id>.<Type>[...]``):
  Started, StepScheduled, StepCompleted, StepFailed, ApprovalRequested, ApprovalResolved,
  Finalized, Terminated, Cancelled, and RequestRejected for a request that never started;
  InputDeferred (a cancel or signal that arrived before its workflow started, kept until it
  starts) and InputRejected (such inputs answered: the workflow did not start in time);
  Held (a request over its tenant's concurrency quota, waiting for a slot) and Throttled
  (steps waiting for the tenant's tokens per minute), each with the ``QuotaUse`` behind it.
- ``StepResult`` (``JA_STEPS``): what a capability worker produced for one step, with the
  usage and cost of every provider call it made (recorded there and nowhere else).
- ``CancelRequested`` and ``SignalSent`` (``JA_REQUESTS``), next to the requests.
"""

from ._codec import (
    CURRENT_VERSIONS,
    UPCASTERS,
    decode_event,
    decode_events,
    decode_step_result,
    encode,
    encode_events,
    event_type,
    group_for_messages,
    subject_tail,
)
from ._types import (
    ApprovalRequested,
    ApprovalResolved,
    CallRecord,
    Cancelled,
    CancelRequested,
    Finalized,
    Held,
    InputDeferred,
    InputRejected,
    Money,
    QuotaUse,
    RequestRejected,
    RoutingDecision,
    SignalSent,
    Spend,
    Started,
    StepCompleted,
    StepError,
    StepFailed,
    StepResult,
    StepScheduled,
    Terminated,
    Throttled,
    WorkflowEvent,
)

__all__ = [
    "CURRENT_VERSIONS",
    "UPCASTERS",
    "ApprovalRequested",
    "ApprovalResolved",
    "CallRecord",
    "CancelRequested",
    "Cancelled",
    "Finalized",
    "Held",
    "InputDeferred",
    "InputRejected",
    "Money",
    "QuotaUse",
    "RequestRejected",
    "RoutingDecision",
    "SignalSent",
    "Spend",
    "Started",
    "StepCompleted",
    "StepError",
    "StepFailed",
    "StepResult",
    "StepScheduled",
    "Terminated",
    "Throttled",
    "WorkflowEvent",
    "decode_event",
    "decode_events",
    "decode_step_result",
    "encode",
    "encode_events",
    "event_type",
    "group_for_messages",
    "subject_tail",
]
