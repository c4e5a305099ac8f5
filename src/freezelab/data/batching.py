"""Batch order for device-resident data (index slices), and a DataLoader for per-sample augmentation."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .splits import Device, Split

__all__ = ["IndexBatches", "as_dataloader", "batches", "random_crop_flip", "steps_per_epoch"]


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Optimizer steps in one pass over ``n`` examples.

    >>> steps_per_epoch(54000, 128), steps_per_epoch(54000, 128, drop_last=True)
    (422, 421)
    """
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def batches(perm: Tensor, batch_size: int, drop_last: bool = False) -> Iterator[Tensor]:
    """Consecutive slices of a permutation: the indices of each batch (views, no copies).

    >>> [b.tolist() for b in batches(torch.arange(5), 2)]
    [[0, 1], [2, 3], [4]]
    """
    stop = len(perm) - len(perm) % batch_size if drop_last else len(perm)
    for start in range(0, stop, batch_size):
        yield perm[start : start + batch_size]


def _epoch_seed(seed: int, epoch: int) -> int:
    """Mix (seed, epoch) into one 64-bit seed; ``seed + epoch`` would make (0, 1) equal (1, 0)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


@dataclass(frozen=True)
class IndexBatches:
    """Seeded batch order for data held as tensors: epoch ``e`` always gives the same permutation.

    Each epoch's permutation comes from its own CPU generator seeded by (seed, e), so it does not
    depend on the global RNG, on what else drew random numbers, on earlier epochs, or on the device.

    >>> ib = IndexBatches(n=54000, batch_size=128, seed=0, device="cuda")
    >>> for idx in ib.epoch_batches(3):
    ...     loss = step(train.x[idx], train.y[idx])
    """

    n: int
    batch_size: int
    seed: int
    drop_last: bool = False
    device: Device = "cpu"

    def __post_init__(self) -> None:
        if self.n < 1 or self.batch_size < 1 or self.seed < 0:
            raise ValueError(f"need n >= 1, batch_size >= 1, seed >= 0; got {self.n}, {self.batch_size}, {self.seed}")
        if self.steps_per_epoch == 0:
            raise ValueError(f"drop_last=True with n={self.n} < batch_size={self.batch_size} leaves no batch")

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.n, self.batch_size, self.drop_last)

    def epoch(self, e: int) -> Tensor:
        """The int64 permutation of ``range(n)`` for epoch ``e``, on ``device``."""
        if e < 0:
            raise ValueError(f"epoch must be >= 0, got {e}")
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, e))
        return torch.randperm(self.n, generator=generator).to(self.device)

    def epoch_batches(self, e: int) -> Iterator[Tensor]:
        """The index tensor of each batch of epoch ``e``."""
        return batches(self.epoch(e), self.batch_size, self.drop_last)


class _TransformedSplit(Dataset[tuple[Tensor, Tensor]]):
    def __init__(self, split: Split, transform: Callable[[Tensor], Tensor] | None) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.split.x[i]
        return (self.transform(x) if self.transform else x), self.split.y[i]


def as_dataloader(
    split: Split,
    batch_size: int,
    transform: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
    *,
    shuffle: bool = True,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader over a split, for augmentations that must run per sample (random crops, flips).

    The shuffle order is seeded by ``seed``. The transform's own randomness comes from the global
    torch RNG when ``num_workers=0`` (seed it with ``torch.manual_seed``) and from ``seed`` in
    workers. Use a non-flattened split so the transform sees (C, H, W).

    >>> ds = load_dataset("cifar10", flatten=False)
    >>> loader = as_dataloader(ds.train, 512, random_crop_flip(32), seed=0)
    """
    return DataLoader(
        _TransformedSplit(split, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


def random_crop_flip(size: int, padding: int = 4) -> Callable[[Tensor], Tensor]:
    """The usual CIFAR augmentation: pad, random ``size`` crop, random horizontal flip.

    Padding is zero, i.e. the mean pixel once images are normalised.

    >>> random_crop_flip(32)(torch.zeros(3, 32, 32)).shape
    torch.Size([3, 32, 32])
    """
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomCrop(size, padding=padding), v2.RandomHorizontalFlip()])
