"""The Workflow aggregate: pure ``decide`` and ``evolve`` over the events in ``jetagent.events``.

Nothing here does I/O, reads a clock or draws random numbers: everything a decision
needs arrives in its input or in the static :class:`DecideContext`, so any history
replays to the same state and the same decisions (``jetagent replay --verify``).
"""

# ToolInfo lives below both the worker's registry and this core; re-exported for the
# core's users (DecideContext.tools holds them).
from jetagent.tool_info import ToolInfo

from ._decide import decide
from ._inputs import (
    Admit,
    Begin,
    Cancel,
    DecideContext,
    FoldResult,
    Hold,
    Input,
    RateLimited,
    Signal,
    Tick,
)
from ._recorded import ADDED_STEP_INPUTS, as_recorded
from ._state import (
    Phase,
    StepView,
    WorkflowState,
    evolve,
    fold,
)

__all__ = [
    "ADDED_STEP_INPUTS",
    "Admit",
    "Begin",
    "Cancel",
    "DecideContext",
    "FoldResult",
    "Hold",
    "Input",
    "Phase",
    "RateLimited",
    "Signal",
    "StepView",
    "Tick",
    "ToolInfo",
    "WorkflowState",
    "as_recorded",
    "decide",
    "evolve",
    "fold",
]
