"""Steppers: how the optimizer steps of one epoch are executed.

``EagerStepper`` is the plain loop (forward, backward, optimizer step) and the reference the
fast path is tested against. Both take the batch indices of the epoch as one device tensor
and keep every per-step value on the device, so an epoch costs one host synchronisation.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from .schedules import Clock

if TYPE_CHECKING:
    from .train import Run

__all__ = ["EagerStepper", "make_stepper"]


class EagerStepper:
    """One Python-level step per batch: works everywhere, on every model and optimizer."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.timed = run.config.log_steps

    def run_epoch(self, epoch: int, perm: torch.Tensor, bar=None):
        run = self.run
        model, fz, x, y = run.model, run.freezer, run.data.train.x, run.data.train.y
        spe, bs, epochs = run.steps_per_epoch, run.config.batch_size, run.config.epochs
        cuda = run.device.type == "cuda"
        losses = torch.empty(spe, device=run.device)
        trainable, fractions, marks = [], [], []
        for i in range(spe):
            step = epoch * spe + i
            if self.timed:
                marks.append(_mark(cuda))
            fz.step(Clock(step, epoch, spe, spe * epochs, epochs))
            opt = fz.optimizer
            lr = run.lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = perm[i * bs : (i + 1) * bs]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[i] = loss.detach()
            trainable.append(fz.trainable)
            fractions.append(fz.trainable_fraction)
            if bar is not None and i % 16 == 15:
                bar.step(16)
        if self.timed:
            marks.append(_mark(cuda))
        return losses, trainable, fractions, _durations(marks, cuda)


def _mark(cuda: bool):
    """A point in time: a recorded CUDA event on the GPU (no sync), a host clock on the CPU."""
    if cuda:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _durations(marks: list, cuda: bool) -> list[float]:
    """Seconds between consecutive marks (call after the epoch's synchronisation)."""
    if len(marks) < 2:
        return []
    if cuda:
        marks[-1].synchronize()
        return [a.elapsed_time(b) / 1000 for a, b in zip(marks, marks[1:])]
    return [b - a for a, b in zip(marks, marks[1:])]


def make_stepper(run: Run):
    """The fastest stepper that is exact for this run."""
    return EagerStepper(run)
