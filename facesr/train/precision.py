"""Training precision and memory layout: bf16 autocast and channels_last, where they are enabled.

`train.amp` turns on bf16 autocast on CUDA, and on CPUs with native bf16 arithmetic (AVX512-BF16 or
AMX), where it was measured faster (docs/training.md); elsewhere it is a no-op. `train.channels_last`
stores the model and its inputs in NHWC order.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from facesr.train.config import TrainSection


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix arithmetic natively (oneDNN's check)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Precision:
    """The autocast context and tensor layout a run uses on its device."""

    def __init__(self, train: TrainSection, device: torch.device) -> None:
        self.device = device
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        self.bf16 = bool(train.amp and native)
        self.channels_last = train.channels_last

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when enabled for this device; a no-op otherwise."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def prepare(self, module: nn.Module) -> None:
        """Put a module's weights in the run's memory layout."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        """Inputs B x C x H x W in the run's memory layout."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
