"""Every subject is built and parsed by ``jetagent.subjects`` (issue 11, item 5):
whatever ``Names`` builds, ``parse`` reads back into the same parts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jetagent.contract import ID_PATTERN
from jetagent.subjects import (
    TEMPLATE,
    CallSubject,
    CancelSubject,
    DeadLetterSubject,
    Names,
    RequestSubject,
    SignalSubject,
    StepResultSubject,
    TimerSubject,
    TokenSubject,
    WorkflowSubject,
    family,
    parse,
)

ids = st.from_regex(ID_PATTERN, fullmatch=True)
prefixes = st.from_regex(r"[a-z][a-z0-9_-]{0,15}", fullmatch=True)


@given(prefix=prefixes, a=ids, b=ids, c=ids, d=ids)
def test_what_names_builds_parse_reads_back(prefix: str, a: str, b: str, c: str, d: str) -> None:
    names = Names(prefix)
    built = {
        names.request(a): RequestSubject(a),
        names.cancel(a): CancelSubject(a),
        names.signal(a, b): SignalSubject(a, b),
        names.workflow_event(a, b): WorkflowSubject(a, b),
        names.workflow_event(a, b, c): WorkflowSubject(a, b, c),
        names.workflow_event(a, b, c, d): WorkflowSubject(a, b, c, d),
        names.step_result(a, b, c): StepResultSubject(a, b, c),
        names.timer_schedule(a, b): TimerSubject(a, b, due=False),
        names.timer_due(a, b): TimerSubject(a, b, due=True),
        names.tokens(a, b): TokenSubject(a, b),
        names.step_calls(a, b, c): CallSubject(a, b, c),
        names.dlq(a): DeadLetterSubject(a),
    }
    for subject, parts in built.items():
        assert names.parse(subject) == parts, subject
        assert parse(subject, prefix=prefix + "x") is None  # another prefix's subject
    assert family(names.step_result(a, b, c)) == "step"


def test_subjects_off_the_layout_are_none() -> None:
    for subject in ["ja", "ja.wf", "ja.wf.w1", "ja.step.x", "ja..cancel", "ja.nope.a.b", ""]:
        assert parse(subject, prefix="ja") is None, subject
    # The layout before capability subjects, which old histories hold.
    assert parse("ja.step.w1.3", prefix="ja") == StepResultSubject(None, "w1", "3")


def test_templates_are_filled_with_the_prefix() -> None:
    template = TEMPLATE.step_scheduled_tool("tools", "calculator")
    assert template == "{p}.wf.*.StepScheduled.tools.calculator"
    assert Names("ab").fill(template) == Names("ab").step_scheduled_tool("tools", "calculator")
    assert Names("ab").fill(TEMPLATE.workflows_stream) == "AB_WORKFLOWS"
