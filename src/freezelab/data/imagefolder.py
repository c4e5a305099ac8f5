"""Any ImageFolder tree (``dataset: imagefolder``, ``data_root: <tree>``) as uint8 NCHW tensors.

The tree is ``<root>/train/<class>/...`` plus ``<root>/test/<class>/...`` (or ``val/`` when there
is no ``test/``), read the way ``torchvision.datasets.ImageFolder`` reads it: classes are the
sorted sub-folder names of ``train/`` (labels 0..K-1 in that order), files are walked in sorted
order (sub-folders included), extensions as torchvision's ``IMG_EXTENSIONS``, pixels as
``convert("RGB")``. Every image must have one size: the data is held as one tensor, and resizing
behind the user's back would pick the model's resolution for them.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .images import decode_image, stack_images
from .sources import DataCorruptError, DatasetNotFoundError, Official, fresh_split

__all__ = ["IMG_EXTENSIONS", "read_imagefolder"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
_LAYOUT = (
    "dataset 'imagefolder' reads the tree at data_root: <root>/train/<class>/<image> and "
    "<root>/test/<class>/<image> (or val/ instead of test/)"
)
_FIX_ROOT = "Fix: set data_root (--data-root, or --set data_root=...) to such a folder"
_FIX_IMAGE = "Fix: replace or remove that file"
_FIX_SIZE = "Fix: resize the images to one size first (e.g. with PIL's Image.resize), or drop the odd ones"


def read_imagefolder(root: Path) -> Official:
    """Train and test of an ImageFolder tree; ``source`` is ``"imagefolder <root>"``.

    >>> read_imagefolder(Path("pets")).classes
    ('cat', 'dog')
    """
    train_dir = root / "train"
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        missing = [d for d, ok in (("train/", train_dir.is_dir()), ("test/ or val/", test_dir is not None)) if not ok]
        raise DatasetNotFoundError(f"{_LAYOUT}; {root} has no {' and no '.join(missing)}. {_FIX_ROOT}")
    classes = tuple(sorted(e.name for e in os.scandir(train_dir) if e.is_dir()))
    if not classes:
        raise DatasetNotFoundError(f"{_LAYOUT}; {train_dir} has no class folders. {_FIX_ROOT}")
    x_train, y_train = _decoded(str(root), _stamp(train_dir, classes))
    x_test, y_test = _decoded(str(root), _stamp(test_dir, classes))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataCorruptError(
            f"imagefolder {root}: train/ images are {x_train.shape[3]}x{x_train.shape[2]} pixels but "
            f"{test_dir.name}/ images are {x_test.shape[3]}x{x_test.shape[2]}; all images must have one size. {_FIX_SIZE}"
        )
    return Official(fresh_split(x_train, y_train), fresh_split(x_test, y_test), f"imagefolder {root}", classes)


def _stamp(split_dir: Path, classes: tuple[str, ...]) -> tuple[tuple[str, int, int, int], ...]:
    """(file, mtime, size, label) of every image under ``split_dir``, in ImageFolder's order."""
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DatasetNotFoundError(
            f"{split_dir} has class folders {', '.join(unknown)} that {split_dir.parent / 'train'} lacks; "
            f"train/ must hold every class. {_FIX_ROOT}"
        )
    files = []
    for label, cls in enumerate(classes):
        for folder, _, names in sorted(os.walk(split_dir / cls, followlinks=True)):
            for name in sorted(names):
                if name.lower().endswith(IMG_EXTENSIONS):
                    st = (Path(folder) / name).stat()
                    files.append((str(Path(folder) / name), st.st_mtime_ns, st.st_size, label))
    if not files:
        raise DatasetNotFoundError(f"{_LAYOUT}; {split_dir} holds no images ({', '.join(IMG_EXTENSIONS)}). {_FIX_ROOT}")
    return tuple(files)


@functools.lru_cache(maxsize=4)
def _decoded(root: str, stamp: tuple[tuple[str, int, int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Decode one split once per process and per state of its files (``stamp``)."""
    where = f"imagefolder {root}"
    names = [os.path.relpath(path, root) for path, *_ in stamp]
    images = [decode_image(Path(path).read_bytes(), name, where, _FIX_IMAGE) for (path, *_), name in zip(stamp, names)]
    x = stack_images(images, names, where, _FIX_SIZE)
    y = np.array([label for *_, label in stamp], dtype=np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y
