"""Datasets and split recipes by name, and ``load_dataset``, the one entry point.

A recipe is a named, seed-exact way to cut a dataset into train/val/test and scale its pixels;
``fmnist_90_10`` and ``mnist10k_80_20`` reproduce the seed notebooks' splits bit for bit;
``cifar10``'s ``classes_0_4`` / ``classes_5_9`` are seed 002's source and target tasks (half the
classes each, relabelled 0-4).
``cifar10`` reads the official pickles when they are there, else the JPEG copy (the loaded
splits' ``source`` says which); ``imagefolder`` reads any ImageFolder tree at the data root.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .cifar_jpeg import ARCHIVE, CLASSES, read_cifar10_jpeg
from .imagefolder import read_imagefolder
from .sources import Official, cifar_pickles_missing, read_cifar, read_digits, read_mnist_like, resolve_data_root
from .splits import DatasetSplits, Device, Split, map_shared

__all__ = ["Recipe", "channel_stats", "keep_classes", "list_datasets", "list_recipes", "load_dataset", "random_split_indices"]


def random_split_indices(n: int, lengths: Sequence[int], seed: int) -> list[Tensor]:
    """The indices ``torch.utils.data.random_split`` picks, without building a Dataset.

    random_split takes ``randperm(n, generator=Generator().manual_seed(seed))`` and cuts it into
    consecutive pieces; doing the same here keeps notebooks' splits bit-exact.

    >>> [len(i) for i in random_split_indices(10, [9, 1], seed=42)]
    [9, 1]
    """
    if sum(lengths) != n:
        raise ValueError(f"lengths {list(lengths)} sum to {sum(lengths)}, not n={n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(torch.split(perm, list(lengths)))


def _holdout_90_10(train: Split, test: Split | None, seed: int) -> tuple[Split, Split, Split]:
    assert test is not None, "this recipe needs an official test split"
    n = len(train)
    n_train = int(0.9 * n)  # seed 004's formula
    tr, va = random_split_indices(n, [n_train, n - n_train], seed)
    return train[tr], train[va], test


def _mnist10k_80_20(train: Split, _test: Split | None, seed: int) -> tuple[Split, Split, Split]:
    from sklearn.model_selection import train_test_split

    pool = train[:10_000]
    tr, te = train_test_split(np.arange(len(pool)), test_size=0.2, random_state=seed)
    held_out = pool[torch.from_numpy(te)]
    return pool[torch.from_numpy(tr)], held_out, held_out


def _stratified_holdout_10(train: Split, test: Split | None, seed: int) -> tuple[Split, Split, Split]:
    """A 10% validation set with each class in proportion (sklearn, random_state=seed), official test."""
    from sklearn.model_selection import train_test_split

    assert test is not None, "this recipe needs an official test split"
    tr, va = train_test_split(np.arange(len(train)), test_size=0.1, random_state=seed, stratify=train.y.numpy())
    return train[torch.from_numpy(tr)], train[torch.from_numpy(va)], test


def _train_test(train: Split, test: Split | None, _seed: int) -> tuple[Split, Split, Split]:
    """The official split with no held-out validation set: val is the test set (seed 000)."""
    assert test is not None, "this recipe needs an official test split"
    return train, test, test


def _stratified_60_20_20(pool: Split, _test: Split | None, seed: int) -> tuple[Split, Split, Split]:
    from sklearn.model_selection import train_test_split

    y = pool.y.numpy()
    rest, te = train_test_split(np.arange(len(pool)), test_size=0.2, random_state=seed, stratify=y)
    tr, va = train_test_split(rest, test_size=0.25, random_state=seed, stratify=y[rest])
    return pool[torch.from_numpy(tr)], pool[torch.from_numpy(va)], pool[torch.from_numpy(te)]


def keep_classes(split: Split, classes: Sequence[int]) -> Split:
    """The examples of ``classes`` only, in their original order, labelled by their position in ``classes``.

    So a model trained on the subset has ``len(classes)`` outputs, as a fresh task would.

    >>> s = keep_classes(Split(torch.arange(6.0), torch.tensor([0, 5, 1, 6, 5, 2])), (5, 6))
    >>> s.x.tolist(), s.y.tolist()
    ([1.0, 3.0, 4.0], [0, 1, 0])
    """
    lookup = torch.full((max(int(split.y.max()), *classes) + 1,), -1, dtype=split.y.dtype)
    lookup[list(classes)] = torch.arange(len(classes), dtype=split.y.dtype)
    new = lookup[split.y]
    kept = (new >= 0).nonzero().flatten()
    return Split(split.x[kept], new[kept])


def _class_subset(classes: tuple[int, ...]) -> Callable[[Split, Split | None, int], tuple[Split, Split, Split]]:
    """The 45k/5k holdout cut on the kept classes: a stratified 10% val of their training images, their test images."""

    def split(train: Split, test: Split | None, seed: int) -> tuple[Split, Split, Split]:
        assert test is not None, "this recipe needs an official test split"
        return _stratified_holdout_10(keep_classes(train, classes), keep_classes(test, classes), seed)

    return split


@dataclass(frozen=True)
class Recipe:
    """How to cut a dataset into train/val/test and scale its pixels.

    ``split`` gets (official train, official test or None, seed) as uint8 and returns
    (train, val, test). ``mean``/``std`` act on pixels scaled to [0, 1]; None means the dataset's.
    ``num_classes`` is set by recipes that keep a subset of the classes (labels 0..k-1).
    """

    description: str
    split: Callable[[Split, Split | None, int], tuple[Split, Split, Split]]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None


def _cifar10_classes(first: int, last: int) -> Recipe:
    """Seed 002's source/target tasks: CIFAR-10 classes ``first..last`` relabelled 0..k-1 (docs/methods/lora_norm_hybrid.md)."""
    kept = tuple(range(first, last + 1))
    n = len(kept)
    return Recipe(
        f"classes {first}-{last} only ({', '.join(CLASSES[k] for k in kept)}) relabelled 0-{n - 1}: "
        f"{4500 * n:,} train / {500 * n:,} val (the holdout_45k_5k cut: sklearn, stratified, random_state=seed) "
        f"+ their {1000 * n:,} test images; pixels normalised by all of CIFAR-10's statistics",
        _class_subset(kept),
        num_classes=n,
    )


_STANDARD = Recipe("official train/test; val = a seeded 10% of train, cut like random_split", _holdout_90_10)
_RECIPES_MNIST = {
    "standard": _STANDARD,
    "mnist10k_80_20": Recipe(
        "seed 001: first 10,000 train images in [0,1], sklearn train_test_split 8000/2000 "
        "(random_state=seed; the notebook used 42); no val split, so val IS test",
        _mnist10k_80_20,
    ),
}
_RECIPES_FMNIST = {
    "standard": _STANDARD,
    "fmnist_90_10": Recipe(
        "seed 004: random_split(train, [54000, 6000], Generator().manual_seed(seed)) (the notebook "
        "used 42), official test; pixels ToTensor+Normalize(0.5, 0.5), i.e. in [-1, 1]",
        _holdout_90_10,
        mean=(0.5,),
        std=(0.5,),
    ),
}


@dataclass(frozen=True)
class _DatasetInfo:
    description: str
    num_classes: int | None  # None: one per class the files name (ImageFolder trees)
    load: Callable[[str | os.PathLike[str] | None, bool], Official]
    recipes: dict[str, Recipe]  # the first is the default
    max_value: float = 255.0  # raw pixel value that maps to 1.0
    mean: tuple[float, ...] | None = (0.0,)  # None: the official training split's own, per channel
    std: tuple[float, ...] | None = (1.0,)


def _from_root(loader: Callable[..., Official], name: str, tv_class: str) -> Callable[..., Official]:
    return lambda root, download: loader(name, tv_class, resolve_data_root(root), download)


def _read_cifar10(root: str | os.PathLike[str] | None, download: bool) -> Official:
    """The official pickles if complete (or downloaded on request), else the JPEG copy, else one error naming both."""
    root = resolve_data_root(root)
    if cifar_pickles_missing("CIFAR10", root) and not download and (root / ARCHIVE).is_file():
        return read_cifar10_jpeg(root / ARCHIVE)
    return read_cifar("cifar10", "CIFAR10", root, download, also=root / ARCHIVE)


_TRAIN_TEST = Recipe("seed 000: all 50k training images, val = the official 10k test set", _train_test)
_HOLDOUT_45K_5K = Recipe(
    "45,000 train / 5,000 val (500 per class: sklearn train_test_split, test_size=0.1, stratify=labels, "
    "random_state=seed) from the 50k training images, plus the official 10k test set",
    _stratified_holdout_10,
)

_DATASETS: dict[str, _DatasetInfo] = {
    "digits": _DatasetInfo(
        "scikit-learn 8x8 digits, 1797 images, 10 classes, bundled (no download); stratified 60/20/20",
        10,
        read_digits,
        {"standard": Recipe("stratified 60/20/20 train/val/test (sklearn, random_state=seed)", _stratified_60_20_20)},
        max_value=16.0,
    ),
    "mnist": _DatasetInfo(
        "MNIST handwritten digits, 28x28 grey, 60k train / 10k test, 10 classes",
        10,
        _from_root(read_mnist_like, "mnist", "MNIST"),
        _RECIPES_MNIST,
    ),
    "fashion_mnist": _DatasetInfo(
        "Fashion-MNIST clothing, 28x28 grey, 60k train / 10k test, 10 classes",
        10,
        _from_root(read_mnist_like, "fashion_mnist", "FashionMNIST"),
        _RECIPES_FMNIST,
    ),
    "cifar10": _DatasetInfo(
        "CIFAR-10, 32x32 RGB, 50k train / 10k test, 10 classes (official pickles in torchvision's layout, "
        "else the JPEG copy CIFAR10-JPEG/cifar10-jpeg.tar.gz)",
        10,
        _read_cifar10,
        {
            "standard": _STANDARD,
            "train_test": _TRAIN_TEST,
            "holdout_45k_5k": _HOLDOUT_45K_5K,
            "classes_0_4": _cifar10_classes(0, 4),
            "classes_5_9": _cifar10_classes(5, 9),
        },
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _DatasetInfo(
        "CIFAR-100, 32x32 RGB, 50k train / 10k test, 100 classes (torchvision layout)",
        100,
        _from_root(read_cifar, "cifar100", "CIFAR100"),
        {"standard": _STANDARD, "train_test": _TRAIN_TEST},
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
    "imagefolder": _DatasetInfo(
        "any ImageFolder tree at data_root (train/ and test/ or val/, one folder per class, one image size), "
        "RGB, normalised by the training images' per-channel mean and std",
        None,
        lambda root, _download: read_imagefolder(resolve_data_root(root)),
        {
            "standard": Recipe(
                "test/ (or val/) as test; val = a seeded 10% of train/, cut like random_split", _holdout_90_10
            ),
            "train_test": Recipe("all of train/, val = test/ (or val/)", _train_test),
        },
        mean=None,
        std=None,
    ),
}


def list_datasets() -> dict[str, str]:
    """Dataset names with a one-line description, for the CLI.

    >>> "digits" in list_datasets()
    True
    """
    return {name: info.description for name, info in _DATASETS.items()}


def list_recipes(name: str) -> dict[str, str]:
    """Recipe names of one dataset with a one-line description; the first is the default.

    >>> list(list_recipes("fashion_mnist"))
    ['standard', 'fmnist_90_10']
    """
    return {r: recipe.description for r, recipe in _dataset(name).recipes.items()}


def _dataset(name: str) -> _DatasetInfo:
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(_DATASETS)}")
    return _DATASETS[name]


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    recipe: str | None = None,
    seed: int = 0,
    flatten: bool = True,
    download: bool = False,
    device: Device = "cpu",
    subset: int | None = None,
) -> DatasetSplits:
    """Load ``name`` split by ``recipe`` (default: the dataset's first) as float32 tensors on ``device``.

    ``flatten`` gives (N, C*H*W) for MLPs, else (N, C, H, W). ``subset`` keeps the first N
    training examples (val and test are untouched), for fast tests. Pixels move to the device
    as uint8 and are scaled there: a quarter of the bytes to copy.

    >>> ds = load_dataset("fashion_mnist", recipe="fmnist_90_10", seed=42, device="cuda")
    >>> len(ds.train), len(ds.val), len(ds.test)
    (54000, 6000, 10000)
    """
    info = _dataset(name)
    recipe = recipe or next(iter(info.recipes))
    if recipe not in info.recipes:
        raise ValueError(f"unknown recipe {recipe!r} for {name!r}; choose one of {', '.join(info.recipes)}")
    if subset is not None and subset < 1:
        raise ValueError(f"subset must be a positive number of training examples, got {subset}")
    rec = info.recipes[recipe]
    official = info.load(root, download)
    train, val, test = rec.split(official.train, official.test, seed)
    if subset is not None:
        train = train[:subset]
    mean, std = rec.mean or info.mean, rec.std or info.std
    if mean is None or std is None:
        mean, std = channel_stats(official.train.x, info.max_value)
    num_classes = rec.num_classes or info.num_classes or len(official.classes or ())

    def prepare(s: Split) -> Split:
        return _scale(s.to(device), info.max_value, mean, std, flatten)

    train, val, test = map_shared((train, val, test), prepare)
    return DatasetSplits(name, train, val, test, num_classes, tuple(train.x.shape[1:]), recipe, official.source)


def channel_stats(x: Tensor, max_value: float = 255.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 NCHW pixels scaled to [0, 1], from histograms:
    exact, and no float copy of the whole split.

    >>> channel_stats(torch.tensor([[[[0, 255]]]], dtype=torch.uint8))
    ((0.5,), (0.5,))
    """
    values = torch.arange(256, dtype=torch.float64) / max_value
    means, stds = [], []
    for c in range(x.shape[1]):
        p = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        p /= p.sum()
        mean = float((p * values).sum())
        means.append(mean)
        stds.append(float((p * (values - mean) ** 2).sum().sqrt()))
    return tuple(means), tuple(stds)


def _scale(s: Split, max_value: float, mean: Sequence[float], std: Sequence[float], flatten: bool) -> Split:
    """uint8 -> float32 exactly as ToTensor + Normalize do it (divide, subtract, divide)."""
    x = s.x.float().div_(max_value)  # .float() copies, so the in-place ops never touch the source
    if any(m != 0.0 for m in mean) or any(d != 1.0 for d in std):
        x.sub_(torch.tensor(mean, device=x.device).view(-1, 1, 1))
        x.div_(torch.tensor(std, device=x.device).view(-1, 1, 1))
    return Split(x.flatten(1) if flatten else x, s.y)
