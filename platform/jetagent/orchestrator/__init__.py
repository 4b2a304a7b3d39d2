"""The orchestrator: the process application that decides every workflow transition.

``Orchestrator`` (in ``_service``) follows requests, step results and due timers and
records what the pure ``jetagent.workflow.decide`` says; ``inputs`` turns a message into
the input decided on (for the orchestrator and for replay alike); ``journal`` loads and
appends a workflow's events; ``timers`` arms durable deadlines; ``replay`` re-runs a
history.
"""

from jetagent.orchestrator._service import Orchestrator as Orchestrator

__all__ = ["Orchestrator"]
