"""Caching a frozen prefix's outputs: compute them once per example, then train only the suffix.

A prefix that is frozen for the rest of the run already costs no backward pass (autograd
records nothing upstream of the first trainable parameter). Its *forward* pass still runs at
every step, on the same examples, and gives the same outputs each time, provided nothing
random or stateful happens in it. In that case its outputs can be computed once for the
whole training set and indexed like the data (AutoFreeze and Egeria do this).

The cache is **exact** only when the prefix computes a fixed function of each example:

* no augmentation of the inputs (a crop or flip changes the example at every epoch);
* no dropout in the prefix (a new mask at every step);
* no batch-statistics norms in training mode in the prefix: BatchNorm normalises with the
  batch's statistics and moves its running ones. With ``bn_stats: frozen`` a frozen norm is
  in eval mode and is a fixed function; per-example norms (LayerNorm, GroupNorm) always are.

Supported models: ``nn.Sequential`` ones (the seed MLPs, ``mlp``, ``small_cnn``). The prefix
is the first ``k`` children, the largest ``k`` whose parameters are all frozen at every
remaining step of the run (schedules are pure, so this is cheap to ask), that stops before the
first dropout and, under ``bn_stats: train``, the first batch-statistics norm. The check runs
at the start of every epoch and the cache only ever grows, from the cached features, when a
later epoch freezes more. The prefix sees its inputs as the uncached forward does (the run's
resize and memory layout, under its autocast precision), so the cached features are the very
tensors the uncached forward would compute (bf16 ones under bf16 autocast).

``cache_frozen_prefix`` in the config: ``off``; ``auto`` (the default) caches when valid;
``on`` also caches, and refuses with one line where the cache could never apply. The cache
runs on the eager stepper: :class:`freezelab.run.cached_stepper.CachedStepper` swaps the suffix and the cached features in
for the model and the training inputs during an epoch's steps, so the loop itself is the
plain :class:`~freezelab.run.steppers.EagerStepper` one. Evaluation and the gradient probe
still run the whole model on the raw data.

Cost: the features of the whole training set live on the training device, e.g. 50,000 x 256
float32 values (51 MB) for an MLP's first hidden layer.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ..config import ConfigError
from ..freezer import Freezer
from ..groups import GroupSet
from ..schedules import Clock

__all__ = ["MODES", "PrefixCache", "cache_problem", "check_request", "frozen_for_rest", "prefix_depth"]

MODES = ("auto", "off", "on")


def _random_or_stateful(module: nn.Module, bn_stats: str) -> str | None:
    """Why ``module`` may not be part of a cached prefix (``None``: it is a fixed function)."""
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
        return "dropout"
    if isinstance(module, nn.modules.batchnorm._NormBase) and bn_stats == "train":
        return "a batch-statistics norm in training mode (bn_stats: train)"
    return None


def cache_problem(model: nn.Module, augment: str | None, bn_stats: str) -> str | None:
    """Why no prefix of ``model`` can ever be cached in this run, or ``None`` if one can.

    A prefix must end on or after the first child with parameters; dropout or a train-mode
    batch norm *after* it only limits how deep the cache goes (:func:`prefix_depth`), while one
    *before* it (or in it) rules the cache out.

    >>> cache_problem(nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 2)), None, "train")
    'dropout comes before the first layer (Dropout at 0)'
    >>> cache_problem(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)), None, "train") is None
    True
    """
    if augment not in (None, "none"):
        return f"augmentation {augment!r} changes every example at every epoch"
    if not isinstance(model, nn.Sequential):
        return f"{type(model).__name__} is not an nn.Sequential (the cache needs a prefix of children)"
    for k, child in enumerate(model.children()):
        why = next((w for m in child.modules() if (w := _random_or_stateful(m, bn_stats))), None)
        if why is not None:
            return f"{why} comes before the first layer ({type(child).__name__} at {k})"
        if any(True for _ in child.parameters()):
            return None
    return "the model has no parameters"


def check_request(mode: str, model: nn.Module, augment: str | None, bn_stats: str, stepper: str) -> bool:
    """Whether this run caches its frozen prefix; :class:`ConfigError` (one line) if ``on`` cannot be honoured.

    ``auto`` caches when :func:`cache_problem` finds nothing and the run steps eagerly.
    """
    if mode not in MODES:
        raise ConfigError(f"cache_frozen_prefix must be one of {list(MODES)}, got {mode!r}")
    if mode == "off":
        return False
    problem = cache_problem(model, augment, bn_stats)
    if problem is None and stepper != "eager":
        problem = f"the {stepper} stepper runs the whole model (the cache runs on the eager stepper: set fast: off)"
    if problem is not None and mode == "on":
        raise ConfigError(f"cache_frozen_prefix: on cannot be honoured: {problem}; use cache_frozen_prefix: auto or off")
    return problem is None


def frozen_for_rest(freezer: Freezer, step: int, steps_per_epoch: int, epochs: int) -> frozenset[str]:
    """The groups frozen at every step from ``step`` to the end of the run (pure schedules: cheap)."""
    names = frozenset(freezer.groups.names)
    frozen = names
    for s in range(step, steps_per_epoch * epochs):
        frozen = frozen - freezer.wanted(Clock.at(s, steps_per_epoch, epochs))
        if not frozen:
            break
    return frozen


def prefix_depth(model: nn.Sequential, groups: GroupSet, frozen: frozenset[str], bn_stats: str) -> int:
    """How many leading children of ``model`` are fixed functions: every parameter frozen, nothing random."""
    owner = {p: g.name for g in groups for p in g.param_names}
    depth = 0
    for k, (name, child) in enumerate(model.named_children()):
        if any(_random_or_stateful(m, bn_stats) for m in child.modules()):
            break
        params = [f"{name}.{n}" for n, _ in child.named_parameters()]
        if any(owner.get(p) not in frozen for p in params):
            break
        if params or depth:  # parameter-free children lead into the prefix only once it holds a frozen layer
            depth = k + 1
    return depth


def _children(model: nn.Sequential, start: int, stop: int | None) -> nn.Sequential:
    """``model[start:stop]`` as a plain ``nn.Sequential`` sharing the modules (a subclass's own
    slicing would call its constructor, which for :class:`~freezelab.models.MLP` needs widths)."""
    return nn.Sequential(OrderedDict(list(model.named_children())[start:stop]))


class PrefixCache:
    """The outputs of ``model[:depth]`` on the training inputs, grown as more of the model freezes.

    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> cache = PrefixCache(net, torch.randn(10, 4))
    >>> cache.advance(2), cache.features.shape, cache.suffix
    (True, torch.Size([10, 8]), Sequential(
      (2): Linear(in_features=8, out_features=2, bias=True)
    ))
    """

    def __init__(self, model: nn.Sequential, x: torch.Tensor, chunk: int = 8192,
                 prepare: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
                 precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        self.model, self.x, self.chunk = model, x, chunk
        # What the model's first layer is fed (resize, memory layout) and its precision (autocast):
        # the cache must hold exactly what the uncached forward computes.
        self.prepare, self.precision = prepare, precision
        self.depth, self.features = 0, x

    @property
    def suffix(self) -> nn.Module:
        """The part of the model that still runs at each step: ``model[depth:]``."""
        return _children(self.model, self.depth, None) if self.depth else self.model

    @torch.no_grad()
    def advance(self, depth: int) -> bool:
        """Extend the cache to the first ``depth`` children; ``True`` if it grew.

        Runs only the children between the old and the new depth, on the cached features, in
        chunks; the children are fixed functions (checked by the caller), so train or eval
        mode gives the same values, and their mode is left as it was.
        """
        if depth <= self.depth:
            return False
        block = _children(self.model, self.depth, depth)
        prepare = self.prepare if self.depth == 0 else (lambda t: t)
        with self.precision():
            chunks = [block(prepare(self.features[i : i + self.chunk])) for i in range(0, len(self.features), self.chunk)]
        self.features = torch.cat(chunks)
        self.depth = depth
        return True
