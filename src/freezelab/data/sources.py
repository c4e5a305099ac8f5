"""Where dataset files live and how they are read: data root, IDX parsing, torchvision, scikit-learn.

Each loader returns an :class:`Official`: the official (train, test) as fresh uint8 NCHW tensors
(digits has no official test: None) and the copy they came from. Decoded arrays are cached per
process, read-only. A missing file raises :class:`DatasetNotFoundError`, a damaged one
:class:`DataCorruptError`; both messages name the file and the fix in one line.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .splits import Split

# torchvision (~2 s) and scikit-learn (~1.5 s) are imported inside the functions that need them,
# so `freezelab --help` and `list_datasets()` stay fast.

__all__ = [
    "DataCorruptError",
    "DatasetNotFoundError",
    "Official",
    "read_cifar",
    "read_digits",
    "read_mnist_like",
    "read_idx",
    "resolve_data_root",
]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not under the data root; the message says where we looked and the fix."""


class DataCorruptError(DatasetNotFoundError, ValueError):
    """A dataset file is there but unreadable (truncated, garbled, wrong count); the message names it and the fix.

    A subclass of :class:`DatasetNotFoundError` because the usable data is just as absent, and
    every caller that reports missing data as one line (the CLI) then reports this too; also a
    ``ValueError``, which is what a bad file raised before, so old ``except ValueError`` still works.
    """


@dataclass(frozen=True)
class Official:
    """A dataset's official splits as read from disk (uint8 NCHW), and which copy they came from.

    ``source`` is what the run's summary records (``"official pickles"``, ``"JPEG copy ..."``);
    ``classes`` names the labels 0..K-1 when the files say so (ImageFolder trees).
    """

    train: Split
    test: Split | None
    source: str
    classes: tuple[str, ...] | None = None


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


_IDX_FIX = (
    "Fix: replace it with a good copy (delete it and load with download=True, on the command line --set download=true)"
)


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, _mtime_ns: int, _size: int, magic: int) -> np.ndarray:
    raw = Path(path).read_bytes()
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile, truncated stream, garbled deflate data
            raise DataCorruptError(f"{path} is not a readable gzip file ({e}). {_IDX_FIX}") from e
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big")
    if len(raw) >= 4 and found != magic:
        raise DataCorruptError(
            f"{path}: IDX magic {found}, expected {magic}; the file is corrupt or not this kind. {_IDX_FIX}"
        )
    if len(raw) < header:
        raise DataCorruptError(f"{path}: {len(raw)} bytes, too short for an IDX header; the file is truncated. {_IDX_FIX}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    if len(raw) - header != math.prod(dims):
        raise DataCorruptError(
            f"{path}: {len(raw) - header} data bytes, but the header says shape {dims}; "
            f"the file is truncated or corrupt. {_IDX_FIX}"
        )
    arr = np.frombuffer(raw, np.uint8, offset=header).reshape(dims)
    arr.flags.writeable = False
    return arr


def _not_found(
    name: str, root: Path, folder: Path, expected: Sequence[str], missing: Sequence[str], also: Path | None = None
) -> DatasetNotFoundError:
    """The one-line error for absent files; ``also`` is a second copy that would do (CIFAR-10's JPEG tar)."""
    partial = f" (missing {', '.join(missing)})" if list(missing) != list(expected) else ""
    other = f", and for {also}" if also else ""
    holds = f"{folder.relative_to(root)}/" + (f" or {also.relative_to(root)}" if also else "")
    staged = f" (for GPU runs: ../shared/tools/stage-data {also.parent.name}, then FREEZELAB_DATA=.data)" if also else ""
    return DatasetNotFoundError(
        f"dataset {name!r} not found: looked in {folder} for {', '.join(expected)}{partial}{other}. "
        f"Fix: set FREEZELAB_DATA (or pass --data-root / root=...) to a folder that holds {holds}{staged}, "
        f"or download it into {root} (download=True; on the command line --set download=true)"
    )


def fresh_split(x: np.ndarray, y: np.ndarray) -> Split:
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


def read_mnist_like(name: str, tv_class: str, root: Path, download: bool) -> Official:
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
    return Official(_idx_split(train_x, train_y), _idx_split(test_x, test_y), "official IDX files")


def _idx_split(images: Path, labels: Path) -> Split:
    x = read_idx(images, _IDX_IMAGES)
    y = read_idx(labels, _IDX_LABELS)
    if x.shape[1:] != (28, 28) or len(x) != len(y):
        raise DataCorruptError(
            f"{images} has shape {x.shape} and {labels} has {len(y)} labels; expected (N, 28, 28) and N. {_IDX_FIX}"
        )
    return fresh_split(x[:, None], y)


_CIFAR_FILES = {  # torchvision's folder and file names, so a missing dataset is reported without it
    "CIFAR10": ("cifar-10-batches-py", [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]),
    "CIFAR100": ("cifar-100-python", ["train", "test", "meta"]),
}


def cifar_pickles_missing(tv_class: str, root: Path) -> list[str]:
    """The official pickle files of CIFAR-10/100 that are not in torchvision's folder under ``root``."""
    subdir, files = _CIFAR_FILES[tv_class]
    return [f for f in files if not (root / subdir / f).is_file()]


def read_cifar(name: str, tv_class: str, root: Path, download: bool, also: Path | None = None) -> Official:
    """Train and test of CIFAR-10/100 from the official pickles through torchvision, as NCHW uint8.

    ``also`` is another copy the not-found message should mention (CIFAR-10's JPEG archive).
    """
    subdir, files = _CIFAR_FILES[tv_class]
    folder = root / subdir
    missing = cifar_pickles_missing(tv_class, root)
    if missing and download:
        from torchvision import datasets

        getattr(datasets, tv_class)(str(root), train=True, download=True)
        missing = cifar_pickles_missing(tv_class, root)
    if missing:
        raise _not_found(name, root, folder, files, missing, also)
    stamp = tuple((f, (folder / f).stat().st_mtime_ns) for f in files)
    train, test = _cifar_arrays(tv_class, str(root), stamp)
    return Official(fresh_split(*train), fresh_split(*test), "official pickles")


@functools.lru_cache(maxsize=2)
def _cifar_arrays(tv_class: str, root: str, _stamp: tuple) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Unpickle and convert NHWC -> NCHW once per process (torchvision also checks MD5s here)."""
    from torchvision import datasets

    out = []
    for train in (True, False):
        try:
            ds = getattr(datasets, tv_class)(root, train=train, download=False)
        except RuntimeError as e:  # torchvision checks every file's MD5: "Dataset not found or corrupted"
            raise DataCorruptError(
                f"{Path(root) / _CIFAR_FILES[tv_class][0]}: a pickle file fails torchvision's MD5 check ({e}). "
                f"Fix: delete the folder and load with download=True (on the command line --set download=true)"
            ) from e
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


def read_digits(_root: str | os.PathLike[str] | None, _download: bool) -> Official:
    """scikit-learn's bundled 8x8 digits: one pool, no official test split, no files, no network."""
    return Official(fresh_split(*_digits_arrays()), None, "scikit-learn's bundled digits")
