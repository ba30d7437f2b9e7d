"""Compose/Prometheus duration strings and compose variable defaults."""

from __future__ import annotations

import pytest

from tests.deploy.durations import parse_duration
from tests.deploy.settings_check import facesr_variables, resolve_compose_defaults


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45.0), ("1m30s", 90.0), ("500ms", 0.5), ("2h", 7200.0), ("1.5s", 1.5), (60, 60.0)],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "45", "45 s", "s", "1m30", "-5s", "10x", True])
def test_parse_duration_refuses_garbage(text: str | bool) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_compose_defaults_are_applied() -> None:
    assert resolve_compose_defaults("${FACESR_WORKER_DTYPE:-fp32}") == "fp32"
    assert resolve_compose_defaults("${KEYS:-}") == ""
    assert resolve_compose_defaults("${UNSET}") == ""
    assert resolve_compose_defaults("redis://redis:6379/0") == "redis://redis:6379/0"
    assert facesr_variables({"FACESR_A": 3, "OTHER": "x"}) == {"FACESR_A": "3"}
