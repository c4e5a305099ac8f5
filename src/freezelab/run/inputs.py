"""How a run's stored batches become its model's input: augmentation, resize, memory format, precision.

The dataset lives on the device as float32 NCHW images (or flat vectors for MLPs); what the
model sees differs by phase:

* **training** batches are augmented (random crop with zero padding and horizontal flip, when
  the config asks for ``augment: crop_flip``), resized to the model's input size (a ViT-S/16
  takes 224 px, CIFAR is 32 px) and laid out channels-last when the plan says so;
* **evaluation** batches (validation, test, the gradient probe, group tracing) get the resize
  and the layout, never the augmentation.

The augmentation draws are a pure function of (seed, epoch, step)
(:mod:`freezelab.data.augment`), never of the global RNG: every schedule of a seed sees the same
augmented batches, the eager and graph steppers draw the same ones (the graph path uploads an
epoch's draws at once and indexes them on the device), and a resumed run redraws exactly what
the uninterrupted one drew.

Precision is autocast: the forward pass (and so the backward's matrix products) runs in
bfloat16, parameters, optimizer state and the loss stay float32, as with ``torch.autocast``
everywhere. Autocast's weight-cast cache is off, as CUDA graph capture needs (a cached cast
would be captured once and replayed stale after an update).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from ..data.augment import apply_crop_flip, crop_flip_params, epoch_crop_flip_params, resize_batch

__all__ = ["Inputs", "Draws", "AUGMENTATIONS", "PRECISIONS", "PLAIN"]

#: ``augment`` options: what a training batch gets before the model sees it.
AUGMENTATIONS = {"none": "no augmentation (the MLP recipes of seeds 000, 001 and 004 had none)",
                 "crop_flip": "random crop with 4 px zero padding and horizontal flip (the CIFAR standard)",
                 "flip": "horizontal flip only"}
#: ``precision`` options (``auto`` is decided by the plan: bf16 for image models on CUDA).
PRECISIONS = ("auto", "fp32", "bf16")

Draws = tuple[Tensor, Tensor, Tensor]  # (dy, dx, flipped) per image, see freezelab.data.augment


@dataclass(frozen=True)
class Inputs:
    """A run's input pipeline; built from its config and plan (:func:`freezelab.run.build.build_run`).

    >>> inputs = Inputs(augment="crop_flip", seed=0, size=None, channels_last=False, bf16=False, device_type="cpu")
    >>> xb = inputs.train(x[idx], inputs.step_draws(epoch=0, step=0, n=len(idx), device=x.device))
    """

    augment: str  # a key of AUGMENTATIONS
    seed: int
    size: int | None  # square side the model takes (None: the data's own)
    channels_last: bool
    bf16: bool
    device_type: str

    @property
    def padding(self) -> int:
        return 4 if self.augment == "crop_flip" else 0

    @property
    def augments(self) -> bool:
        return self.augment != "none"

    def step_draws(self, *, epoch: int, step: int, n: int, device: torch.device) -> Draws | None:
        """The draws of one training step, on ``device`` (``None`` without augmentation)."""
        if not self.augments:
            return None
        draws = crop_flip_params(n, seed=self.seed, epoch=epoch, step=step, padding=self.padding)
        return tuple(t.to(device) for t in draws)  # type: ignore[return-value]

    def epoch_draws(self, *, epoch: int, batch_sizes: list[int], device: torch.device) -> Draws | None:
        """The draws of every step of an epoch, in batch order (``None`` without augmentation)."""
        if not self.augments:
            return None
        draws = epoch_crop_flip_params(batch_sizes, seed=self.seed, epoch=epoch, padding=self.padding)
        return tuple(t.to(device) for t in draws)  # type: ignore[return-value]

    def train(self, x: Tensor, draws: Draws | None) -> Tensor:
        """A training batch as the model takes it: augmented with ``draws``, resized, laid out."""
        if draws is not None:
            x = apply_crop_flip(x, *draws, padding=self.padding)
        return self.eval(x)

    def eval(self, x: Tensor) -> Tensor:
        """An evaluation batch as the model takes it: resized and laid out, not augmented."""
        if self.size is not None and x.ndim == 4:
            x = resize_batch(x, self.size)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision: bfloat16 autocast, or nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16, cache_enabled=False)

    @property
    def eval_chunk(self) -> int:
        """Examples per evaluation forward: resized inputs (224 px) are 49x larger than CIFAR's."""
        return 1024 if self.size is not None else 8192


#: The stored tensors as they are, in float32: for evaluating a model outside a run.
PLAIN = Inputs(augment="none", seed=0, size=None, channels_last=False, bf16=False, device_type="cpu")
