"""What every host-trainer callback shares: checked arguments, a Freezer built on the host's objects, resuming.

A host (Lightning, the HF Trainer) builds the model wrapping and the optimizer itself, at a time
of its choosing, and restores checkpoints around its own hooks. The callbacks in this package
therefore build their :class:`~freezelab.freezer.Freezer` late, on whatever the host hands them,
and only ever *mutate* the host's objects (``requires_grad``, ``grad``, the optimizer in place):
nothing has to be handed back, so LR schedulers and the host's optimizer wrappers stay bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .. import freezer
from ..freezer import Freezer, FreezerError, check_options
from ..groups import GroupError, GroupSet
from ..schedules import Clock, Schedule, parse_schedule, schedule_from_dict

__all__ = ["GroupsArg", "HostFreezing", "IntegrationError", "ScheduleArg", "host_clock", "unwrap_optimizer"]

#: The groups, or a function that builds them from the model the host trains (which may be a
#: wrapper of the model the user wrote: a LightningModule, a PEFT model).
GroupsArg = GroupSet | Callable[[nn.Module], GroupSet]
#: A schedule object, its ``to_dict()`` form, or the CLI shorthand (``"alternate:every=50"``).
ScheduleArg = Schedule | Mapping[str, Any] | str


class IntegrationError(ValueError):
    """A host trainer set up in a way freezelab cannot follow (the message says what to change)."""


def host_clock(step: int, epoch: int, steps_per_epoch: int, total_steps: int) -> Clock:
    """The schedule's clock from a host's counters, all in OPTIMIZER steps.

    ``epochs`` is derived as ``ceil(total_steps / steps_per_epoch)``: that is the number of
    epochs the host will run whether the run is bounded by epochs or by ``max_steps``.
    """
    steps_per_epoch, total_steps = max(int(steps_per_epoch), 1), max(int(total_steps), 1)
    return Clock(int(step), int(epoch), steps_per_epoch, total_steps, max(math.ceil(total_steps / steps_per_epoch), 1))


def unwrap_optimizer(optimizer: Any, host: str) -> torch.optim.Optimizer:
    """The torch optimizer inside a host's wrapper (LightningOptimizer, accelerate's AcceleratedOptimizer).

    Both wrappers delegate ``param_groups`` and ``state`` to the wrapped optimizer, so the
    Freezer acts on the inner object and its changes reach what the host steps. A wrapper is
    itself a torch optimizer, so what it wraps is checked too: accelerate wraps DeepSpeed's
    engine optimizer, which is not one.
    """
    innermost = optimizer
    while getattr(innermost, "optimizer", None) is not None and innermost.optimizer is not innermost:
        innermost = innermost.optimizer
    if not isinstance(innermost, torch.optim.Optimizer):
        raise IntegrationError(
            f"{host}'s optimizer is a {type(innermost).__name__}, not a torch.optim.Optimizer, so freezelab cannot "
            "change what it steps (engines such as DeepSpeed keep their own flat copies of the parameters); "
            "train with a torch optimizer to use a freezing schedule"
        )
    return freezer.unwrap_optimizer(optimizer)


def _as_schedule(schedule: ScheduleArg) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, str):
        return parse_schedule(schedule)
    if isinstance(schedule, Mapping):
        return schedule_from_dict(schedule)
    raise IntegrationError(
        f"schedule must be a Schedule, its to_dict() form or a string like 'alternate:every=50', "
        f"got {type(schedule).__name__}"
    )


class HostFreezing:
    """One Freezer's life inside a host: arguments checked up front, built on the host's objects later.

    Checking the policy, ``bn_stats``, ``missing`` and schedule when the callback is constructed makes a typo fail
    before the host spends minutes setting up; the groups and the Freezer wait for the host's
    model and optimizers.
    """

    def __init__(
        self,
        groups: GroupsArg,
        schedule: ScheduleArg,
        *,
        policy: str = "keep",
        bn_stats: str = "train",
        missing: str = "error",
        host: str,
    ) -> None:
        try:
            check_options(policy, bn_stats, missing)
        except FreezerError as e:
            raise IntegrationError(str(e)) from None
        if not (isinstance(groups, GroupSet) or callable(groups)):
            raise IntegrationError(
                f"groups must be a GroupSet or a function model -> GroupSet, got {type(groups).__name__}"
            )
        self.groups, self.schedule = groups, _as_schedule(schedule)
        self.policy, self.bn_stats, self.missing, self.host = policy, bn_stats, missing, host
        self.freezer: Freezer | None = None

    def build(self, model: nn.Module, optimizers: Sequence[Any]) -> Freezer:
        """Build the Freezer on the model and optimizer(s) the host will actually step."""
        groups = self.groups(model) if callable(self.groups) else self.groups
        if not isinstance(groups, GroupSet):
            raise IntegrationError(f"the groups function returned a {type(groups).__name__}, not a GroupSet")
        if not optimizers:
            raise IntegrationError(f"{self.host} has no optimizer to freeze with; return one from its optimizer setup")
        inner = [unwrap_optimizer(opt, self.host) for opt in optimizers]
        try:
            self.freezer = Freezer(
                model,
                groups,
                self.schedule,
                inner if len(inner) > 1 else inner[0],
                policy=self.policy,
                bn_stats=self.bn_stats,
                missing=self.missing,
            )
        except GroupError as e:
            example = next((name for name, _ in model.named_parameters()), "")
            raise GroupError(
                f"{e} ({self.host} trains a {type(model).__name__}, whose parameters are named like {example!r}; "
                "pass groups=lambda model: groups.depth(model, 2) to build them from it)"
            ) from None
        return self.freezer

    def step(self, clock: Clock) -> bool:
        """Apply the schedule at ``clock`` (before the first forward pass of an optimizer step)."""
        assert self.freezer is not None, "build() runs in the host's setup hook, before any step"
        return self.freezer.step(clock)

    def resume(self, step: int, clock_at: Callable[[int], Clock]) -> None:
        """Put the Freezer where it was after ``step`` optimizer steps, if nothing has yet.

        A Freezer attached to the optimizer when the host loads its checkpoint gets the trainable
        set and switch count from the optimizer state (freezelab stores them there). A host that
        loads the optimizer before any callback hook leaves the Freezer without them; then the
        schedule is replayed: it is a pure function of the clock, so the set when the checkpoint
        was written is its answer for ``step - 1``, and the switch count the number of changes
        before that. The next :meth:`step` then sees a real switch exactly where the
        uninterrupted run did, so ``recreate`` resets state there and nowhere else (a Freezer that
        started fresh at a switch step would take it for its first application and keep the state).
        """
        fz = self.freezer
        assert fz is not None
        if fz.trainable is not None or step == 0:
            return
        sets = [fz.wanted(clock_at(s)) for s in range(step)]
        # The set of the last finished step, leaving the host's (already loaded) optimizer state alone.
        fz.resume_at(clock_at(step - 1))
        fz.switches = sum(a != b for a, b in zip(sets, sets[1:]))
