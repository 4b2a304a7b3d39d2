"""JSON Schemas of the request contract and of every event, for clients in any language.

``jetagent schemas`` writes them to ``schemas/``; a test fails when the checked-in files
differ from what the code generates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from jetagent.contract import WorkflowRequest
from jetagent.events import event_type
from jetagent.events._types import EVENT_CLASSES

__all__ = ["generate", "stale_files", "write_schemas"]


def _dump(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name → schema text, for every published contract."""
    files: dict[str, str] = {}
    request = WorkflowRequest.model_json_schema()
    request["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    request["$id"] = "https://jetagent.dev/schemas/workflow-request.schema.json"
    files["workflow-request.schema.json"] = _dump(request)
    for cls in EVENT_CLASSES:
        name = event_type(cls)
        (schema,), components = msgspec.json.schema_components([cls])
        document = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://jetagent.dev/schemas/events/{name}.schema.json",
            "title": name,
            **schema,
            "$defs": components,
        }
        files[f"events/{name}.schema.json"] = _dump(document)
    from jetagent.gateway import openapi_document  # the HTTP API's contract, generated too

    files["openapi.json"] = openapi_document()
    from jetagent.dead_letter import DeadLetter

    (schema,), components = msgspec.json.schema_components([DeadLetter])
    files["dead-letter.schema.json"] = _dump(
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://jetagent.dev/schemas/dead-letter.schema.json",
            "title": "DeadLetter",
            **schema,
            "$defs": components,
        }
    )
    return files


def write_schemas(folder: Path) -> list[Path]:
    written = []
    for name, text in generate().items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def stale_files(folder: Path) -> list[str]:
    """Schema files that are missing or differ from the generated ones."""
    stale = []
    for name, text in generate().items():
        path = folder / name
        if not path.exists() or path.read_text() != text:
            stale.append(name)
    return stale
