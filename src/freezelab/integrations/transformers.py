"""A freezing schedule inside the Hugging Face ``transformers.Trainer``.

Example::

    from transformers import Trainer, TrainingArguments
    from freezelab import groups
    from freezelab.integrations.transformers import FreezelabCallback

    freezing = FreezelabCallback(
        lambda model: groups.depth(model, 2, head=True),  # on a PEFT model: its LoRA halves + head
        "alternate:unit=batch,every=100",
        policy="release",
    )
    Trainer(model, TrainingArguments("out", gradient_accumulation_steps=4), train_dataset=data,
            callbacks=[freezing]).train()

Where it hooks in, and why there:

* ``on_train_begin``: the Trainer has built the optimizer, wrapped it in accelerate's
  ``AcceleratedOptimizer``, bound its LR scheduler to it and, on ``resume_from_checkpoint``,
  already loaded the optimizer and scheduler state. The Freezer is built on the unwrapped torch
  optimizer, whose ``param_groups`` the wrapper and the scheduler share, so all of them see every
  change. On a resume the trainable set is replayed from the schedule (see
  :meth:`~freezelab.integrations.HostFreezing.resume`): the Trainer re-creates ``ExportableState``
  callbacks from JSON arguments, which cannot carry a GroupSet or a groups function.
* ``on_step_begin``: the Trainer calls it once per OPTIMIZER step, before the first micro-batch
  of a gradient-accumulation window (``on_substep_end`` ends the others), with
  ``state.global_step`` = the optimizer steps already taken. A switch therefore never falls
  inside a window, and no accumulated gradient is dropped.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..freezer import Freezer
from ..schedules import Clock
from ._host import GroupsArg, HostFreezing, ScheduleArg, host_clock

__all__ = ["FreezelabCallback"]


class FreezelabCallback(TrainerCallback):
    """Follow ``schedule`` over ``groups`` on the Trainer's optimizer steps.

    ``groups`` is a GroupSet over the parameter names of the model given to the Trainer, or a
    function that builds one from it. ``policy``, ``bn_stats`` and ``missing`` are the Freezer's.
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
        self._host = HostFreezing(
            groups, schedule, policy=policy, bn_stats=bn_stats, missing=missing, host="the transformers Trainer"
        )
        self._steps_per_epoch = self._total_steps = 0

    @property
    def freezer(self) -> Freezer | None:
        """The Freezer once ``train`` has started (``None`` before)."""
        return self._host.freezer

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        optimizer: Any = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        self._total_steps = state.max_steps
        # The Trainer's own num_update_steps_per_epoch; a loader without a length is one long epoch.
        try:
            self._steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
        except TypeError:
            self._steps_per_epoch = state.max_steps
        self._host.build(model, [optimizer])
        self._host.resume(state.global_step, self._clock_at)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._host.step(self._clock_at(state.global_step))

    def _clock_at(self, step: int) -> Clock:
        # epoch = global_step // steps per epoch: the Trainer's own `epochs_trained` on resume.
        return host_clock(step, step // max(self._steps_per_epoch, 1), self._steps_per_epoch, self._total_steps)
