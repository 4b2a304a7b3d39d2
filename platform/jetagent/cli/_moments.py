"""Points in time as a person types them: ``--since 15m``, ``--until 2026-12-01T14:00``.

Relative forms count back from now: a number and a unit, ``s``, ``m``, ``h``, ``d`` or
``w`` (``90s``, ``15m``, ``2h``, ``3d``, ``1.5h``). Absolute ones are ISO 8601 dates or
date-times (``2026-12-01``, ``2026-12-01T14:00``, ``2026-12-01 14:00:05+01:00``,
``…Z``); one without a zone is UTC, as every time the CLI prints. Python's own
``datetime.fromisoformat`` reads them (3.11 accepts the ISO forms above); no parser of
natural language is involved, so nothing is guessed.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from jetagent.errors import InvalidRequestError

__all__ = ["parse_moment"]

_RELATIVE = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_moment(text: str, *, now: datetime, option: str = "--since") -> datetime:
    """The moment ``text`` names (UTC); ``InvalidRequestError`` saying what is accepted."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative:
        seconds = float(relative["n"]) * _UNITS[relative["unit"]]
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:
            raise InvalidRequestError([f"{option} {text!r} is too far back"]) from None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(
            [
                f"{option} {text!r} is not a time: use a duration back from now (90s, 15m, "
                "2h, 3d, 1w) or an ISO date or date-time (2026-12-01, 2026-12-01T14:00Z)"
            ]
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
