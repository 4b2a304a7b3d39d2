"""The projection's fold: each stored message into the session views and the metric totals.

Synchronous and in memory — the projection service's hot loop — except for one thing it
cannot do alone: a view of a workflow that started before this service did is in the
``JA_SESSIONS`` bucket, so :meth:`ProjectionFold.apply_now` names the view to load and
the service loads it and applies the message again. Whatever a stored message holds, it
does not stop the fold: a message that cannot be read, or a result that cannot be
trusted, is skipped, counted and dead-lettered (``projections/poison.py``).
"""

from __future__ import annotations

from collections import OrderedDict

from jetagent.events import Held, Started, StepResult, decode_events, decode_step_result
from jetagent.sessions import HeldResult, SessionView, apply_workflow_message, fold_step_result
from jetagent.subjects import DeadLetterSubject, Names
from projections.labels import LabelPolicy
from projections.poison import PoisonMessage, PoisonReporter, checked_result, workflow_of
from projections.totals import MetricsState
from projections.trust import Verdict, judge, judge_scheduled

__all__ = ["ProjectionFold"]

_FINAL_VIEWS_KEPT = 20_000


class ProjectionFold:
    """Session views (the recent ones in memory), metric totals, and the position applied
    in each stream."""

    def __init__(self, names: Names, labels: LabelPolicy, poison: PoisonReporter) -> None:
        """``labels``: which label values the totals keep; ``poison``: where the messages
        that cannot be folded are reported."""
        self.names = names
        self.labels = labels
        self.poison = poison
        self.metrics = MetricsState()
        self.positions: dict[str, int] = {}
        self.views: OrderedDict[str, SessionView] = OrderedDict()
        self._workflows_stream = names.workflows_stream
        self._steps_stream = names.steps_stream
        self._dirty: set[str] = set()
        self._since_checkpoint = 0
        self._rebuilding = False
        self._rebuilt: set[str] = set()
        self._stored_until = 1 << 63  # a JA_WORKFLOWS sequence; set when processing starts

    def _view_now(self, workflow_id: str, *, new: bool = False) -> SessionView | None:
        """The view in memory, a new one, or None if it must be read from the bucket."""
        view = self.views.get(workflow_id)
        if view is not None:
            if not self._rebuilding:  # recency matters for eviction only when live
                self.views.move_to_end(workflow_id)
            return view
        # While rebuilding, the stored view is stale unless this rebuild wrote it; a
        # workflow that started after this service did has no stored view to read.
        if new or (self._rebuilding and workflow_id not in self._rebuilt):
            view = self.views[workflow_id] = SessionView(workflow_id=workflow_id)
            self._evict()
            return view
        return None

    def _evict(self) -> None:
        # Running workflows stay; finished ones are kept up to a bound, oldest out first
        # (only once flushed, so nothing unsaved is dropped).
        if len(self.views) <= _FINAL_VIEWS_KEPT:
            return
        for workflow_id in list(self.views)[: len(self.views) - _FINAL_VIEWS_KEPT]:
            view = self.views[workflow_id]
            if view.status.is_final and workflow_id not in self._dirty:
                del self.views[workflow_id]

    def apply_now(self, stream: str, seq: int, subject: str, data: bytes) -> str | None:
        """Apply without waiting; or the id of a view that must be loaded first."""
        positions = self.positions
        if seq <= positions.get(stream, 0):
            return None
        try:
            if stream == self._workflows_stream:
                events = decode_events(data)
                workflow_id = workflow_of(events)
                # A workflow's first message makes a new view: its Started, unless it was
                # held first (then its Held).
                first = events[0]
                new = seq > self._stored_until and (
                    isinstance(first, Held)
                    or (isinstance(first, Started) and first.held_since is None)
                )
                view = self._view_now(workflow_id, new=new)
                if view is None:
                    return workflow_id
                if apply_workflow_message(view, events, seq):
                    self._dirty.add(workflow_id)
                    if view.held:
                        self._release_held(view)
                for event in events:
                    self.metrics.apply_workflow_event(event, self.labels)
            elif stream == self._steps_stream:
                result = checked_result(decode_step_result(data))
                view = self._view_now(result.workflow_id)
                if view is None:
                    return result.workflow_id
                self._take_result(view, seq, subject, result)
            else:
                where = self.names.parse(subject)
                source = where.source if isinstance(where, DeadLetterSubject) else subject
                self.metrics.apply_dead_letter(source, self.labels)
        except Exception as exc:
            # Whatever a stored message holds, it must not stop the projection: it is
            # skipped, counted and dead-lettered (projections/poison.py). The checks run
            # before a fold changes anything; a fold that fails half-way (a bug, not bad
            # input) leaves its view unsaved until the next change.
            reason = str(exc) if isinstance(exc, PoisonMessage) else _describe(exc)
            self.metrics.apply_poison(stream)
            self.poison.found(stream, seq, subject, reason)
        positions[stream] = seq
        self._since_checkpoint += 1
        return None

    def _take_result(self, view: SessionView, seq: int, subject: str, result: StepResult) -> None:
        """Fold a trusted result into its view and the totals; hold or skip the others."""
        seen = seq <= view.last_step_seq  # the view was saved after this result
        if seen and any(held.seq == seq for held in view.held):
            return
        verdict, reason = judge(view, subject, result, prefix=self.names.prefix)
        if not seen:
            view.last_step_seq = seq
            self._dirty.add(view.workflow_id)
        if verdict is Verdict.WAIT:
            if not seen:
                view.held.append(HeldResult(seq=seq, subject=subject, result=result))
        elif verdict is Verdict.UNTRUSTED:
            self._untrusted(seq, subject, reason)
        else:
            if not seen:
                fold_step_result(view, result)
            self.metrics.apply_step_result(result, self.labels)

    def _release_held(self, view: SessionView) -> None:
        """Judge again the results that waited for their step to be scheduled."""
        waiting = []
        for held in view.held:
            verdict, reason = judge_scheduled(view, held.result)
            if verdict is Verdict.WAIT:
                waiting.append(held)
            elif verdict is Verdict.UNTRUSTED:
                self._untrusted(held.seq, held.subject, reason)
            else:
                fold_step_result(view, held.result)
                self.metrics.apply_step_result(held.result, self.labels)
        view.held = waiting

    def _untrusted(self, seq: int, subject: str, reason: str) -> None:
        self.metrics.apply_poison(self._steps_stream)
        self.poison.found(self._steps_stream, seq, subject, reason, kind="untrusted")


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
