"""A resumable, distributed epoch sampler: the data order is a pure function of (seed, epoch, rank)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """`DistributedSampler` that yields (epoch, index) keys and can start in the middle of an epoch.

    The per-epoch shuffle is torch's (seeded by seed + epoch, then split across ranks); the epoch is
    passed with each index so that the dataset can seed that sample's augmentation. Works without a
    process group when `num_replicas` and `rank` are given (single process: 1 and 0).
    """

    def __init__(self, dataset: Dataset[Any], *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self._skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Iterate epoch `epoch`, leaving out its first `skip` samples of this rank (already seen)."""
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"skip {skip} outside [0, {self.num_samples}]")
        self.set_epoch(epoch)
        self._skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self._skip :]
        return iter([(self.epoch, index) for index in indices])

    def __len__(self) -> int:
        return self.num_samples - self._skip
