"""The eager stepper on a cached frozen prefix: the suffix trains on features computed once per example.

What may be cached, and the cache itself, are :mod:`freezelab.run.prefix_cache`; this module only
puts the cache in the eager loop's way, so that the loop itself stays
:class:`~freezelab.run.steppers.EagerStepper`'s (kept apart from ``prefix_cache`` because
``build`` asks that one what a run may cache, and the steppers know of ``build``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..config import ConfigError
from .prefix_cache import PrefixCache, frozen_for_rest, prefix_depth
from .steppers import EagerStepper, StepRecord

if TYPE_CHECKING:
    from .build import Run

__all__ = ["CachedStepper"]


class CachedStepper(EagerStepper):
    """The eager stepper, training the suffix on cached prefix outputs wherever a prefix is frozen for good.

    At the start of each epoch it asks the schedule which groups stay frozen for the rest of the
    run, grows the cache to the deepest valid prefix, and runs the plain eager epoch with the
    suffix and the cached features standing in for the model and the training inputs. The
    freezer still manages the whole model; evaluation still sees the whole model.
    """

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        if not isinstance(run.model, nn.Sequential):
            raise ConfigError(f"cache_frozen_prefix needs an nn.Sequential model, got {type(run.model).__name__}")
        self.cache = PrefixCache(run.model, run.data.train.x, prepare=run.inputs.eval, precision=run.inputs.autocast)

    def run_epoch(self, epoch: int, perm: torch.Tensor, bar=None) -> StepRecord:
        run = self.run
        spe, epochs = run.steps_per_epoch, run.config.epochs
        frozen = frozen_for_rest(run.freezer, epoch * spe, spe, epochs)
        self.cache.advance(prefix_depth(run.model, run.groups, frozen, run.config.bn_stats))
        if self.cache.depth == 0:
            return super().run_epoch(epoch, perm, bar)
        model, data, inputs = run.model, run.data, run.inputs
        run.model = self.cache.suffix
        run.data = dataclasses.replace(data, train=dataclasses.replace(data.train, x=self.cache.features))
        run.inputs = dataclasses.replace(inputs, size=None, channels_last=False)  # the features are already as the suffix takes them
        try:
            return super().run_epoch(epoch, perm, bar)
        finally:
            run.model, run.data, run.inputs = model, data, inputs

