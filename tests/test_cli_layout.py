"""The CLI's layout helpers and its reading of times (pure: no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.text import Text

from jetagent.cli._layout import (
    Column,
    ShortIds,
    elide,
    facts,
    fold,
    grid_lines,
    short_ids,
    stamp,
    usd,
)
from jetagent.cli._moments import parse_moment
from jetagent.errors import InvalidRequestError

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("15m", NOW - timedelta(minutes=15)),
        ("2h", NOW - timedelta(hours=2)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("3d", NOW - timedelta(days=3)),
        ("1w", NOW - timedelta(days=7)),
        (" 2 h ", NOW - timedelta(hours=2)),
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01T14:00", datetime(2026, 12, 1, 14, tzinfo=UTC)),
        ("2026-12-01 14:00:05Z", datetime(2026, 12, 1, 14, 0, 5, tzinfo=UTC)),
        ("2026-12-01T15:00:00+01:00", datetime(2026, 12, 1, 14, tzinfo=UTC)),
    ],
)
def test_moments(text: str, expected: datetime) -> None:
    assert parse_moment(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "15", "m15", "15 minutes", "-2h", "", "2026-13-01"])
def test_moments_refused_say_what_is_accepted(text: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse_moment(text, now=NOW, option="--until")
    assert "--until" in str(refused.value)
    assert "15m" in str(refused.value)


def test_short_ids_are_unique_prefixes_of_eight_or_more() -> None:
    ids = ["cafe0001-a", "cafe0001-b", "beef0003-x", "abc"]
    short = short_ids(ids)
    assert short == {
        "cafe0001-a": "cafe0001-a",
        "cafe0001-b": "cafe0001-b",
        "beef0003-x": "beef0003",
        "abc": "abc",
    }
    follower = ShortIds()
    assert follower.of("cafe0001-a") == "cafe0001"
    assert follower.of("cafe0001-b") == "cafe0001-b"  # now two share the first eight


@given(st.lists(st.text(alphabet="0123456789abcdef-", min_size=1, max_size=12), min_size=1))
def test_short_ids_never_collide(ids: list[str]) -> None:
    short = short_ids(ids)
    for wid, prefix in short.items():
        assert wid.startswith(prefix)
        others = [o for o in short if o != wid and o.startswith(prefix)]
        assert others == [] or prefix == wid


def test_fold_keeps_lines_within_the_width_and_no_lone_last_word() -> None:
    text = "the step's handler raised an error whose message is long enough to need lines"
    for width in range(12, 60):
        lines = [line.plain for line in fold(text, width)]
        assert all(cell_len(line) <= width for line in lines), (width, lines)
        assert " ".join(lines) == text
        if len(lines) > 1 and len(lines[-1].split()) == 1:
            # A lone last word only where the line before could not spare one.
            before = lines[-2].split()
            assert len(before) <= 2 or len(before[-1]) + 1 + len(lines[-1]) > width, lines


def test_fold_cuts_a_word_longer_than_a_line_in_its_middle() -> None:
    subject = "ja.wf.cafe0001-0000-4000-8000-000000000001.StepScheduled.reasoning"
    (line,) = fold(subject, 30)
    assert line.plain == elide(subject, 30)
    assert line.plain.startswith("ja.wf.cafe0001")
    assert line.plain.endswith("reasoning")
    assert cell_len(line.plain) == 30


def test_fold_keeps_styles_and_limits_lines() -> None:
    text = Text.from_markup("[red]error:[/] " + "word " * 40)
    lines = fold(text, 20, max_lines=3)
    assert len(lines) == 3
    assert lines[0].spans[0].style == "red"
    assert lines[-1].plain.endswith("…")


def test_facts_break_between_parts_only() -> None:
    parts = ["tenant acme", "status finalized", "created 2026-12-06 06:08:42.892Z"]
    lines = [line.plain for line in facts(parts, 40)]
    assert lines == ["tenant acme · status finalized", "created 2026-12-06 06:08:42.892Z"]


def test_grid_drops_columns_by_priority_and_cuts_cells() -> None:
    columns = (
        Column("id", priority=100),
        Column("status", priority=100),
        Column("tokens", priority=30, justify="right"),
        Column("instruction", priority=50, flexible=True, min_width=10),
    )
    rows: list[list[Text | str]] = [["cafe0001", "finalized", "12345", "What is 6 * 7? " * 4]]
    shown, lines = grid_lines(columns, rows, 50)
    assert shown == ["id", "status", "instruction"]  # tokens gave the instruction room
    assert all(cell_len(line.plain) <= 50 for line in lines)
    assert lines[1].plain.endswith("…")
    shown, _ = grid_lines(columns, rows, 200)
    assert shown == ["id", "status", "tokens", "instruction"]


def test_times_and_money() -> None:
    moment = datetime(2026, 12, 6, 7, 8, 9, 892_000, tzinfo=UTC)
    assert stamp(moment) == "2026-12-06 07:08:09Z"
    assert stamp(moment, date=False, millis=True) == "07:08:09.892"
    assert stamp(moment.replace(tzinfo=None)) == "2026-12-06 07:08:09Z"  # no zone: UTC
    assert stamp(None) == "-"
    assert usd(Decimal("0E-7")) == "$0"
    assert usd(Decimal("0.0000780")) == "$0.000078"
    assert usd(Decimal("12")) == "$12"
