"""Accept-header negotiation of the super-resolution endpoints."""

from __future__ import annotations

import pytest

from facesr.service.api.negotiation import Representation, negotiate
from facesr.service.errors import NotAcceptableError


@pytest.mark.parametrize(
    ("accept", "requested", "expected"),
    [
        (None, None, Representation("image", "png")),
        ("", "jpeg", Representation("image", "jpeg")),
        ("*/*", None, Representation("image", "png")),
        ("image/*", "webp", Representation("image", "webp")),
        ("image/webp", None, Representation("image", "webp")),
        ("image/jpeg;q=0.9, image/webp", None, Representation("image", "webp")),
        ("application/json", None, Representation("json", "png")),
        ("application/json", "jpeg", Representation("json", "jpeg")),
        ("image/*, application/json", None, Representation("json", "png")),  # exact beats wildcard
        ("application/json;q=0.5, image/png", None, Representation("image", "png")),
        ("text/html, */*;q=0.1", None, Representation("image", "png")),
        ("IMAGE/PNG", None, Representation("image", "png")),
    ],
)
def test_negotiation_picks_the_best_representation(accept, requested, expected):
    assert negotiate(accept, requested_format=requested) == expected


@pytest.mark.parametrize(
    ("accept", "requested"),
    [("text/html", None), ("image/png", "jpeg"), ("application/json;q=0", None), ("image/*;q=0", "png")],
)
def test_nothing_acceptable_raises_406(accept, requested):
    with pytest.raises(NotAcceptableError):
        negotiate(accept, requested_format=requested)


def test_json_only_endpoints():
    assert negotiate("*/*", requested_format=None, allow_image=False) == Representation("json", "png")
    with pytest.raises(NotAcceptableError):
        negotiate("image/png", requested_format=None, allow_image=False)


def test_garbage_accept_headers_are_tolerated():
    # Unparseable ranges are skipped; an unparseable q means "not acceptable" for that range.
    assert negotiate("garbage, application/json", requested_format=None).kind == "json"
    with pytest.raises(NotAcceptableError):
        negotiate("image/png;q=abc", requested_format=None)


@pytest.mark.parametrize(
    "accept",
    [
        "text/html, " + "x" * 10_000,
        'text/html;q=1, <script>alert("x")</script>',
        "text/html\x00\x1b[31m, text/\u202eplain",
        "text/plain, " * 2_000,
    ],
)
def test_406_detail_quotes_only_a_short_sanitised_excerpt_of_accept(accept):
    with pytest.raises(NotAcceptableError) as refused:
        negotiate(accept, requested_format=None)

    detail = refused.value.detail
    assert len(detail) < 200, detail
    assert not set(detail) & set("<>'\x00\x1b\u202e"), detail
    assert "<script>" not in detail and "x" * 100 not in detail
    assert "text/html" in detail or "text/plain" in detail  # enough to see what was asked
    assert "image/png" in detail and "application/json" in detail  # and what is on offer
