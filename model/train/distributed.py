"""Process-group set-up for `torchrun` (ranks from environment variables) and a single-process default."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs and which share of the work it does.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes (1 in a single process).
        device: this process's device (cuda:LOCAL_RANK, or cpu).
    """

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, validates and saves."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average a tensor over all ranks (identity in a single process)."""
        if not self.is_distributed:
            return value
        reduced = value.detach().clone().to(self.device)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced / self.world_size

    def gather(self, obj: object) -> list[object]:
        """Every rank's `obj`, in rank order (a one-item list in a single process)."""
        if not self.is_distributed:
            return [obj]
        gathered: list[object] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise RuntimeError(f"environment variable {name}={raw!r} is not an integer") from exc


def setup_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group that `torchrun` describes (RANK, WORLD_SIZE, LOCAL_RANK), if any.

    Args:
        device: "cpu", "cuda" or None (CUDA when available). Under torchrun with CUDA each process
            takes cuda:LOCAL_RANK and the NCCL backend; on CPU, gloo.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if wanted == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    if wanted not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {wanted!r}")
    torch_device = torch.device("cuda", local_rank) if wanted == "cuda" else torch.device("cpu")
    if wanted == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if wanted == "cuda" else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, device=torch_device)


def teardown_distributed() -> None:
    """Leave the process group (no-op in a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()
