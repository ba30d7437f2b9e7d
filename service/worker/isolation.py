"""Failure isolation for one model batch: split on failure until the failing face stands alone."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ItemFailure:
    """Why one item of a batch has no output."""

    kind: Literal["oom", "internal"]
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
