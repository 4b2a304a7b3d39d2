"""The worker: capability handlers run on their own durable consumers.

Public: ``capability`` declares a handler, ``StepContext`` is what it sees,
``StepOutput`` what it returns, ``CapabilitySpec`` the registration; ``Worker`` serves
specs until stopped; ``WorkerMetrics`` are its own Prometheus metrics.
"""

from jetagent.worker._context import CapabilitySpec as CapabilitySpec
from jetagent.worker._context import Handler as Handler
from jetagent.worker._context import StepContext as StepContext
from jetagent.worker._context import StepOutput as StepOutput
from jetagent.worker._context import capability as capability
from jetagent.worker._metrics import WorkerMetrics as WorkerMetrics
from jetagent.worker._runtime import Worker as Worker

__all__ = [
    "CapabilitySpec",
    "Handler",
    "StepContext",
    "StepOutput",
    "Worker",
    "WorkerMetrics",
    "capability",
]
