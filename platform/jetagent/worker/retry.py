"""When a step that failed for a transient reason runs again: a retry budget.

A step's retries are bounded three ways: by count (``step_max_deliver`` runs), by time
(``step_retry_budget_s`` from the moment the step was scheduled) and by the workflow's
deadline. A tool may bring its own count and time (``@tool(retry_max_runs=...,
retry_budget_s=...)``, carried in its registration): they replace the global two for
that tool's steps; the deadline bounds them all the same. The delay before the next run
is the error's ``retry_after`` if it gave one, else ``base * 2^(run-1)``, at most
``max_delay_s``. The worker turns a delay into an explicit ``nak(delay)``: the consumer
has no ``backoff`` (a backoff would replace the ack wait, see the README's "Delivery,
retries and recovery").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from jetagent.config import Settings

if TYPE_CHECKING:
    from jetagent.worker.registry import RegisteredTool

__all__ = ["Retry", "RetryPolicy"]


@dataclass(frozen=True, kw_only=True)
class Retry:
    """The decision for one failed run: wait ``delay_s`` and run again, or stop."""

    delay_s: float | None
    """Seconds before the next run; ``None``: do not run again."""
    reason: str = ""
    """Why not, in words a person and a model can read (when ``delay_s`` is None)."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Count, time and deadline bounds on a step's runs."""

    max_runs: int = 5
    """Runs (deliveries) of a step, the first included."""
    base_s: float = 1.0
    """Delay after the first failed run; doubled after each further one."""
    max_delay_s: float = 30.0
    budget_s: float = 300.0
    """No run starts later than this many seconds after the step was scheduled."""
    owner: str = ""
    """Whose budget this is, when not the global one (``tool X``): named in reasons."""

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_runs=settings.step_max_deliver,
            base_s=settings.step_retry_base_s,
            max_delay_s=settings.step_retry_max_delay_s,
            budget_s=settings.step_retry_budget_s,
        )

    def for_tool(self, registered: RegisteredTool) -> RetryPolicy:
        """This policy with the tool's own count and time, where it sets them."""
        if registered.retry_max_runs is None and registered.retry_budget_s is None:
            return self
        return dataclasses.replace(
            self,
            max_runs=registered.retry_max_runs or self.max_runs,
            budget_s=registered.retry_budget_s or self.budget_s,
            owner=f"tool {registered.spec.name}",
        )

    @property
    def _whose(self) -> str:
        return f"{self.owner}'s" if self.owner else "the step's"

    def delay(self, run: int) -> float:
        """The planned delay after failed run number ``run`` (1-based)."""
        return float(min(self.base_s * 2.0 ** max(run - 1, 0), self.max_delay_s))

    def next(
        self,
        *,
        run: int,
        now: datetime,
        scheduled_at: datetime,
        deadline_at: datetime | None,
        retry_after: float | None = None,
    ) -> Retry:
        """Whether (and when) run ``run + 1`` happens, after run ``run`` failed."""
        if run >= self.max_runs:
            whose = f", {self._whose} retry budget" if self.owner else ""
            return Retry(
                delay_s=None, reason=f"failed {run} times (at most {self.max_runs} runs{whose})"
            )
        wait = self.delay(run) if retry_after is None else max(float(retry_after), 0.0)
        start = now + timedelta(seconds=wait)
        budget_end = scheduled_at + timedelta(seconds=self.budget_s)
        if start > budget_end:
            return Retry(
                delay_s=None,
                reason=f"the next run (in {wait:.1f} s) would start after {self._whose} "
                f"{self.budget_s:g} s retry budget",
            )
        if deadline_at is not None and start >= deadline_at:
            left = max((deadline_at - now).total_seconds(), 0.0)
            return Retry(
                delay_s=None,
                reason=f"the next run (in {wait:.1f} s) would start after the workflow's "
                f"deadline ({left:.1f} s left)",
            )
        return Retry(delay_s=wait)
