"""Progressive freezing: the earliest groups stop training first and never thaw.

Two published forms:

* :class:`Progressive` follows Composer's ``LayerFreezing``: nothing is frozen until
  ``freeze_start`` of training has elapsed, then a prefix of the groups that grows linearly to
  ``freeze_level`` of them by the end of training; the last group is never frozen. Composer
  re-evaluates at each epoch end, which is ``unit="epoch"`` here. Method card:
  docs/methods/progressive.md.
* :class:`FreezeOut` follows Brock et al. (2017): group *i* of *L* stops at the fraction
  ``t_i = scale(t0 + (1 - t0) * i / (L - 1))`` of training, so the last group trains to the end,
  and (``anneal=True``) each group's learning rate follows a cosine from its start value to
  zero at its own ``t_i``. Method card: docs/methods/freezeout.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .base import Clock, Schedule, ScheduleError, acted_on, check_choice, check_groups, check_unit, register_schedule

__all__ = ["Progressive", "FreezeOut", "composer_freeze_fraction", "freezeout_times"]


def composer_freeze_fraction(current_duration: float, freeze_start: float, freeze_level: float) -> float:
    """Fraction of freezable groups frozen after ``current_duration`` of training (Composer's formula)."""
    if current_duration <= freeze_start:
        return 0.0
    total_freezing_time = 1.0 - freeze_start
    freezing_elapsed_time = current_duration - freeze_start
    return freeze_level * (freezing_elapsed_time / total_freezing_time)


@register_schedule
@dataclass(frozen=True)
class Progressive(Schedule):
    """Composer LayerFreezing: a linearly growing prefix of groups freezes after ``freeze_start``.

    With ``L`` groups, ``int(fraction * (L - 1))`` of the first ``L - 1`` are frozen, where
    ``fraction`` is :func:`composer_freeze_fraction` of the elapsed training. Use
    ``freezelab.groups.layers(model, order="definition", nonleaf="skip")`` to act on exactly
    Composer's layers. Method card (with the check against Composer's own code):
    docs/methods/progressive.md.
    """

    name = "progressive"
    freeze_start: float = 0.5
    freeze_level: float = 1.0
    groups: tuple[str, ...] | None = None
    unit: str = "epoch"

    def __post_init__(self) -> None:
        if not 0.0 <= self.freeze_start < 1.0:
            raise ScheduleError(f"freeze_start must be in [0, 1), got {self.freeze_start}")
        if not 0.0 <= self.freeze_level <= 1.0:
            raise ScheduleError(f"freeze_level must be in [0, 1], got {self.freeze_level}")
        check_unit(self.unit)

    def validate(self, groups: Sequence[str]) -> None:
        check_groups("progressive", self.groups, groups, least=1)

    def frozen_depth(self, clock: Clock, n_groups: int) -> int:
        elapsed = clock.epoch_progress if self.unit == "epoch" else clock.progress
        return int(composer_freeze_fraction(elapsed, self.freeze_start, self.freeze_level) * (n_groups - 1))

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        units = acted_on(self.groups, groups)
        return frozenset(groups) - set(units[: self.frozen_depth(clock, len(units))])

    def describe(self) -> str:
        return (
            f"progressive (Composer): from {self.freeze_start:.0%} of training freeze up to "
            f"{self.freeze_level:.0%} of groups, re-evaluated every {self.unit}"
        )


_SCALES = {"linear": 1, "squared": 2, "cubic": 3}


def freezeout_times(n_groups: int, t0: float, scaling: str) -> list[float]:
    """FreezeOut's per-group freeze times as fractions of training; the last is always 1."""
    if n_groups == 1:
        return [1.0]
    power = _SCALES[scaling]
    return [(t0 + (1.0 - t0) * i / (n_groups - 1)) ** power for i in range(n_groups)]


@register_schedule
@dataclass(frozen=True)
class FreezeOut(Schedule):
    """FreezeOut: group i stops at ``scale(t0 + (1 - t0) i / (L - 1))`` of training.

    ``scaling`` is ``linear``, ``squared`` or ``cubic`` (the paper's variants; cubic freezes
    early layers sooner).

    ``anneal=True`` (the paper's method; off by default so that existing runs and
    single-param-group optimizers keep working) gives each group a cosine learning-rate factor
    ``0.5 * (1 + cos(pi * step / (t_i * total_steps)))`` through :meth:`lr_factors`, which
    reaches 0 at the group's stop step; ``scale_lr=True`` divides it by ``t_i`` so that layers
    that stop early start faster (the reference's ``scale_lr``). The boundary is the
    reference's: the group still takes the step where ``step == t_i * total_steps`` (its factor
    is exactly 0 there) and is frozen from the first step strictly after it. With
    ``anneal=False`` only the stop times are kept: a group is frozen from the first step with
    ``step / total_steps >= t_i`` and trains at the base rate until then.
    See docs/methods/freezeout.md for the check against ajbrock/FreezeOut.
    """

    name = "freezeout"
    t0: float = 0.5
    scaling: str = "linear"
    groups: tuple[str, ...] | None = None
    anneal: bool = True
    scale_lr: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.t0 <= 1.0:
            raise ScheduleError(f"t0 must be in (0, 1], got {self.t0}")
        check_choice("scaling", self.scaling, tuple(_SCALES))
        for flag in ("anneal", "scale_lr"):
            if not isinstance(getattr(self, flag), bool):
                raise ScheduleError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.scale_lr and not self.anneal:
            raise ScheduleError("scale_lr scales the annealed learning rate; it needs anneal=true")

    @property
    def scales_lr(self) -> bool:  # type: ignore[override]
        return self.anneal

    def validate(self, groups: Sequence[str]) -> None:
        check_groups("freezeout", self.groups, groups, least=1)

    def _stops(self, groups: Sequence[str]) -> list[tuple[str, float]]:
        units = acted_on(self.groups, groups)
        return list(zip(units, freezeout_times(len(units), self.t0, self.scaling)))

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        if self.anneal:
            # The reference drops a layer once its iteration counter is strictly past max_j.
            stopped = {u for u, t in self._stops(groups) if clock.step > clock.total_steps * t}
        else:
            stopped = {u for u, t in self._stops(groups) if clock.progress >= t}
        return frozenset(groups) - stopped

    def lr_factors(self, clock: Clock, groups: Sequence[str]) -> dict[str, float]:
        """Each acted-on group's cosine factor; 0.0 once it has stopped."""
        if not self.anneal:
            return {}
        out = {}
        for unit, t in self._stops(groups):
            max_step = clock.total_steps * t
            if clock.step > max_step:
                out[unit] = 0.0
                continue
            start = 1.0 / t if self.scale_lr else 1.0
            out[unit] = start * 0.5 * (1.0 + math.cos(math.pi * clock.step / max_step))
        return out

    def describe(self) -> str:
        lr = ""
        if self.anneal:
            lr = ", cosine-annealed learning rates" + (" scaled by 1/t_i" if self.scale_lr else "")
        return (
            f"freezeout: first group stops at {self.t0 ** _SCALES[self.scaling]:.0%} of training "
            f"({self.scaling}{lr})"
        )
