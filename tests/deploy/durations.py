"""Durations as Compose and Prometheus write them ("1m30s", "45s", "500ms"), in seconds."""

from __future__ import annotations

import re

_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)")


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration such as ``"1m30s"``; a bare number is already seconds.

    Raises:
        ValueError: for anything that is not a sequence of <number><unit> parts.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        return float(text)
    stripped = text.strip()
    parts = _PART.findall(stripped)
    if not parts or "".join(number + unit for number, unit in parts) != stripped:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
