"""Training precision and memory layout: bf16 autocast and channels_last, where they are enabled.

`train.amp` turns on bf16 autocast on CUDA. `train.cpu_bf16` (off by default: on the CPU width it was
measured only 6% faster than fp32 with channels_last, see docs/training.md) does the same on CPUs with
native bf16 arithmetic (AVX512-BF16 or AMX); CPUs that would emulate it keep fp32.
`train.channels_last` stores the model and its inputs in NHWC order.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from facesr.train.config import TrainSection


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX), not just an emulation."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


class Precision:
    """The autocast context and tensor layout a run uses on its device."""

    def __init__(self, train: TrainSection, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.bf16 = train.amp
        else:
            self.bf16 = device.type == "cpu" and train.cpu_bf16 and cpu_has_native_bf16()
        self.channels_last = train.channels_last

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when enabled for this device; a no-op otherwise."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def prepare(self, module: nn.Module) -> None:
        """Put a module's weights in the run's memory layout."""
        if self.channels_last:
            # Module.to accepts memory_format at run time; torch's overloads for it omit the keyword.
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def layout(self, images: torch.Tensor) -> torch.Tensor:
        """Inputs B x C x H x W in the run's memory layout."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
