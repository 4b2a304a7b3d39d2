"""The public surface: names users rely on, schemas that other languages read."""

from __future__ import annotations

from pathlib import Path

import jetagent
from jetagent.schemas import stale_files

ROOT = Path(__file__).resolve().parents[1]


def test_public_names_are_pinned() -> None:
    # Changing this list is an API change: do it on purpose, with a note in the README.
    assert sorted(jetagent.__all__) == [
        "CapabilityError",
        "CapabilityLimits",
        "CapabilitySpec",
        "Client",
        "ConfigError",
        "JetagentError",
        "ModelPreferences",
        "OutputFormat",
        "PermanentError",
        "RateLimitedError",
        "RequestRejectedError",
        "SessionContext",
        "SessionView",
        "Settings",
        "Status",
        "StepContext",
        "StepOutput",
        "SyncClient",
        "Tool",
        "TransientError",
        "WorkflowFailedError",
        "WorkflowRequest",
        "WorkflowResult",
        "capability",
        "tool",
    ]
    for name in jetagent.__all__:
        assert getattr(jetagent, name).__doc__, f"{name} has no docstring"


def test_checked_in_schemas_are_current() -> None:
    stale = stale_files(ROOT / "schemas")
    assert not stale, f"schemas/ is stale, run `jetagent schemas`: {stale}"
