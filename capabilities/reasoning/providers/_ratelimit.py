"""How long a provider asked us to wait, from the headers of its answer.

Sources, most specific first:

- ``retry-after-ms`` (OpenAI), ``retry-after`` (RFC 9110 §10.2.3: delay-seconds or an
  HTTP-date);
- the rate-limit reset headers, used when no ``retry-after`` came: OpenAI's
  ``x-ratelimit-reset-{requests,tokens}`` (durations such as ``"6m0s"``, ``"20ms"``) and
  Anthropic's ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset``
  (RFC 3339 instants). When a matching ``…-remaining`` header says a limit is exhausted,
  only exhausted limits count; otherwise the latest reset does (waiting too short just
  earns another 429).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

__all__ = ["retry_after_s"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

# (reset header, remaining header, parser kind)
_RESET_HEADERS = (
    ("x-ratelimit-reset-requests", "x-ratelimit-remaining-requests", "duration"),
    ("x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens", "duration"),
    *(
        (f"anthropic-ratelimit-{kind}-reset", f"anthropic-ratelimit-{kind}-remaining", "instant")
        for kind in ("requests", "tokens", "input-tokens", "output-tokens")
    ),
)


def retry_after_s(headers: Mapping[str, str], *, now: float) -> float | None:
    """Seconds to wait before calling again, or ``None`` if the headers do not say.

    ``now`` is the wall-clock time (``time.time()``): HTTP dates and RFC 3339 instants
    are wall-clock values, so only wall-clock time can turn them into a delay.
    """
    lower = {k.lower(): v.strip() for k, v in headers.items()}
    if (ms := _number(lower.get("retry-after-ms"))) is not None:
        return max(ms / 1000.0, 0.0)
    if (value := lower.get("retry-after")) is not None:
        if (seconds := _number(value)) is not None:
            return max(seconds, 0.0)
        if (at := _http_date(value)) is not None:
            return max(at - now, 0.0)
    exhausted: list[float] = []
    every: list[float] = []
    for reset_name, remaining_name, kind in _RESET_HEADERS:
        raw = lower.get(reset_name)
        if raw is None:
            continue
        delay = _duration(raw) if kind == "duration" else _instant(raw, now)
        if delay is None:
            continue
        every.append(delay)
        if _number(lower.get(remaining_name)) == 0:
            exhausted.append(delay)
    chosen = exhausted or every
    return max(chosen) if chosen else None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None


def _http_date(value: str) -> float | None:
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _duration(value: str) -> float | None:
    if (plain := _number(value)) is not None:
        return max(plain, 0.0)
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _instant(value: str, now: float) -> float | None:
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    if at.tzinfo is None:
        return None
    return max(at.timestamp() - now, 0.0)
