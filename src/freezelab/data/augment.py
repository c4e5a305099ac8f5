"""Augmentation of a batch already on the device: random crop with padding, horizontal flip, resize.

A pure function of (batch, seed, epoch, step): the crop offsets and flips are drawn from a CPU
generator seeded by those three numbers alone, then moved to the batch's device. So every
schedule of a seed sees exactly the same augmented batches (given the same batch order), on CPU
and CUDA alike, whatever else drew random numbers. It is vectorised: one pad, then two
``gather`` calls with per-image offsets; no Python loop over images.

    >>> for step, idx in enumerate(batches.epoch_batches(epoch)):
    ...     xb = augment_crop_flip(train.x[idx], seed=cfg.seed, epoch=epoch, step=step)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["augment_crop_flip", "apply_crop_flip", "crop_flip_params", "epoch_crop_flip_params", "resize_batch"]

_AUGMENT_STREAM = 0x617567  # "aug": keeps these seeds apart from the batch order's SeedSequence([seed, epoch])


def _seed(seed: int, epoch: int, step: int) -> int:
    """One 64-bit seed from (seed, epoch, step). A spawn key is needed: SeedSequence pads its entropy
    with zeros, so ``[seed, epoch, 0]`` alone would equal the batch order's ``[seed, epoch]``."""
    if min(seed, epoch, step) < 0:
        raise ValueError(f"seed, epoch and step must be >= 0; got {seed}, {epoch}, {step}")
    sequence = np.random.SeedSequence([seed, epoch, step], spawn_key=(_AUGMENT_STREAM,))
    return int(sequence.generate_state(1, np.uint64)[0])


def crop_flip_params(
    n: int, *, seed: int, epoch: int, step: int, padding: int = 4, flip: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """The random draws of :func:`augment_crop_flip` for a batch of ``n``, on the CPU.

    Returns (dy, dx, flipped): int64 crop offsets in ``[0, 2 * padding]`` into the padded image,
    and a bool per image. Drawn in that order from one generator, so they depend on nothing else.

    >>> dy, dx, flipped = crop_flip_params(512, seed=0, epoch=3, step=17)
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    generator = torch.Generator().manual_seed(_seed(seed, epoch, step))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flipped = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return offsets[0], offsets[1], flipped


def augment_crop_flip(
    x: Tensor,
    *,
    seed: int,
    epoch: int,
    step: int,
    padding: int = 4,
    flip: bool = True,
    out_size: int | tuple[int, int] | None = None,
) -> Tensor:
    """Pad each image of an (N, C, H, W) batch by ``padding`` zeros, take a random HxW crop, flip half
    of them horizontally, then resize to ``out_size`` if given (bilinear, e.g. 32 -> 224 for a ViT).

    Works on any device and dtype (uint8 or float; the dtype is kept). Zero padding is the mean
    pixel once images are normalised, as in ``torchvision``'s ``RandomCrop(padding=4)`` on
    normalised tensors. The result is a new contiguous NCHW tensor; the input is not modified.

    >>> xb = augment_crop_flip(train.x[idx], seed=0, epoch=3, step=17)  # same (0, 3, 17), same batch
    """
    if x.ndim != 4:
        raise ValueError(f"augment_crop_flip needs an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    params = crop_flip_params(len(x), seed=seed, epoch=epoch, step=step, padding=padding, flip=flip)
    out = apply_crop_flip(x, *(t.to(x.device, non_blocking=True) for t in params), padding=padding)
    return resize_batch(out, out_size) if out_size is not None else out


def apply_crop_flip(x: Tensor, dy: Tensor, dx: Tensor, flipped: Tensor, *, padding: int) -> Tensor:
    """Crop and flip an (N, C, H, W) batch with given draws (on ``x``'s device): device work only.

    The part of :func:`augment_crop_flip` that a CUDA graph can capture: the draws are inputs,
    so a graph replays it with the draws of the step it is at (:func:`epoch_crop_flip_params`).
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4) if padding else x
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (N, H): source rows of each output row
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (N, W): source columns, reversed where flipped
    cols = torch.where(flipped[:, None], cols.flip(1), cols)
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, padded.shape[3]))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def epoch_crop_flip_params(
    batch_sizes: list[int], *, seed: int, epoch: int, padding: int = 4, flip: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """The draws of every step of an epoch, concatenated in batch order (step ``i`` of size ``batch_sizes[i]``).

    Exactly the draws :func:`augment_crop_flip` makes step by step, so a fast path that uploads
    them once per epoch and indexes them on the device augments bit-identically.

    >>> dy, dx, flipped = epoch_crop_flip_params([512] * 97 + [336], seed=0, epoch=3)
    """
    draws = [crop_flip_params(n, seed=seed, epoch=epoch, step=i, padding=padding, flip=flip)
             for i, n in enumerate(batch_sizes)]
    return tuple(torch.cat(parts) for parts in zip(*draws))  # type: ignore[return-value]


def resize_batch(x: Tensor, out_size: int | tuple[int, int]) -> Tensor:
    """Bilinear resize of an (N, C, H, W) batch to ``out_size`` (an int means square), keeping the dtype.

    Computed in float32 (uint8 is rounded back, so 0..255 stays exact at the same size);
    antialiased when shrinking, like ``torchvision.transforms.Resize``. Use it alone for evaluation
    batches of a model trained on :func:`augment_crop_flip` with ``out_size``.

    >>> resize_batch(torch.zeros(2, 3, 32, 32), 224).shape
    torch.Size([2, 3, 224, 224])
    """
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"out_size must be a positive int or (height, width), got {out_size!r}")
    if tuple(x.shape[2:]) == size:
        return x
    shrink = size[0] < x.shape[2] or size[1] < x.shape[3]
    y = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)
    if x.dtype.is_floating_point:
        return y.to(x.dtype)
    info = torch.iinfo(x.dtype)
    return y.round_().clamp_(info.min, info.max).to(x.dtype)
