"""How the generator is executed for inference: eager, a TorchScript trace, or torch.compile.

All three run the same weights. What differs is the cost around the convolutions:

- ``eager``: every layer is a Python call. At the 16 x 16 inputs of this model that interpreter time is
  a sizeable share of a forward pass on a CPU, and it holds the GIL, which limits how well several
  runner threads scale.
- ``trace`` (the default on CPU in fp32): the forward pass recorded once with ``torch.jit.trace`` and
  replayed by TorchScript's C++ interpreter, which runs without the GIL. Built in about two seconds on
  the first call, bit-identical outputs, every batch size. Measured 1.4x faster than eager with one
  runner and 1.6x with two (benchmarks/README.md). PyTorch marks ``torch.jit.trace`` deprecated in
  favour of ``torch.export`` and ``torch.compile``; the exported graph module measured slower here, and
  ``compile`` costs minutes to build, so the trace stays the CPU default while it works, with ``eager``
  one setting away (``FACESR_GRAPH=eager``).
- ``compile``: ``torch.compile`` (Inductor) with a fixed set of batch sizes (*buckets*): a batch is padded
  up to the next bucket, so only those shapes are ever compiled, each once, on first use (under a lock:
  runner threads never compile at the same time). On CUDA it uses CUDA graphs (``mode="reduce-overhead"``),
  which replay a whole forward pass as one launch. Compiling takes about a minute and a half per bucket on
  a 2-core CPU, so it is opt-in.

On the CPU the weights and inputs are kept channels-last (NHWC), which the oneDNN convolutions prefer
(measured 1.1-1.2x faster than contiguous NCHW on this model). Half precision is the caller's autocast,
in eager or compiled mode (a trace records fp32 kernels).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from facesr.model.generator import DICGenerator

Outputs = tuple[list[torch.Tensor], list[torch.Tensor]]  # (SR of every step, heatmaps of every step)
GraphMode = Literal["eager", "trace", "compile"]
GRAPH_MODES: tuple[GraphMode, ...] = ("eager", "trace", "compile")


def default_graph(device: torch.device, dtype: torch.dtype) -> GraphMode:
    """``trace`` on a CPU in fp32 (measured faster there), else ``eager`` (nothing measured on GPUs yet)."""
    return "trace" if device.type == "cpu" and dtype == torch.float32 else "eager"


def bucket_sizes(max_batch_size: int) -> list[int]:
    """Compiled batch sizes: powers of two below ``max_batch_size``, and ``max_batch_size`` itself."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    sizes = [2**i for i in range(max_batch_size.bit_length()) if 2**i < max_batch_size]
    return [*sizes, max_batch_size]


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )


class GeneratorRunner:
    """Runs a generator on B x 3 x 16 x 16 inputs and returns every step's outputs as lists.

    Safe to call from several threads at once: a trace or a bucket's compilation is made once, under a
    lock, by the first call that needs it.

    Args:
        generator: the eval-mode network (weights on ``device``); it is converted to channels-last on CPU.
        device: where the weights live.
        graph: ``eager``, ``trace`` or ``compile`` (see the module docstring).
        dtype: the precision the caller runs it in (a trace needs fp32).
        buckets: batch sizes compiled in ``compile`` mode (a batch larger than the last is run in pieces).
    """

    def __init__(
        self,
        generator: DICGenerator,
        device: torch.device,
        graph: GraphMode = "eager",
        *,
        dtype: torch.dtype = torch.float32,
        buckets: Sequence[int] = (1, 2, 4, 8),
    ) -> None:
        if graph not in GRAPH_MODES:
            raise ValueError(f"graph must be one of {', '.join(GRAPH_MODES)}, got {graph!r}")
        if graph == "trace" and dtype != torch.float32:
            raise ValueError("a traced graph runs in fp32 only; use eager or compile for half precision")
        self.device = device
        self.graph: GraphMode = graph
        self.channels_last = device.type == "cpu"
        self.buckets = sorted(set(buckets))
        if not self.buckets or self.buckets[0] < 1:
            raise ValueError(f"buckets must be positive batch sizes, got {list(buckets)}")
        if self.channels_last:
            # Module.to accepts memory_format at run time; torch's overloads for it omit the keyword.
            generator.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.generator = generator
        self.steps = generator.config.num_steps  # SR outputs come first in a trace's flat tuple
        self._forward: Callable[[torch.Tensor], object] | None = generator if graph == "eager" else None
        if graph == "compile":
            mode = "reduce-overhead" if device.type == "cuda" else None
            self._forward = torch.compile(generator, dynamic=False, mode=mode)
        self._ready_buckets: set[int] = set()
        self._build_lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> Outputs:
        """x: B x 3 x s x s float32 (mean-subtracted) on the device -> (B x 3 x S x S per step, B x K x h x w
        heatmaps per step; empty without a landmark branch)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.graph == "compile":
            return self._run_bucketed(x)
        if self.graph == "trace":
            flat: Any = (self._forward or self._trace(x))(x)
            return list(flat[: self.steps]), list(flat[self.steps :])
        outputs: Any = self.generator(x)
        sr_steps, heatmap_steps = outputs
        return list(sr_steps), list(heatmap_steps)

    def _trace(self, example: torch.Tensor) -> Callable[[torch.Tensor], object]:
        with self._build_lock:
            if self._forward is None:
                with warnings.catch_warnings(), torch.no_grad():
                    # Deprecated upstream (see the module docstring); the shape checks of the Python
                    # forward become constants, which is why the engine checks its inputs itself.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    self._forward = torch.jit.trace(_Flat(self.generator), example, check_trace=False)
            return self._forward

    def _run_bucketed(self, x: torch.Tensor) -> Outputs:
        """Pad to the smallest bucket that holds the batch (split beyond the largest), run, unpad."""
        largest = self.buckets[-1]
        if x.shape[0] > largest:
            pieces = [
                self._run_bucketed(x[start : start + largest]) for start in range(0, x.shape[0], largest)
            ]
            return (
                [torch.cat(step) for step in zip(*(sr for sr, _ in pieces), strict=True)],
                [torch.cat(step) for step in zip(*(hm for _, hm in pieces), strict=True)],
            )
        count = x.shape[0]
        bucket = next(size for size in self.buckets if size >= count)
        if bucket > count:
            memory_format = _memory_format(x)
            padding = x[-1:].expand(bucket - count, *x.shape[1:])
            x = torch.cat([x, padding]).contiguous(memory_format=memory_format)
        assert self._forward is not None
        outputs: Any
        if bucket in self._ready_buckets:
            outputs = self._forward(x)
        else:
            with self._build_lock:  # the first call of a shape compiles it; Dynamo compiles one at a time
                outputs = self._forward(x)
                self._ready_buckets.add(bucket)
        sr_steps, heatmap_steps = outputs
        # CUDA graphs reuse their output buffers on the next replay: copy what is kept.
        return [t[:count].clone() for t in sr_steps], [t[:count].clone() for t in heatmap_steps]


class _Flat(nn.Module):
    """The generator with its outputs as one flat tuple of tensors (SR of every step, then the heatmaps
    of every step, none without a landmark branch), which is what a trace can record."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sr_steps, heatmap_steps = self.generator(x)
        return (*sr_steps, *heatmap_steps)
