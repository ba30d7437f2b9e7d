"""Reading untrusted values from Redis: bounded JSON and typed fields, every failure a `CodecError`.

Anything that can write to Redis (a producer of another version, a bug, an attacker with access) can put
any bytes into a stream entry, a heartbeat or a reply list. Everything the service reads back goes
through these readers, which bound sizes, nesting and numbers and check types, so a bad value becomes one
`CodecError` for its caller to count and set aside; it never raises anything else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from facesr.service.queue.keys import check_name

#: Integers longer than this are refused while parsing (a 400-digit number must not reach float()).
MAX_INT_DIGITS: Final = 19
#: Strings read from the wire (ids, names, messages) longer than this are refused.
MAX_TEXT: Final = 2_000


class CodecError(ValueError):
    """A value read from Redis that cannot be decoded; the message says what is wrong with it."""


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise CodecError(f"an integer of {len(digits)} characters")
    return int(digits)


def _no_constant(name: str) -> float:
    raise CodecError(f"{name} is not a number JSON allows")


def load_json(data: object, *, what: str, max_bytes: int) -> Any:
    """Parse ``data`` (bytes or str) as JSON of at most ``max_bytes``.

    Refuses NaN/Infinity, over-long integers and nesting too deep for the parser (``RecursionError``),
    all as :class:`CodecError`.
    """
    if not isinstance(data, bytes | str):
        raise CodecError(f"{what} is not text")
    if len(data) > max_bytes:
        raise CodecError(f"{what} has {len(data)} bytes, more than {max_bytes}")
    try:
        return json.loads(data, parse_int=_bounded_int, parse_constant=_no_constant)
    except CodecError as error:
        raise CodecError(f"{what}: {error}") from None
    except RecursionError:
        raise CodecError(f"{what} is nested too deeply") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CodecError(f"{what} is not valid UTF-8 JSON: {str(error)[:80]}") from None


def mapping(value: Any, what: str, *, max_items: int = 64) -> dict[str, Any]:
    """A JSON object with string keys and at most ``max_items`` members."""
    if not isinstance(value, dict):
        raise CodecError(f"{what} must be an object")
    if len(value) > max_items:
        raise CodecError(f"{what} has {len(value)} members, more than {max_items}")
    return value


def field(fields: Mapping[Any, Any], name: str, *, what: str, max_bytes: int) -> bytes:
    """One field of a Redis hash or stream entry, as bytes of at most ``max_bytes``."""
    value = fields.get(name.encode(), fields.get(name))
    if value is None:
        raise CodecError(f"{what} has no {name!r} field")
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise CodecError(f"{what} field {name!r} is not bytes")
    if len(value) > max_bytes:
        raise CodecError(f"{what} field {name!r} has {len(value)} bytes, more than {max_bytes}")
    return value


def optional_text(value: Any, what: str, *, max_length: int = MAX_TEXT) -> str | None:
    """None, or what :func:`text` accepts."""
    return None if value is None else text(value, what, max_length=max_length)


def text(value: Any, what: str, *, max_length: int = MAX_TEXT) -> str:
    """A string (bytes are decoded as UTF-8) of 1..``max_length`` characters."""
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            raise CodecError(f"{what} is not UTF-8") from None
    if not isinstance(value, str) or not value:
        raise CodecError(f"{what} must be a non-empty string")
    if len(value) > max_length:
        raise CodecError(f"{what} has {len(value)} characters, more than {max_length}")
    return value


def name(value: Any, what: str) -> str:
    """A string that is valid inside a Redis key (model names, API and worker ids)."""
    try:
        return check_name(what, text(value, what, max_length=200))
    except ValueError as error:
        raise CodecError(str(error)) from None


def boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise CodecError(f"{what} must be true or false")
    return value


def integer(value: Any, what: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CodecError(f"{what} must be an integer in {low}..{high}")
    return value


def number(value: Any, what: str, *, low: float, high: float) -> float:
    """A finite number within [low, high] (JSON integers included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"{what} must be a number")
    if not (math.isfinite(value) and low <= value <= high):
        raise CodecError(f"{what} must be a finite number in {low:g}..{high:g}")
    return float(value)
