"""Laying out the CLI's output in the terminal's width (README "Command line").

Tables are built for the console's width: columns that do not fit are dropped, least
important first; a row never wraps cell by cell (the one-word-per-line table of a
narrow terminal) — cells are cut with an ellipsis, and long text is folded below the
row with a hanging indent and never a lone last word. Ids are shown by their shortest
unique prefix (at least 8 characters); times are UTC, shown with their date.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = [
    "Column",
    "ShortIds",
    "console_width",
    "elide",
    "facts",
    "fit_table",
    "fold",
    "grid_lines",
    "hang",
    "labelled",
    "short_ids",
    "stamp",
    "usd",
    "utc",
]

SHORT_ID = 8
"""Characters of an id shown at least (a UUID's first group)."""


def utc(moment: datetime | None) -> datetime | None:
    """``moment`` in UTC (a time without a zone is taken as UTC, as events write them)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def stamp(moment: datetime | None, *, date: bool = True, millis: bool = False) -> str:
    """``2026-12-06 06:08:42Z`` (``date=False``: ``06:08:42``; ``millis``: ``.892``)."""
    moment = utc(moment)
    if moment is None:
        return "-"
    text = moment.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")
    if millis:
        text += f".{moment.microsecond // 1000:03d}"
    return text + ("Z" if date else "")


def short_ids(ids: Iterable[str], *, minimum: int = SHORT_ID) -> dict[str, str]:
    """Each id's shortest prefix that no other of ``ids`` starts with (``minimum`` at
    least; the whole id when it is shorter or another id starts with all of it)."""
    ordered = sorted(set(ids))

    def common(a: str, b: str) -> int:
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    short = {}
    for i, wid in enumerate(ordered):
        shared = max(
            common(wid, ordered[i - 1]) if i > 0 else 0,
            common(wid, ordered[i + 1]) if i + 1 < len(ordered) else 0,
        )
        short[wid] = wid[: max(minimum, shared + 1)]
    return short


class ShortIds:
    """Short ids for a stream of workflows (``tail``): each id's first
    :data:`SHORT_ID` characters, more when another id seen so far starts the same."""

    KEEP = 100_000
    """Ids remembered; past this many, forgotten and learnt again (a day-long tail)."""

    def __init__(self, *, minimum: int = SHORT_ID) -> None:
        self.minimum = minimum
        self._seen: dict[str, set[str]] = {}

    def of(self, workflow_id: str) -> str:
        """The short id of ``workflow_id`` among the ids seen so far (it included)."""
        if len(self._seen) >= self.KEEP:
            self._seen.clear()
        group = self._seen.setdefault(workflow_id[: self.minimum], set())
        group.add(workflow_id)
        return short_ids(group, minimum=self.minimum)[workflow_id]


_WORD = re.compile(r"\S+")


def elide(text: str, width: int) -> str:
    """``text`` cut in the middle to ``width`` cells (``abc…xyz``): both ends of an id,
    a subject or a URL say more than either alone."""
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head = width // 2
    tail = width - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def fold(text: Text | str, width: int, *, max_lines: int | None = None) -> list[Text]:
    """``text`` folded into lines of at most ``width`` cells, at spaces (a word longer
    than a line is cut in the middle, :func:`elide`), with no lone word on the last line
    when the line before it can spare one; past ``max_lines``, the last line ends with
    an ellipsis."""
    text = Text(text) if isinstance(text, str) else text
    plain = text.plain
    width = max(width, 1)
    lines: list[list[tuple[int, int]]] = [[]]
    for match in _WORD.finditer(plain):
        start, end = match.span()
        line = lines[-1]
        if line and cell_len(plain[line[0][0] : end]) > width:
            lines.append([(start, end)])
        else:
            line.append((start, end))
    lines = [line for line in lines if line]
    if len(lines) > 1 and len(lines[-1]) == 1 and len(lines[-2]) > 2:
        moved = lines[-2].pop()
        if cell_len(plain[moved[0] : lines[-1][0][1]]) <= width:
            lines[-1].insert(0, moved)
        else:
            lines[-2].append(moved)
    out = []
    for line in lines:
        piece = text[line[0][0] : line[-1][1]]
        if cell_len(piece.plain) > width:  # one word longer than a line
            piece = Text(elide(piece.plain, width), style=text.style)
        out.append(piece)
    if max_lines is not None and len(out) > max_lines:
        out = out[:max_lines]
        last = out[-1]
        last.truncate(max(width - 1, 0))
        last.append("…")
    return out or [Text("")]


def facts(parts: Sequence[Text | str], width: int, *, sep: str = " · ") -> list[Text]:
    """``parts`` joined by ``sep`` into lines of at most ``width`` cells, breaking only
    between parts (a part too long for a line is folded on its own)."""
    lines: list[Text] = []
    current: Text | None = None
    for part in parts:
        piece = Text.from_markup(part) if isinstance(part, str) else part
        if current is not None and cell_len(current.plain + sep + piece.plain) <= width:
            current.append(sep)
            current.append_text(piece)
            continue
        if current is not None:
            lines.append(current)
        folded = fold(piece, width)
        lines.extend(folded[:-1])
        current = folded[-1]
    if current is not None:
        lines.append(current)
    return lines


def usd(amount: object) -> str:
    """``$0.0000355``; ``$0`` rather than ``$0E-7``."""
    from decimal import Decimal

    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"${text or '0'}"


def labelled(label: str, value: str, width: int, *, style: str = "") -> Text:
    """``label value`` on one line of at most ``width`` cells (the value elided)."""
    room = max(width - cell_len(label) - 1, 1)
    return Text.assemble((label + " ", "dim"), (elide(value or "-", room), style))


def hang(head: Text, body: Text, width: int, *, max_lines: int | None = None) -> list[Text]:
    """``head`` then ``body``, the body folded to the width left beside the head and
    every further line indented under the body's start."""
    indent = cell_len(head.plain)
    if width - indent < 20:  # too narrow beside the head: fold under it instead
        lines = [head.copy()]
        lines[0].rstrip()
        for line in fold(body, width - 2, max_lines=max_lines):
            lines.append(Text("  ") + line)
        return lines
    folded = fold(body, width - indent, max_lines=max_lines)
    first = head.copy()
    first.append_text(folded[0])
    return [first, *(Text(" " * indent) + line for line in folded[1:])]


@dataclass(frozen=True)
class Column:
    """One column of a :func:`fit_table`."""

    header: str
    priority: int = 100
    """Columns of lower priority are dropped first when the terminal is too narrow;
    100 and above are never dropped."""
    justify: str = "left"
    max_width: int | None = None
    flexible: bool = False
    """Takes the width the others leave (cut with an ellipsis); dropped below ``min_width``."""
    min_width: int = 10
    want_width: int = 30
    """A flexible column narrower than this drops columns of lower priority for room."""


_GAP = 2  # cells between two columns


def _cells(cell: Text | str) -> int:
    return cell_len(cell.plain if isinstance(cell, Text) else cell)


def _fit(
    columns: Sequence[Column], rows: Sequence[Sequence[Text | str]], width: int
) -> list[tuple[int, int]]:
    """(column index, width) of the columns kept: dropped by priority until the rest fits."""
    natural = []
    for i, column in enumerate(columns):
        size = max([cell_len(column.header), *(_cells(row[i]) for row in rows)])
        natural.append(min(size, column.max_width) if column.max_width else size)
    kept = list(range(len(columns)))

    def needed(indices: list[int]) -> int:
        sizes = [columns[i].min_width if columns[i].flexible else natural[i] for i in indices]
        return sum(sizes) + _GAP * (len(indices) - 1)

    while needed(kept) > width:
        droppable = [i for i in kept if columns[i].priority < 100]
        if not droppable:
            break
        kept.remove(min(droppable, key=lambda i: (columns[i].priority, -i)))

    def fixed(indices: list[int]) -> int:
        return sum(natural[i] for i in indices if not columns[i].flexible) + _GAP * (
            len(indices) - 1
        )

    for flexible in [i for i in kept if columns[i].flexible]:
        wanted = min(natural[flexible], columns[flexible].want_width)
        while width - fixed(kept) < wanted:
            lower = [
                i
                for i in kept
                if columns[i].priority < columns[flexible].priority and not columns[i].flexible
            ]
            if not lower:
                break
            kept.remove(min(lower, key=lambda i: (columns[i].priority, -i)))
    rest = width - fixed(kept)
    return [(i, max(min(natural[i], rest), 1) if columns[i].flexible else natural[i]) for i in kept]


def fit_table(columns: Sequence[Column], rows: Sequence[Sequence[Text | str]], width: int) -> Table:
    """A rich table of ``rows`` no wider than ``width``: columns dropped by priority until
    the rest fits, every cell on one line."""
    fitted = _fit(columns, rows, width)
    table = Table(box=None, pad_edge=False, padding=(0, _GAP // 2), header_style="bold")
    for i, size in fitted:
        table.add_column(
            columns[i].header,
            justify=columns[i].justify,  # type: ignore[arg-type]
            no_wrap=True,
            overflow="ellipsis",
            width=size,
        )
    for row in rows:
        table.add_row(*(row[i] for i, _ in fitted))
    return table


def grid_lines(
    columns: Sequence[Column], rows: Sequence[Sequence[Text | str]], width: int
) -> tuple[list[str], list[Text]]:
    """The same fitting as :func:`fit_table`, as lines: the header names of the columns
    kept (so a caller can tell what was dropped) and a header line plus one line per
    row, for callers that print more under a row."""
    fitted = _fit(columns, rows, width)

    def line(cells: Sequence[Text | str], style: str = "") -> Text:
        out = Text(style=style)
        for n, (i, size) in enumerate(fitted):
            cell = cells[i]
            text = (cell if isinstance(cell, Text) else Text(cell)).copy()
            if cell_len(text.plain) > size:
                text.truncate(max(size - 1, 0))
                text.append("…")
            text.align(columns[i].justify, size)  # type: ignore[arg-type]
            if n:
                out.append(" " * _GAP)
            out.append_text(text)
        out.rstrip()
        return out

    header = line([c.header for c in columns], "bold")
    return [columns[i].header for i, _ in fitted], [header, *(line(row) for row in rows)]


def console_width(console: Console) -> int:
    """The width output is laid out for."""
    return max(console.width, 20)
