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

__all__ = ["StepFlops", "step_flops"]


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
