"""A freezing schedule inside ``lightning.pytorch.Trainer``.

Example::

    import lightning.pytorch as pl
    from freezelab import groups
    from freezelab.integrations.lightning import FreezelabCallback

    freezing = FreezelabCallback(
        lambda module: groups.depth(module, 2),        # built on the LightningModule Lightning trains
        {"name": "alternate", "unit": "batch", "every": 50},
        policy="remove",
    )
    pl.Trainer(callbacks=[freezing], accumulate_grad_batches=2).fit(lit_module, loader)

Where it hooks in, and why there:

* ``on_fit_start``: Lightning has just built the optimizers (``configure_optimizers`` runs in the
  strategy's setup) and has not yet loaded a checkpoint's optimizer state (that happens after
  this hook), so the Freezer is attached to the optimizer Lightning will load into and steps.
* ``on_train_start``: after Lightning restored a checkpoint. The optimizer state Lightning saved
  is torch's own ``state_dict()``, which the Freezer extends with the trainable set and switch
  count, so loading it put the Freezer back where it was; the callback keeps no state of its
  own (a checkpoint without that key is resumed by replaying the schedule).
* ``on_train_batch_start``: before every micro-batch's ``training_step``, with the clock at
  ``trainer.global_step``, which counts *optimizer* steps. It stays constant across a gradient
  accumulation window, so the trainable set only changes at a window's first micro-batch, after
  the previous optimizer step: no accumulated gradient is dropped by a switch.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl

from ..freezer import Freezer
from ..schedules import Clock
from ._host import GroupsArg, HostFreezing, IntegrationError, ScheduleArg, host_clock

__all__ = ["FreezelabCallback"]


class FreezelabCallback(pl.Callback):
    """Follow ``schedule`` over ``groups`` on Lightning's optimizer steps.

    ``groups`` is a GroupSet over the LightningModule's parameter names, or a function that
    builds one from the LightningModule. ``policy``, ``bn_stats`` and ``missing`` are the
    Freezer's. Automatic optimization only: under manual optimization Lightning cannot tell which
    batches make up one optimizer step, so call :meth:`Freezer.step` from ``training_step``.
    """

    def __init__(
        self,
        groups: GroupsArg,
        schedule: ScheduleArg,
        *,
        policy: str = "keep",
        bn_stats: str = "train",
        missing: str = "error",
    ) -> None:
        self._host = HostFreezing(groups, schedule, policy=policy, bn_stats=bn_stats, missing=missing, host="Lightning")
        self._steps_per_epoch = self._total_steps = 0

    @property
    def freezer(self) -> Freezer | None:
        """The Freezer once ``fit`` has started (``None`` before)."""
        return self._host.freezer

    # -- hooks --------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise IntegrationError(
                "FreezelabCallback clocks on Lightning's automatic optimizer steps; with "
                "automatic_optimization=False call freezer.step(Clock.at(...)) yourself in training_step"
            )
        self._host.build(pl_module, trainer.optimizers)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = trainer.num_training_batches
        total = trainer.estimated_stepping_batches
        if math.isinf(total):
            raise IntegrationError("FreezelabCallback needs a run length: set max_epochs or max_steps on the Trainer")
        self._total_steps = int(total)
        # Lightning steps on an epoch's last batch even when its accumulation window is short.
        self._steps_per_epoch = (
            math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else self._total_steps
        )
        # Lightning has restored the loops and the optimizer state by now.
        self._host.resume(trainer.global_step, self._clock_at)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._host.step(self._clock(trainer.global_step, trainer.current_epoch))

    # -- clock ----------------------------------------------------------------------------
    def _clock(self, step: int, epoch: int) -> Clock:
        return host_clock(step, epoch, self._steps_per_epoch, self._total_steps)

    def _clock_at(self, step: int) -> Clock:
        return self._clock(step, step // max(self._steps_per_epoch, 1))
