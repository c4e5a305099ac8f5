"""Where dataset files live and how they are read: data root, IDX parsing, torchvision, scikit-learn.

Each loader returns the official (train, test) as fresh uint8 NCHW tensors; digits has no
official test and returns None for it. Decoded arrays are cached per process, read-only.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .splits import Split

# torchvision (~2 s) and scikit-learn (~1.5 s) are imported inside the functions that need them,
# so `freezelab --help` and `list_datasets()` stay fast.

__all__ = ["DatasetNotFoundError", "read_cifar", "read_digits", "read_mnist_like", "read_idx", "resolve_data_root"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not under the data root; the message says where we looked and the fix."""


def resolve_data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where datasets live: ``root`` (CLI ``--data-root``) > ``$FREEZELAB_DATA`` > the user cache.

    The cache is ``$XDG_CACHE_HOME/freezelab/data``, else ``~/.cache/freezelab/data``. Nothing is
    created here; only a download writes.

    >>> resolve_data_root("/data")
    PosixPath('/data')
    """
    if root is None:
        root = os.environ.get("FREEZELAB_DATA") or None
    if root is None:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root = Path(cache) / "freezelab" / "data"
    return Path(root).expanduser().absolute()


_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # magic numbers: unsigned bytes with 3 dims / 1 dim


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """Decode an IDX file (``.gz`` or uncompressed) after checking its magic number.

    Parsed directly with gzip + numpy because torchvision gunzips next to the ``.gz`` and the
    shared data folder is read-only. Cached on (path, mtime, size): a sweep decodes each file once.
    The array is read-only because every caller shares it.

    >>> read_idx("MNIST/raw/t10k-labels-idx1-ubyte.gz", 2049).shape
    (10000,)
    """
    p = Path(path).absolute()
    st = p.stat()
    return _read_idx_cached(str(p), st.st_mtime_ns, st.st_size, magic)


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, _mtime_ns: int, _size: int, magic: int) -> np.ndarray:
    raw = Path(path).read_bytes()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: IDX magic {found}, expected {magic}; the file is corrupt or not this kind")
    ndim = magic & 0xFF
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    header = 4 + 4 * ndim
    if len(raw) - header != math.prod(dims):
        raise ValueError(f"{path}: {len(raw) - header} data bytes, but the header says shape {dims}")
    arr = np.frombuffer(raw, np.uint8, offset=header).reshape(dims)
    arr.flags.writeable = False
    return arr


def _not_found(
    name: str, root: Path, folder: Path, expected: Sequence[str], missing: Sequence[str]
) -> DatasetNotFoundError:
    partial = f" (missing {', '.join(missing)})" if list(missing) != list(expected) else ""
    return DatasetNotFoundError(
        f"dataset {name!r} not found: looked in {folder} for {', '.join(expected)}{partial}. "
        f"Fix: set FREEZELAB_DATA (or pass --data-root / root=...) to a folder that holds "
        f"{folder.relative_to(root)}/, or download it into {root} (download=True; on the command line --set download=true)"
    )


def _fresh(x: np.ndarray, y: np.ndarray) -> Split:
    """Tensors copied out of a cached read-only array, so no caller can write into the cache."""
    return Split(torch.tensor(x), torch.tensor(y, dtype=torch.int64))


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_paths(folder: Path) -> list[Path | None]:
    """Each MNIST file, uncompressed if present (faster), else ``.gz``, else None."""
    found: list[Path | None] = []
    for base in _MNIST_FILES:
        candidates = [folder / base, folder / f"{base}.gz"]
        found.append(next((c for c in candidates if c.is_file()), None))
    return found


def read_mnist_like(name: str, tv_class: str, root: Path, download: bool) -> tuple[Split, Split]:
    """Train and test of MNIST or Fashion-MNIST from torchvision's layout ``root/<Class>/raw``."""
    folder = root / tv_class / "raw"
    paths = _idx_paths(folder)
    if None in paths and download:
        from torchvision import datasets  # only here: it gunzips in place, so parse after it

        for train in (True, False):
            getattr(datasets, tv_class)(str(root), train=train, download=True)
        paths = _idx_paths(folder)
    if None in paths:
        expected = [f"{base}.gz" for base in _MNIST_FILES]
        missing = [f for f, p in zip(expected, paths, strict=True) if p is None]
        raise _not_found(name, root, folder, expected, missing)
    train_x, train_y, test_x, test_y = paths
    return _idx_split(train_x, train_y), _idx_split(test_x, test_y)


def _idx_split(images: Path, labels: Path) -> Split:
    x = read_idx(images, _IDX_IMAGES)
    y = read_idx(labels, _IDX_LABELS)
    if x.shape[1:] != (28, 28) or len(x) != len(y):
        raise ValueError(f"{images} has shape {x.shape} and {labels} has {len(y)} labels; expected (N, 28, 28) and N")
    return _fresh(x[:, None], y)


_CIFAR_FILES = {  # torchvision's folder and file names, so a missing dataset is reported without it
    "CIFAR10": ("cifar-10-batches-py", [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]),
    "CIFAR100": ("cifar-100-python", ["train", "test", "meta"]),
}


def read_cifar(name: str, tv_class: str, root: Path, download: bool) -> tuple[Split, Split]:
    """Train and test of CIFAR-10/100 through torchvision, as NCHW uint8 tensors."""
    subdir, files = _CIFAR_FILES[tv_class]
    folder = root / subdir
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        from torchvision import datasets

        getattr(datasets, tv_class)(str(root), train=True, download=True)
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise _not_found(name, root, folder, files, missing)
    stamp = tuple((f, (folder / f).stat().st_mtime_ns) for f in files)
    train, test = _cifar_arrays(tv_class, str(root), stamp)
    return _fresh(*train), _fresh(*test)


@functools.lru_cache(maxsize=2)
def _cifar_arrays(tv_class: str, root: str, _stamp: tuple) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Unpickle and convert NHWC -> NCHW once per process (torchvision also checks MD5s here)."""
    from torchvision import datasets

    out = []
    for train in (True, False):
        ds = getattr(datasets, tv_class)(root, train=train, download=False)
        x = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
        y = np.asarray(ds.targets, dtype=np.int64)
        x.flags.writeable = y.flags.writeable = False
        out.append((x, y))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8)[:, None]  # integer pixel counts 0..16, so uint8 is exact
    y = d.target.astype(np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def read_digits(_root: str | os.PathLike[str] | None, _download: bool) -> tuple[Split, None]:
    """scikit-learn's bundled 8x8 digits: one pool, no official test split, no files, no network."""
    return _fresh(*_digits_arrays()), None
