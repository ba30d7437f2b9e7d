"""Content negotiation for the super-resolution endpoints (RFC 9110 `Accept` with q-values).

The single-image endpoint can answer with the image itself (`image/png`, `image/jpeg`,
`image/webp`) or with JSON; the batch endpoint only with JSON. A missing `Accept` (or `*/*`) gets
the image, so `curl -o face.png` just works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from facesr.service.errors import NotAcceptableError
from facesr.service.images import OUTPUT_MEDIA_TYPES, OutputFormat

JSON_MEDIA_TYPE = "application/json"
Kind = Literal["image", "json"]


@dataclass(frozen=True)
class Representation:
    """What to send back: the image bytes or the JSON document, and the image's encoding."""

    kind: Kind
    format: OutputFormat


@dataclass(frozen=True)
class _MediaRange:
    main: str
    sub: str
    quality: float

    def specificity(self, media_type: str) -> int | None:
        """How precisely this range names `media_type` (2 exact, 1 `type/*`, 0 `*/*`), or None."""
        main, sub = media_type.split("/", 1)
        if (self.main, self.sub) == (main, sub):
            return 2
        if self.main == main and self.sub == "*":
            return 1
        if self.main == "*" and self.sub == "*":
            return 0
        return None


# What of the client's `Accept` header a 406 detail may quote: a short prefix, media-range characters only.
EXCERPT_CHARS = 64
_MEDIA_RANGE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/*+-.;=, ")


def _excerpt(header: str) -> str:
    """A short, harmless rendering of an untrusted header for a problem detail.

    At most `EXCERPT_CHARS` characters are quoted (then "..."), and any character that cannot appear in
    a media range (quotes, angle brackets, control characters, non-ASCII, ...) is shown as "?".
    """
    text = " ".join(header.split())
    shown = "".join(char if char in _MEDIA_RANGE_CHARS else "?" for char in text[:EXCERPT_CHARS])
    return f'"{shown}..."' if len(text) > EXCERPT_CHARS else f'"{shown}"'


def _parse_accept(header: str) -> list[_MediaRange]:
    ranges = []
    for item in header.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if "/" not in media:
            continue
        main, sub = (piece.strip().lower() for piece in media.split("/", 1))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        ranges.append(_MediaRange(main, sub, quality))
    return ranges


def _preference(ranges: list[_MediaRange], media_type: str) -> tuple[float, int]:
    """(q, specificity) of the most specific range matching `media_type`; q 0 when none does."""
    best: tuple[int, float] | None = None
    for media_range in ranges:
        specificity = media_range.specificity(media_type)
        if specificity is not None and (best is None or specificity > best[0]):
            best = (specificity, media_range.quality)
    return (0.0, -1) if best is None else (best[1], best[0])


def negotiate(
    accept: str | None, *, requested_format: OutputFormat | None, allow_image: bool = True
) -> Representation:
    """Pick the representation for a request.

    Args:
        accept: the `Accept` header (None or blank: anything is acceptable).
        requested_format: the `format` option, when the client gave one.
        allow_image: False for endpoints that only speak JSON.

    Raises:
        NotAcceptableError: nothing this endpoint produces is acceptable to the client.
    """
    image_formats: tuple[OutputFormat, ...] = (
        (requested_format,) if requested_format else ("png", "jpeg", "webp")
    )
    candidates: list[tuple[Kind, OutputFormat, str]] = []
    if allow_image:
        candidates += [("image", fmt, OUTPUT_MEDIA_TYPES[fmt]) for fmt in image_formats]
    json_format: OutputFormat = requested_format or "png"
    candidates.append(("json", json_format, JSON_MEDIA_TYPE))

    if accept is None or not accept.strip():
        kind, fmt, _ = candidates[0]
        return Representation(kind, fmt)

    ranges = _parse_accept(accept)
    # Highest q wins; on a tie the more specific range wins; then the candidate order above.
    scored = [(_preference(ranges, media), -index) for index, (_, _, media) in enumerate(candidates)]
    best_index = max(range(len(candidates)), key=lambda index: scored[index])
    (quality, _), _ = scored[best_index]
    if quality <= 0:
        offered = ", ".join(media for _, _, media in candidates)
        raise NotAcceptableError(
            f"the Accept header ({_excerpt(accept)}) matches nothing this endpoint returns ({offered})"
        )
    kind, fmt, _ = candidates[best_index]
    return Representation(kind, fmt)
