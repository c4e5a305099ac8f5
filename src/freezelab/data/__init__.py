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
``mnist10k_80_20`` = seed 001, ``train_test`` = seed 000), so their numbers can be compared run
for run. ``DatasetSplits.source`` records which copy was read (CIFAR-10: official pickles or the
lossy JPEG copy). Augmentation runs on the device, seeded per (seed, epoch, step):

    >>> xb = augment_crop_flip(ds.train.x[idx], seed=0, epoch=epoch, step=step)

Modules: ``sources`` (data root, IDX and pickle formats, errors), ``cifar_jpeg`` (CIFAR-10's JPEG
archive), ``imagefolder`` (ImageFolder trees), ``images`` (decoding), ``cache`` (decoded arrays on
disk), ``registry`` (names, recipes, ``load_dataset``), ``splits`` (tensor containers),
``batching`` (batch order, DataLoader), ``augment`` (crop, flip, resize on the device).
"""

from .augment import apply_crop_flip, augment_crop_flip, crop_flip_params, epoch_crop_flip_params, resize_batch
from .batching import IndexBatches, as_dataloader, batches, random_crop_flip, steps_per_epoch
from .cache import cache_root
from .registry import Recipe, keep_classes, list_datasets, list_recipes, load_dataset, random_split_indices
from .sources import DataCorruptError, DatasetNotFoundError, read_idx, resolve_data_root
from .splits import DatasetSplits, Split

__all__ = [
    "DataCorruptError",
    "DatasetNotFoundError",
    "DatasetSplits",
    "IndexBatches",
    "Recipe",
    "Split",
    "as_dataloader",
    "augment_crop_flip",
    "apply_crop_flip",
    "epoch_crop_flip_params",
    "batches",
    "cache_root",
    "crop_flip_params",
    "keep_classes",
    "list_datasets",
    "list_recipes",
    "load_dataset",
    "random_crop_flip",
    "random_split_indices",
    "read_idx",
    "resize_batch",
    "resolve_data_root",
    "steps_per_epoch",
]
