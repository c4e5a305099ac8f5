"""Image files -> uint8 arrays: decode with PIL, check that every image has one size, stack as NCHW."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from .sources import DataCorruptError

__all__ = ["decode_image", "stack_images"]


def decode_image(data: bytes, name: str, where: str, fix: str, formats: Sequence[str] | None = None) -> np.ndarray:
    """One image file's bytes as an (H, W, 3) uint8 RGB array, as torchvision's ImageFolder loader
    gives it (``convert("RGB")``, so grey and palette images get three equal channels).

    ``name`` (a member or file) and ``where`` (the archive or folder) make the error say which
    image is bad; ``formats`` (e.g. ``["JPEG"]``) skips PIL's format probing, a third of the time
    for tiny images.

    >>> decode_image(Path("cat.png").read_bytes(), "cat.png", "my/folder", "Fix: ...").shape
    (32, 32, 3)
    """
    from PIL import Image, UnidentifiedImageError  # comes with torchvision; imported here so `freezelab --help` stays fast

    try:
        with Image.open(io.BytesIO(data), formats=formats) as im:
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # PIL's ways of saying "not an image"
        reason = "PIL cannot identify its format" if isinstance(e, UnidentifiedImageError) else str(e)
        raise DataCorruptError(f"{where}: {name} is not a readable image ({reason}). {fix}") from e


def stack_images(images: Sequence[np.ndarray], names: Sequence[str], where: str, size_fix: str) -> np.ndarray:
    """Equal-sized (H, W, 3) arrays as one (N, 3, H, W) uint8 array.

    Images of different sizes are an error naming the first odd one: resizing them silently would
    decide the model's input resolution behind the user's back.
    """
    if not images:
        raise DataCorruptError(f"{where}: no images found. {size_fix}")
    first = images[0].shape
    for image, name in zip(images, names, strict=True):
        if image.shape != first:
            h, w = image.shape[:2]
            raise DataCorruptError(
                f"{where}: {name} is {w}x{h} pixels but {names[0]} is {first[1]}x{first[0]}; "
                f"all images must have one size. {size_fix}"
            )
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
