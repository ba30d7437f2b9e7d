"""Batch forming for job sources: top up a first read until the batch is full or its wait is over."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# The first read of a batch blocks at most this long, so a stop request is noticed within about a second.
FIRST_READ_BLOCK_S = 1.0


def collect_batch(
    read: Callable[[int, float], list[T]],
    first: list[T],
    max_items: int,
    max_wait_s: float,
    stop: threading.Event,
) -> list[T]:
    """Top up ``first`` with ``read(count, timeout_s)`` until ``max_items`` or ``max_wait_s`` after the first.

    ``read`` returns what it got within ``timeout_s`` (possibly nothing). A stop request ends collection
    early; items already read are returned, because they are already delivered and must be answered.
    """
    items = list(first)
    if not items:
        return items
    give_up_at = time.monotonic() + max_wait_s
    while len(items) < max_items and not stop.is_set():
        remaining = give_up_at - time.monotonic()
        if remaining <= 0.0005:
            break
        items.extend(read(max_items - len(items), remaining))
    return items
