"""The settings that decide how fast a service notices a dead or hung NATS node."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jetagent.config import Settings


def test_defaults_leave_a_hung_node_in_about_three_seconds() -> None:
    options = Settings().connection_options()
    assert options == {"ping_interval": 1.0, "max_pings_out": 2, "reconnect_wait": 0.25}
    # (max pings out + 1) unanswered pings of one interval each.
    assert (options["max_pings_out"] + 1) * options["ping_interval"] == 3.0


def test_the_environment_sets_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETAGENT_NATS_PING_INTERVAL_S", "2.5")
    monkeypatch.setenv("JETAGENT_NATS_MAX_PINGS_OUT", "3")
    monkeypatch.setenv("JETAGENT_NATS_RECONNECT_WAIT_S", "0")
    assert Settings().connection_options() == {
        "ping_interval": 2.5,
        "max_pings_out": 3,
        "reconnect_wait": 0.0,
    }


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JETAGENT_NATS_PING_INTERVAL_S", "0"),
        ("JETAGENT_NATS_PING_INTERVAL_S", "soon"),
        ("JETAGENT_NATS_MAX_PINGS_OUT", "0"),
        ("JETAGENT_NATS_RECONNECT_WAIT_S", "-1"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("JETAGENT_").lower()):
        Settings()
