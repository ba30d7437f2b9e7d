"""The worker's knobs as one object; `ServiceSettings.worker_settings()` is where they are made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from facesr.service.worker.layout import DEFAULT_TRIAL_S, LayoutRequest

WarmupMode = Literal["all", "pow2"]


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """How a worker batches, warms up and reports itself.

    Attributes:
        max_batch_size: B, the most jobs computed in one model call (>= 1; None: chosen for the device).
        runners: model runners (threads taking batches side by side; None: chosen for the device).
        threads_per_runner: intra-op threads of each runner (None: chosen for the device).
        layout_trial_s: how long each candidate layout runs when the layout is measured at warm-up.
        max_wait_ms: W, how long to wait for more jobs after the first of a batch (>= 0).
        warmup: batch sizes run once before serving: "all" (1..B) or "pow2" (powers of two and B).
        heartbeat_interval_s: period of the heartbeat (which also refreshes in-flight jobs).
        heartbeat_ttl_s: a heartbeat older than this stops counting (> heartbeat_interval_s).
        maintenance_interval_s: period of the source's housekeeping (taking over dead workers' jobs).
        batch_timeout_s: a batch running longer than this marks the worker stalled (> 0).
    """

    max_batch_size: int | None
    max_wait_ms: float
    warmup: WarmupMode
    heartbeat_interval_s: float
    heartbeat_ttl_s: float
    maintenance_interval_s: float
    batch_timeout_s: float
    runners: int | None = None
    threads_per_runner: int | None = None
    layout_trial_s: float = DEFAULT_TRIAL_S

    def __post_init__(self) -> None:
        self.layout_request()  # checks the three layout fields
        if self.layout_trial_s <= 0:
            raise ValueError(f"layout_trial_s must be > 0, got {self.layout_trial_s}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise ValueError("heartbeat_ttl_s must exceed heartbeat_interval_s, or readiness would flap")
        if self.batch_timeout_s <= 0:
            raise ValueError(f"batch_timeout_s must be > 0, got {self.batch_timeout_s}")
        if self.warmup not in ("all", "pow2"):
            raise ValueError(f"warmup must be 'all' or 'pow2', got {self.warmup!r}")

    def layout_request(self) -> LayoutRequest:
        """What these settings fix of the runner layout (the rest is chosen at warm-up)."""
        return LayoutRequest(self.runners, self.threads_per_runner, self.max_batch_size)
