"""How deep a JSON document nests, measured without recursing (so without a parser).

JSON parsers recurse: msgspec raises ``RecursionError`` (not a decode error) on a body
nested thousands of levels deep. Every reader of untrusted JSON asks this first.
"""

from __future__ import annotations

import re

__all__ = ["MAX_DEPTH", "nests_deeper_than"]

MAX_DEPTH = 64
"""The deepest nesting jetagent reads from an untrusted JSON document."""

# A JSON string. Possessive: no backtracking, so linear even on an unterminated string.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = frozenset(b"[{")


def nests_deeper_than(data: bytes, limit: int) -> bool:
    """Whether the JSON in ``data`` nests more than ``limit`` levels deep.

    Brackets inside strings do not count; for malformed input the answer may be either,
    and the parser that runs next says what is wrong with it.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False  # it cannot nest deeper than it opens (the common case: no scan)
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        elif depth:
            depth -= 1
    return False
