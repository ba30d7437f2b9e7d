"""Batch forming and failure isolation for the worker loop, independent of transport and model."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

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


@dataclass(frozen=True)
class ItemFailure:
    """Why one item of a batch has no output."""

    kind: str  # "oom" | "internal"
    message: str


def run_isolating_failures(
    compute: Callable[[Sequence[T]], list[R]],
    items: Sequence[T],
    *,
    on_oom: Callable[[], None] = lambda: None,
) -> list[R | ItemFailure]:
    """``compute(items)``, splitting the batch in halves on failure until single items fail alone.

    CUDA out-of-memory calls ``on_oom`` (empty the cache) before the halves are retried, so a batch that
    is too large for the free memory degrades into smaller batches instead of failing. Any other
    exception is also bisected, which isolates a poison item: it alone gets an ``internal`` failure.
    Returns one output or :class:`ItemFailure` per item, in order.
    """
    if not items:
        return []
    try:
        outputs = compute(items)
    except torch.cuda.OutOfMemoryError as exc:
        on_oom()
        if len(items) == 1:
            return [ItemFailure("oom", f"out of GPU memory even for a single face: {exc}")]
        log.warning("out of GPU memory at batch size %d; retrying in halves", len(items))
    except Exception as exc:
        if len(items) == 1:
            log.exception("model failed on a single face")
            return [ItemFailure("internal", f"model failed: {type(exc).__name__}: {exc}")]
        log.warning("model failed at batch size %d (%s); bisecting to isolate the item", len(items), exc)
    else:
        if len(outputs) != len(items):
            raise RuntimeError(f"compute returned {len(outputs)} outputs for {len(items)} items")
        return list(outputs)
    half = len(items) // 2
    return run_isolating_failures(compute, items[:half], on_oom=on_oom) + run_isolating_failures(
        compute, items[half:], on_oom=on_oom
    )
