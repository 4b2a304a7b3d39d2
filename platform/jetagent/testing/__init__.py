"""Helpers for testing code built on jetagent, like ``temporalio.testing``.

:func:`step_context` builds a ``StepContext`` for unit-testing a capability's handler.
"""

from jetagent.testing._context import step_context as step_context

__all__ = ["step_context"]
