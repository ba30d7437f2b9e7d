"""Plans: client operations written once, without I/O, and driven by the sync and the async client.

A plan is a generator that yields the steps it needs, `Send` (make this HTTP request; the driver sends
back the `httpx.Response`, or the `httpx.TransportError` it raised) and `Wait` (sleep this long; the
driver sends back None), and finally returns the typed result or raises a typed error.
`facesr.client.Client` drives plans with `httpx.Client` and `time.sleep`, `AsyncClient` with
`httpx.AsyncClient` and `asyncio.sleep`.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import httpx

T = TypeVar("T")

#: One multipart file part: (form field, (file name, content, media type)).
FilePart = tuple[str, tuple[str, bytes, str]]


@dataclass(frozen=True)
class Send:
    """Make one HTTP request (the driver answers with the response or the transport error)."""

    method: str
    path: str
    headers: Mapping[str, str]
    timeout: httpx.Timeout
    params: Mapping[str, str] | None = None
    files: Sequence[FilePart] | None = None


@dataclass(frozen=True)
class Wait:
    """Sleep `seconds` before the next step (the driver answers with None)."""

    seconds: float


Step = Send | Wait
Reply = httpx.Response | httpx.TransportError | None
Plan = Generator[Step, Reply, T]
