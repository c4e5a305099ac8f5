"""CIFAR-10 from the JPEG copy (``CIFAR10-JPEG/cifar10-jpeg.tar.gz``): decoded once, cached by the archive's hash.

The archive holds ``cifar10-jpeg/{train,test}/<class>/NNNN.jpg`` (one 32x32 RGB JPEG per image,
NNNN = the image's rank within its class in the original files) and
``cifar10-jpeg/train_original_order.txt``, whose line i+1 names the file of training image i of
the original ``data_batch_1..5``. Training images come back in that original order, so seeded
splits index the same images as they would in the official pickles; test images come back by
class, then number (the archive records no original test order).

It is a lossy copy (PSNR 30.5 dB against the originals): ``SOURCE`` says so in every run's record.
"""

from __future__ import annotations

import functools
import gzip
import logging
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from .cache import cache_root, cached_arrays, file_sha256
from .images import decode_image
from .sources import DataCorruptError, Official, fresh_split

__all__ = ["ARCHIVE", "CLASSES", "COUNTS", "SOURCE", "decode_archive", "read_cifar10_jpeg"]

log = logging.getLogger("freezelab.data")

ARCHIVE = Path("CIFAR10-JPEG") / "cifar10-jpeg.tar.gz"  # under the data root
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")  # labels 0..9
COUNTS = {"train": 50_000, "test": 10_000}
SOURCE = "JPEG copy (lossy, PSNR 30.5 dB)"
_ORDER_FILE = "train_original_order.txt"
_CHUNK = 1 << 20
_CACHE_VERSION = 1  # bump when the decoded arrays would change for the same archive
_FIX = (
    "Fix: copy the archive again (for GPU runs: ../shared/tools/stage-data CIFAR10-JPEG), "
    "or put the official pickles in cifar-10-batches-py/ beside it (download=True fetches them)"
)


def read_cifar10_jpeg(archive: Path) -> Official:
    """Train and test of the JPEG copy as uint8 NCHW, from the cache when it holds this archive.

    The first call decodes the 60,000 JPEGs (12 s of CPU time; 43 s of wall time on a busy 2-core
    machine) and writes ``<cache_root()>/decoded/cifar10-jpeg-v1-<sha256>.npz`` (185 MB); later
    runs load and verify it in about 1.5 s, and later calls in one process reuse the arrays.
    """
    cache_file = cache_root() / "decoded" / f"cifar10-jpeg-v{_CACHE_VERSION}-{file_sha256(archive)}.npz"
    x_train, y_train, x_test, y_test = _arrays(str(archive), str(cache_file))
    return Official(fresh_split(x_train, y_train), fresh_split(x_test, y_test), SOURCE, CLASSES)


@functools.lru_cache(maxsize=1)
def _arrays(archive: str, cache_file: str) -> tuple[np.ndarray, ...]:
    arrays = cached_arrays(Path(cache_file), lambda: decode_archive(Path(archive)))
    out = tuple(arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    for a in out:
        a.flags.writeable = False  # shared by every caller in this process
    return out


def decode_archive(archive: Path) -> dict[str, np.ndarray]:
    """Read the archive in one streaming pass, check its layout, counts and order file, decode every JPEG.

    Returns ``x_train`` (N, 3, 32, 32) uint8 in the original training order, ``y_train`` int64,
    ``x_test``, ``y_test``. Any damage raises :class:`DataCorruptError` naming the archive (and
    the member, for an undecodable image).
    """
    start = time.perf_counter()
    log.info("decoding %s once; the arrays are cached for later runs", archive)
    blobs: dict[str, dict[str, bytes]] = {"train": {}, "test": {}}  # split -> "class/NNNN.jpg" -> JPEG bytes
    order_text = None
    try:
        with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz:
            tar = tarfile.open(fileobj=gz, mode="r|")  # a stream: one sequential read of the gzip
            for member in tar:
                if not member.isfile():
                    continue
                parts = member.name.split("/")
                if parts[-1] == _ORDER_FILE:
                    order_text = _read(tar, member).decode("utf-8", errors="replace")
                elif parts[-1].lower().endswith(".jpg") and len(parts) >= 3 and parts[-3] in blobs:
                    split, cls, file = parts[-3:]
                    if cls not in CLASSES:
                        raise DataCorruptError(
                            f"{archive}: member {member.name} is in an unknown class folder {cls!r} "
                            f"(expected one of {', '.join(CLASSES)}). {_FIX}"
                        )
                    blobs[split][f"{cls}/{file}"] = _read(tar, member)
            # tarfile stops quietly at a garbled header; gzip checks its CRC only at the very end of the data
            while gz.read(_CHUNK):
                pass
    except DataCorruptError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:  # truncated or garbled gzip/tar
        raise DataCorruptError(f"{archive} is damaged: {type(e).__name__}: {e}. {_FIX}") from e
    for split, expected in COUNTS.items():
        if len(blobs[split]) != expected:
            raise DataCorruptError(
                f"{archive} holds {len(blobs[split])} {split} images, expected {expected}; "
                f"the archive is incomplete or not this dataset. {_FIX}"
            )
    keys = {
        "train": _training_order(archive, order_text, blobs["train"]),
        "test": sorted(blobs["test"], key=lambda k: (CLASSES.index(k.split("/")[0]), k)),
    }
    arrays = {}
    for split, split_keys in keys.items():
        members = [f"cifar10-jpeg/{split}/{k}" for k in split_keys]
        arrays[f"x_{split}"] = _decode_jpegs(archive, [blobs[split][k] for k in split_keys], members)
        arrays[f"y_{split}"] = np.array([CLASSES.index(k.split("/")[0]) for k in split_keys], dtype=np.int64)
    log.info("decoded %d images in %.1f s", sum(len(v) for v in blobs.values()), time.perf_counter() - start)
    return arrays


def _decode_jpegs(archive: Path, blobs: list[bytes], members: list[str]) -> np.ndarray:
    """32x32 JPEGs -> (N, 3, 32, 32) uint8, decoded by torchvision in one call.

    torchvision's batch decode gives the same pixels as PIL (checked on all 60,000 images of the
    copy) in less than half the time (no per-image Python parsing). When it fails, PIL decodes
    each image in turn to name the bad member.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        images = decode_jpeg([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs], mode=ImageReadMode.RGB)
    except RuntimeError as e:
        for blob, member in zip(blobs, members, strict=True):
            decode_image(blob, f"member {member}", str(archive), _FIX, ["JPEG"])  # raises, naming the member
        raise DataCorruptError(f"{archive}: torchvision cannot decode its JPEGs ({e}). {_FIX}") from e
    for image, member in zip(images, members, strict=True):
        if image.shape != (3, 32, 32):
            raise DataCorruptError(
                f"{archive}: member {member} is {image.shape[2]}x{image.shape[1]} pixels, not CIFAR-10's 32x32. {_FIX}"
            )
    return torch.stack(images).numpy()


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    assert f is not None, "regular files always have data"
    return f.read()


def _training_order(archive: Path, order_text: str | None, train: dict[str, bytes]) -> list[str]:
    """The ``class/NNNN.jpg`` keys of the training images in the original order, checked to list each once."""
    if order_text is None:
        raise DataCorruptError(f"{archive} has no {_ORDER_FILE}, so the original training order is unknown. {_FIX}")
    keys = [line.strip() for line in order_text.splitlines() if line.strip() and not line.startswith("#")]
    if len(keys) != len(train) or set(keys) != set(train):
        raise DataCorruptError(
            f"{archive}: {_ORDER_FILE} lists {len(keys)} lines ({len(set(keys) & set(train))} distinct training "
            f"images) for {len(train)} training images; it must name each exactly once. {_FIX}"
        )
    return keys
