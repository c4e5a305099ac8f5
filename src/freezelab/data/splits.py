"""``Split`` and ``DatasetSplits``: whole splits as tensors, so they move to a device in one go."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DatasetSplits", "Device", "Split"]

Device = torch.device | str


@dataclass(frozen=True)
class Split:
    """Inputs and integer labels of one split, kept together so they move and slice together.

    >>> s = Split(torch.zeros(4, 784), torch.tensor([0, 1, 2, 3]))
    >>> len(s[torch.tensor([3, 0])])
    2
    """

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"Split has {len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: Tensor | slice) -> Split:
        return Split(self.x[index], self.y[index])

    def to(self, device: Device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class DatasetSplits:
    """Train/val/test splits of one dataset plus what a model needs to know about them.

    ``val`` may be the very same object as ``test`` (recipes without a validation split say so);
    ``.to`` keeps that sharing, so the data is held once.

    >>> ds = load_dataset("digits", flatten=False)
    >>> ds.input_shape, ds.num_classes
    ((1, 8, 8), 10)
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    recipe: str
    source: str = "unspecified"  # which copy was read, for the run's record: "official pickles", "JPEG copy (lossy, ...)"

    def to(self, device: Device) -> DatasetSplits:
        train, val, test = map_shared((self.train, self.val, self.test), lambda s: s.to(device))
        return dataclasses.replace(self, train=train, val=val, test=test)


def map_shared(splits: Sequence[Split], fn: Callable[[Split], Split]) -> list[Split]:
    """Apply ``fn`` once per distinct split, so a split shared by val and test stays shared."""
    done: dict[int, Split] = {}
    for s in splits:
        if id(s) not in done:
            done[id(s)] = fn(s)
    return [done[id(s)] for s in splits]
