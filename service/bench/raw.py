"""The raw model in this process, at the service's runner layout: the yardstick for the service.

Uses the same trial as the worker's layout measurement (`facesr.service.worker.layout.measure_trial`):
``runners`` threads with ``threads_per_runner`` intra-op threads each, all busy, faces per second of all.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from facesr.model.inference import FaceSR
from facesr.service.worker.layout import measure_trial


@dataclass(frozen=True)
class RawRow:
    """Faces per second of the raw model at one (runners, threads, batch) point."""

    runners: int
    threads_per_runner: int
    batch_size: int
    faces_per_second: float

    @property
    def seconds_per_batch(self) -> float:
        """One runner's compute time for one batch at this point."""
        return self.runners * self.batch_size / self.faces_per_second


def _runner(engine: FaceSR, largest: int) -> Any:
    side = engine.config.lr_size
    faces = np.random.default_rng(0).integers(0, 256, size=(largest, side, side, 3)).astype(np.uint8)

    def run_batch(size: int) -> None:
        engine.enhance_tensor(faces[:size])

    return run_batch


def measure(
    engine: FaceSR, runners: int, threads: int, batch_sizes: list[int], seconds: float
) -> list[RawRow]:
    """Faces/s with ``runners`` x ``threads`` at each batch size."""
    run_batch = _runner(engine, max(batch_sizes))
    return [
        RawRow(
            runners,
            threads,
            size,
            measure_trial(run_batch, torch.set_num_threads, runners, threads, size, seconds).faces_per_second,
        )
        for size in batch_sizes
    ]


def single_core_best(engine: FaceSR, batch_sizes: list[int], seconds: float) -> RawRow:
    """The best of one runner with one thread over ``batch_sizes``: what one core gives."""
    return max(measure(engine, 1, 1, batch_sizes, seconds), key=lambda row: row.faces_per_second)


def png(face: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(face).save(buffer, format="PNG")
    return buffer.getvalue()


def reference_outputs(engine: FaceSR, faces: np.ndarray) -> list[np.ndarray]:
    """The raw model's final images (N x 128 x 128 x 3 uint8) for N x 16 x 16 x 3 faces, one at a time
    (the batch a face lands in on the service must not change its output)."""
    return [engine.enhance_tensor(face[None])[0].image for face in faces]
