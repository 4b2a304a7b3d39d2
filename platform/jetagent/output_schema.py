"""A request's ``output.json_schema``: checked as a schema and compiled once, at ingress.

The orchestrator validates the final answer against it long after the request was
accepted; a schema that cannot be used (``{"type": 5}``, a ``pattern`` that is no
regular expression, a ``$ref`` to nowhere) must be refused with the request, not fail
when the first answer arrives. Checked here: the schema against the JSON Schema
2020-12 meta-schema (regex formats included), every ``$ref`` / ``$dynamicRef``
resolving *inside* the schema (nothing is fetched: a remote ``$ref`` is refused), and
one trial validation. The compiled validator is cached by the schema's canonical JSON,
so ingress and every later check of an answer share it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import referencing.exceptions
from jsonschema.protocols import Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from jetagent.errors import JetagentError

__all__ = ["InvalidOutputSchema", "compile_output_schema", "output_schema_problems"]

_ROOT = "urn:jetagent:output-schema"
_TRIALS: tuple[Any, ...] = (None, True, 0, 1.5, "", [], {})
_REF_KEYS = ("$ref", "$dynamicRef")


class InvalidOutputSchema(JetagentError, ValueError):
    """The schema cannot be used; ``problems`` says why (each one line)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _refuse_retrieval(uri: str) -> Any:
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


def _refs(schema: Any) -> Iterator[str]:
    """Every ``$ref``-like string in the schema (no recursion: depth is the caller's)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _REF_KEYS and isinstance(value, str):
                    yield value
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))


@functools.lru_cache(maxsize=256)
def _compiled(canonical: str) -> Validator:
    schema = json.loads(canonical)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise InvalidOutputSchema(
            [f"output.json_schema{'/' + where if where else ''}: {exc.message}"]
        ) from None
    if isinstance(schema, bool):
        return jsonschema.Draft202012Validator(schema)
    registry: Registry[Any] = Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]
    registry = registry.with_resource(_ROOT, DRAFT202012.create_resource(schema)).crawl()
    resolver = registry.resolver(base_uri=_ROOT)
    problems = []
    for ref in _refs(schema):
        try:
            resolver.lookup(ref)
        except referencing.exceptions.Unresolvable:
            problems.append(
                f"output.json_schema: $ref {ref!r} does not resolve inside the schema "
                "(remote references are not fetched)"
            )
    if problems:
        raise InvalidOutputSchema(problems)
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    for trial in _TRIALS:
        try:
            for _ in validator.iter_errors(trial):
                pass
        except Exception as exc:  # a schema that breaks the validator: refuse it now
            raise InvalidOutputSchema(
                [f"output.json_schema cannot be used: {type(exc).__name__}: {exc}"]
            ) from None
    return validator


def compile_output_schema(schema: dict[str, Any] | bool) -> Validator:
    """The validator for ``schema``; raises ``InvalidOutputSchema`` if it is unusable."""
    try:
        canonical = json.dumps(schema, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidOutputSchema([f"output.json_schema is not JSON: {exc}"]) from None
    return _compiled(canonical)


def output_schema_problems(schema: dict[str, Any] | bool) -> list[str]:
    """What is wrong with ``schema`` (empty if it can be used)."""
    try:
        compile_output_schema(schema)
    except InvalidOutputSchema as exc:
        return exc.problems
    return []
