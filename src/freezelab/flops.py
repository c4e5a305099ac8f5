"""FLOPs of one training step under the current freeze: what autograd really has to compute.

The count comes from ``torch.utils.flop_counter`` watching a real forward and backward pass,
so it shows what the freeze removes from the backward pass rather than what a model of it
predicts: a frozen parameter's weight gradient is absent, and so is every input gradient
ahead of the first trainable parameter. A frozen *prefix* therefore saves both kinds of
gradient, a frozen *suffix* only its weight gradients, since the gradient still has to flow
through it to the trainable layers below.

Only matrix products, convolutions and attention are counted (the counter's registry);
normalisation and pointwise work is memory-bound and has no FLOP figure here. That is also
why a step's time falls by less than its FLOPs when those memory-bound kernels dominate.

Example::

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> x, y = torch.randn(4, 8), torch.tensor([0, 1, 0, 1])
    >>> full = step_flops(net, x, y)
    >>> _ = net[2].requires_grad_(False)   # a frozen suffix: its input gradient is still needed
    >>> (full.forward, full.backward, step_flops(net, x, y).backward)
    (640, 768, 640)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["StepFlops", "step_flops", "SavedTensors", "saved_for_backward"]


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one step: ``forward`` and ``backward`` (zero when nothing trains)."""

    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def saving_against(self, full: StepFlops) -> float:
        """Share of ``full``'s FLOPs that this step does not do (0.25 = a quarter fewer)."""
        return 1 - self.total / full.total


def step_flops(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
) -> StepFlops:
    """Count the FLOPs of one forward and backward pass with the parameters' current ``requires_grad``.

    Gradients are taken with ``torch.autograd.grad``, so no ``.grad`` is written, and the
    model's buffers (batch-norm running statistics) are restored afterwards: counting leaves
    the model as it found it.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    buffers = [(b, b.clone()) for b in model.buffers()]
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            loss = loss_fn(model(inputs), targets)
            forward = counter.get_total_flops()
            if trainable:
                torch.autograd.grad(loss, trainable)
        return StepFlops(forward=forward, backward=counter.get_total_flops() - forward)
    finally:
        with torch.no_grad():
            for buf, saved in buffers:
                buf.copy_(saved)


@dataclass(frozen=True)
class SavedTensors:
    """What autograd stores for the backward pass of one forward: activations (not parameters)."""

    count: int
    bytes: int


def saved_for_backward(
    model: nn.Module,
    inputs: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    targets: torch.Tensor | None = None,
) -> SavedTensors:
    """Count the non-parameter tensors autograd saves during one forward with the current ``requires_grad``.

    Autograd records an op only when one of its inputs requires a gradient, so a frozen prefix
    saves nothing: this is how a test shows that freezing a prefix really drops its activations.
    Tensors are counted once per storage (a view of a saved tensor adds nothing); parameters and
    their views are left out, since they are stored anyway. Nothing is run backwards.

    >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> x = torch.randn(4, 8)
    >>> full = saved_for_backward(net, x)
    >>> _ = net[0].requires_grad_(False)
    >>> frozen = saved_for_backward(net, x)
    >>> frozen.count < full.count, frozen.bytes < full.bytes
    (True, True)
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(inputs)
        if loss_fn is not None and targets is not None:
            loss_fn(out, targets)
    return SavedTensors(count=len(seen), bytes=sum(seen.values()))
