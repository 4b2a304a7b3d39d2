"""How the offline deterministic provider reads a request: its stages, and in each stage
the values a tool's arguments can be filled from. Pure functions of text.

It reads the words a person writes to any model — "then" between steps, arithmetic,
"K is V", "the result" — and knows no tool, prompt or request by name: which tool gets a
value is decided by the tools' argument schemas (:func:`takes`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jetagent.llm import ToolSpec

__all__ = ["Ask", "Reading", "read_stage", "stages", "takes"]

_STAGE_SPLIT = re.compile(r"\bthen\b|;", re.IGNORECASE)
_CALL = re.compile(r"\bcall ([A-Za-z0-9_-]+)\s*(\{.*?\})(?=\s*(?:and\b|,|$|\bcall\b))", re.I)
_RESULT_WORDS = re.compile(r"\b(?:the result|that result|the answer|it)\b", re.IGNORECASE)
_QUESTION = re.compile(r"^\W*(?:what|who|whom|whose|which|where|when|why|how)\b", re.I)
_STATEMENT = re.compile(r"([A-Za-z][\w ]*?)\s+(?:is|=)\s+([^.,;!?]+)", re.IGNORECASE)
_DETERMINERS = frozenset(
    {"that", "my", "our", "your", "his", "her", "their", "its", "the", "a", "an"}
)
_EXPRESSION = re.compile(r"[-+]?[\d(][\d\s.()+\-*/%^]*[\d)]")
_OPERATOR = re.compile(r"[\d)]\s*(?:\*\*|[-+*/%^])\s*[\d(]")
_NUMBER = r"(\(?-?[\d.]+\)?)"
# Arithmetic in words, as symbols.
_WORDS = [
    (re.compile(rf"multiply {_NUMBER} by {_NUMBER}", re.I), r"\1 * \2"),
    (re.compile(rf"divide {_NUMBER} by {_NUMBER}", re.I), r"\1 / \2"),
    (re.compile(rf"add {_NUMBER} to {_NUMBER}", re.I), r"\2 + \1"),
    (re.compile(rf"subtract {_NUMBER} from {_NUMBER}", re.I), r"\2 - \1"),
    (re.compile(r"\s+plus\s+", re.I), " + "),
    (re.compile(r"\s+minus\s+", re.I), " - "),
    (re.compile(r"\s+(?:times|multiplied by)\s+", re.I), " * "),
    (re.compile(r"\s+divided by\s+", re.I), " / "),
]

EXPRESSION, KEY, VALUE = "expression", "key", "value"
"""The names of the values a stage can give: the arguments they fill are named so."""


@dataclass(frozen=True)
class Ask:
    """One tool call a stage asks for: a tool named in it (``call NAME {json}``), or
    values for whichever offered tool takes them (``tool`` None)."""

    arguments: dict[str, Any]
    tool: str | None = None


@dataclass(frozen=True)
class Reading:
    """What one stage asks for, and the keys it states (for the stages after it)."""

    asks: list[Ask]
    stated: list[str]


def stages(request: str) -> list[str]:
    """The request's steps, in order: its parts between "then" (or ";")."""
    return [s.strip() for s in _STAGE_SPLIT.split(request) if s.strip()]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _key(subject: str) -> str:
    """What a statement is about: its subject after the last determiner ("my city")."""
    words = subject.split()
    cut = max((i + 1 for i, w in enumerate(words) if w.lower() in _DETERMINERS), default=0)
    return " ".join(words[cut:] or words)


def read_stage(stage: str, previous: str | None, known: Sequence[str]) -> Reading:
    """The calls ``stage`` asks for, in the order it says them.

    ``previous`` is the last result of the stage before ("the result", "it"); ``known``
    the keys stated by earlier stages (mentioning one again asks for its value).
    """
    if previous is not None:
        stage = _RESULT_WORDS.sub(f"({previous})" if _is_number(previous) else previous, stage)
    asks: list[Ask] = []
    rest = stage
    for match in _CALL.finditer(stage):
        try:
            arguments = json.loads(match.group(2))
        except json.JSONDecodeError:
            arguments = {"raw": match.group(2)}
        if not isinstance(arguments, dict):
            arguments = {"raw": arguments}
        asks.append(Ask(arguments, tool=match.group(1)))
        rest = rest.replace(match.group(0), " ")
    stated: list[str] = []
    if not _QUESTION.match(rest):
        for match in _STATEMENT.finditer(rest):
            key, value = _key(match.group(1)), match.group(2).strip()
            if value:
                asks.append(Ask({KEY: key, VALUE: value}))
                stated.append(key)
                rest = rest.replace(match.group(0), " ")
    for key in known:
        if re.search(rf"\b{re.escape(key)}\b", rest, re.IGNORECASE):
            asks.append(Ask({KEY: key}))
    for pattern, replacement in _WORDS:
        rest = pattern.sub(replacement, rest)
    for match in _EXPRESSION.finditer(rest):
        expression = match.group(0).strip()
        if _OPERATOR.search(expression):
            asks.append(Ask({EXPRESSION: expression}))
    return Reading(asks=asks, stated=stated)


def takes(tool: ToolSpec, values: Mapping[str, Any]) -> bool:
    """Whether ``tool``'s argument schema is filled by ``values`` exactly: every argument
    it requires is given, and every value given is a text argument it has."""
    properties = tool.parameters.get("properties")
    required = tool.parameters.get("required") or []
    if not isinstance(properties, dict) or not isinstance(required, list):
        return False
    if not all(name in values for name in required):
        return False
    return all(_takes_text(properties.get(name)) for name in values)


def _takes_text(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type", "string") == "string"
