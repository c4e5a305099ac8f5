"""Datasets as device-resident tensors, seed-exact split recipes and index batching.

Small vision datasets fit in accelerator memory, so the fastest loader is no loader: hold the
whole split as one tensor on the training device and take each batch by index (the
cifar10-airbench approach). The batch order comes from a CPU generator seeded by (seed, epoch),
so it is the same on every run and every device.

    >>> ds = load_dataset("digits", seed=0)
    >>> batcher = IndexBatches(len(ds.train), batch_size=128, seed=0)
    >>> for idx in batcher.epoch_batches(0):
    ...     xb, yb = ds.train.x[idx], ds.train.y[idx]

Recipes reproduce the splits of the seed notebooks exactly (``fmnist_90_10`` = seed 004,
``mnist10k_80_20`` = seed 001), so their numbers can be compared run for run.

Modules: ``sources`` (data root, file formats), ``registry`` (names, recipes, ``load_dataset``),
``splits`` (tensor containers), ``batching`` (batch order, DataLoader for augmentation).
"""

from .batching import IndexBatches, as_dataloader, batches, random_crop_flip, steps_per_epoch
from .registry import Recipe, list_datasets, list_recipes, load_dataset, random_split_indices
from .sources import DatasetNotFoundError, read_idx, resolve_data_root
from .splits import DatasetSplits, Split

__all__ = [
    "DatasetNotFoundError",
    "DatasetSplits",
    "IndexBatches",
    "Recipe",
    "Split",
    "as_dataloader",
    "batches",
    "list_datasets",
    "list_recipes",
    "load_dataset",
    "random_crop_flip",
    "random_split_indices",
    "read_idx",
    "resolve_data_root",
    "steps_per_epoch",
]
