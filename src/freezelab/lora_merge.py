"""Frozen LoRA adapters merged into their base weights, so a frozen branch costs nothing.

A peft LoRA layer computes ``base(x) + B(A(x)) * scale``. While its adapters are frozen that
second term still costs two small matrix products forward and two backward (its input
gradient feeds the trainable layers below) plus the adds, on every target layer: on a ViT-S/16
with LoRA on ``qkv, proj, fc1, fc2`` it is what keeps a LoRA-frozen step almost as slow as a
step that trains LoRA. While frozen, ``B A scale`` is a constant, so the layer may as well be
``base'(x)`` with ``W' = W + scale B A``: one product instead of three, the same function.

:class:`LoraMerge` does that per layer, whenever the freezer changes the trainable set:

* **merge** (every adapter of the layer frozen): an *exact copy* of the base weight is kept,
  ``W += scale B A`` is added in place (the same storage, so captured CUDA graphs and the
  optimizer keep pointing at it) and peft's ``merged_adapters`` is set, so peft's own forward
  takes its merged branch (``self.base_layer(x)``) and a compiled graph of this trainable set
  traces the merged layer;
* **unmerge** (an adapter thaws): the copy is written back. Not ``W -= scale B A`` as peft's
  ``unmerge`` does: subtracting after adding rounds, and a float32 weight would drift by an ulp
  per cycle. Restoring the copy makes the base weight bit-identical to a run that never merged.

LoRA weights themselves are never touched (frozen ones stay bit-identical while merged). What
is *not* identical: a merged layer rounds ``(W + scale B A) x`` instead of ``W x + scale B(A x)``,
so a run with merging differs from one without by float rounding (``tests/test_lora_merge.py``
states the tolerance it holds). Checkpoints never see a merged weight: the base layer's
``state_dict`` gives the kept copy, and loading into a merged layer unmerges it first (the
next freezer step merges again). Measurements that need the LoRA branch itself (a gradient
probe, the function-space cosine) run inside :meth:`LoraMerge.unmerged`.

Only plain LoRA on ``Linear``, ``Conv`` and ``Embedding`` layers merges: no dropout on the
adapter's input (merging would remove that noise from the training function), no LoRA bias,
no DoRA or other variant, and a frozen base weight (a trainable one would be stepped with the
adapter folded in). :func:`why_not_mergeable` says why a model does not qualify.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["LoraMerge", "lora_layers", "why_not_mergeable"]


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The peft LoRA layers of ``model`` that hold adapters, as ``(name, module)``; [] without peft."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer) and len(m.lora_A) > 0]


def why_not_mergeable(model: nn.Module) -> str | None:
    """Why frozen adapters of ``model`` cannot be merged exactly as the module doc says, or None if they can."""
    layers = lora_layers(model)
    if not layers:
        return "the model has no peft LoRA layer"
    from peft.tuners.lora import Embedding, Linear
    from peft.tuners.lora.layer import _ConvNd

    for name, m in layers:
        adapters = _adapters(m)
        if not isinstance(m, (Linear, _ConvNd, Embedding)):
            return f"{name} is a {type(m).__name__} LoRA layer (only Linear, Conv and Embedding merge)"
        if any(a in getattr(m, "lora_variant", {}) for a in adapters):
            return f"{name} uses a LoRA variant (DoRA or another), which does not merge exactly"
        if any(not isinstance(m.lora_dropout[a], nn.Identity) for a in adapters if a in getattr(m, "lora_dropout", {})):
            return f"{name} has LoRA dropout (merging would drop that noise from training); set lora dropout 0"
        if any(getattr(m, "lora_bias", {}).get(a, False) for a in adapters):
            return f"{name} has a LoRA bias"
        if m.get_base_layer().weight.requires_grad:
            return f"{name}'s base weight trains (merging would step the adapter folded into it)"
        if m.merged:
            return f"{name} is already merged by peft"
    return None


def _adapters(m: nn.Module) -> list[str]:
    return [a for a in m.active_adapters if a in m.lora_A]


class _MergedLayer:
    """One LoRA layer: its adapter weights, its base layer and, while merged, the base weight's copy."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.adapters = _adapters(module)
        self.params = [p for a in self.adapters for p in (*module.lora_A[a].parameters(), *module.lora_B[a].parameters())]
        self.base = module.get_base_layer()
        self.kept: torch.Tensor | None = None  # the base weight before merging, while merged
        # partials, not bound methods: torch marks its public hooks with an attribute
        self.handles = [self.base.register_state_dict_post_hook(functools.partial(_MergedLayer._unmerged_state, self)),
                        self.base.register_load_state_dict_pre_hook(functools.partial(_MergedLayer._before_load, self))]

    @property
    def merged(self) -> bool:
        return self.kept is not None

    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.params)

    @torch.no_grad()
    def merge(self) -> None:
        weight = self.base.weight
        self.kept = weight.detach().clone()
        delta = sum(self.module.get_delta_weight(a) for a in self.adapters)
        weight.add_(delta.to(weight.dtype))
        self.module.merged_adapters = [*self.module.merged_adapters, *self.adapters]

    @torch.no_grad()
    def unmerge(self) -> None:
        self.base.weight.copy_(self.kept)
        self.kept = None
        self.module.merged_adapters = [a for a in self.module.merged_adapters if a not in self.adapters]

    def _unmerged_state(self, _module, state_dict, prefix, _local_metadata) -> None:
        if self.kept is not None and prefix + "weight" in state_dict:
            state_dict[prefix + "weight"] = self.kept.clone()

    def _before_load(self, _module, *_args) -> None:
        if self.kept is not None:
            self.unmerge()  # the loaded weight is an unmerged one; the next sync merges again


class LoraMerge:
    """Keeps every LoRA layer of a model merged exactly while all its adapters are frozen.

    Call :meth:`sync` after the trainable set changes (the :class:`~freezelab.freezer.Freezer`
    does, with ``merge_lora=True``); it is cheap when nothing changed.

    >>> merge = LoraMerge(peft_model)            # doctest: +SKIP
    >>> for p in lora_params: p.requires_grad_(False)  # doctest: +SKIP
    >>> merge.sync()                              # doctest: +SKIP  (every layer now runs base(x) only)
    """

    def __init__(self, model: nn.Module) -> None:
        reason = why_not_mergeable(model)
        if reason is not None:
            raise ValueError(f"cannot merge frozen LoRA adapters: {reason}")
        self.layers = [_MergedLayer(m) for _, m in lora_layers(model)]

    @property
    def merged_count(self) -> int:
        """How many LoRA layers are merged now."""
        return sum(layer.merged for layer in self.layers)

    def sync(self) -> None:
        """Merge the layers whose adapters are all frozen, unmerge those with a trainable one."""
        for layer in self.layers:
            frozen = layer.frozen()
            if frozen and not layer.merged:
                layer.merge()
            elif layer.merged and not frozen:
                layer.unmerge()

    def unmerge_all(self) -> None:
        """Every layer back to its own weights (bit-identical to never having merged)."""
        for layer in self.layers:
            if layer.merged:
                layer.unmerge()

    @contextlib.contextmanager
    def unmerged(self) -> Iterator[None]:
        """The model with every adapter in its own branch for the block (a probe needs the LoRA gradients)."""
        self.unmerge_all()
        try:
            yield
        finally:
            self.sync()

    def detach(self) -> None:
        """Unmerge everything and remove the state-dict hooks."""
        self.unmerge_all()
        for layer in self.layers:
            for handle in layer.handles:
                handle.remove()
