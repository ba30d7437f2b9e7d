"""Reconnect delays: exponential with full jitter, so restarted peers do not retry in lockstep."""

from __future__ import annotations

import random


class Backoff:
    """``next()`` returns a delay drawn from [0, min(cap, base * 2**attempt)]; ``reset()`` after a success."""

    def __init__(self, base_s: float = 0.1, cap_s: float = 5.0) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got base_s={base_s}, cap_s={cap_s}")
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        return random.uniform(self.base_s / 2, ceiling)  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        self.attempt = 0
