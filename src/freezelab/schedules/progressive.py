"""Progressive freezing: the earliest groups stop training first and never thaw.

Two published forms:

* :class:`Progressive` follows Composer's ``LayerFreezing``: nothing is frozen until
  ``freeze_start`` of training has elapsed, then a prefix of the groups that grows linearly to
  ``freeze_level`` of them by the end of training; the last group is never frozen. Composer
  re-evaluates at each epoch end, which is ``unit="epoch"`` here.
* :class:`FreezeOut` follows Brock et al. (2017): group *i* of *L* stops at the fraction
  ``t_i = scale(t0 + (1 - t0) * i / (L - 1))`` of training, so the last group trains to the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .base import Clock, Schedule, ScheduleError, acted_on, check_groups, register_schedule

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
    ``freezelab.groups.layers`` to act on single layers as Composer does.
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
        if self.unit not in ("batch", "epoch"):
            raise ScheduleError(f"unit must be 'batch' or 'epoch', got {self.unit!r}")

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
    early layers sooner). The paper also anneals each layer's learning rate to zero by its
    freeze time; that is not part of this schedule (see docs/methods/freezeout.md).
    """

    name = "freezeout"
    t0: float = 0.5
    scaling: str = "linear"
    groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.t0 <= 1.0:
            raise ScheduleError(f"t0 must be in (0, 1], got {self.t0}")
        if self.scaling not in _SCALES:
            raise ScheduleError(f"scaling must be one of {list(_SCALES)}, got {self.scaling!r}")

    def validate(self, groups: Sequence[str]) -> None:
        check_groups("freezeout", self.groups, groups, least=1)

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        units = acted_on(self.groups, groups)
        times = freezeout_times(len(units), self.t0, self.scaling)
        return frozenset(groups) - {u for u, t in zip(units, times) if clock.progress >= t}

    def describe(self) -> str:
        return f"freezeout: first group stops at {self.t0 ** _SCALES[self.scaling]:.0%} of training ({self.scaling})"
