"""A dedicated tool for the tests (``JETAGENT_TOOLS=tests.support.dedicated_tools:TOOLS``):
served only by ``jetagent worker tools --only heavy``."""

from __future__ import annotations

from jetagent import tool


@tool(description="Double a number on a pool of its own.", dedicated=True)
def heavy(x: int) -> int:
    return 2 * x


TOOLS = [heavy]
