"""Standard training, static freezing, alternation, warm-up, and composition of schedules.

Method cards: docs/methods/alternate.md (``alternate``) and docs/methods/warmup.md (``warmup``,
``chain``, ``intersect``, ``freeze``, ``standard``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .base import (
    Clock,
    Schedule,
    ScheduleError,
    check_groups,
    check_positive,
    check_unit,
    register_schedule,
    schedule_from_dict,
)

__all__ = ["Standard", "Freeze", "Alternate", "Warmup", "Chain", "Intersect"]


def _span(n: int, unit: str) -> str:
    """'1 epoch', '50 batches'."""
    return f"{n} {unit}" + ("" if n == 1 else "es" if unit == "batch" else "s")


@register_schedule
@dataclass(frozen=True)
class Standard(Schedule):
    """Nothing frozen: every group trains at every step (the baseline).

    Method card: docs/methods/warmup.md.
    """

    name = "standard"

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        return frozenset(groups)

    def describe(self) -> str:
        return "standard (nothing frozen)"


@register_schedule
@dataclass(frozen=True)
class Freeze(Schedule):
    """The named groups stay frozen for the whole run (linear probing, frozen backbone).

    Method card: docs/methods/warmup.md.
    """

    name = "freeze"
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.groups, str):
            object.__setattr__(self, "groups", (self.groups,))

    def validate(self, groups: Sequence[str]) -> None:
        check_groups("freeze", self.groups, groups, least=0)

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        return frozenset(groups) - set(self.groups)

    def describe(self) -> str:
        return f"freeze {'+'.join(self.groups) or 'nothing'}"


@register_schedule
@dataclass(frozen=True)
class Alternate(Schedule):
    """GAN-style alternation: one group of ``groups`` trains at a time, switching every ``every`` units.

    Seed 000/001's "alternating per epoch" is ``Alternate(unit="epoch")``; "per batch" is
    ``Alternate(unit="batch")``; seed 002's LoRA-first K=50 is
    ``Alternate(("norm", "lora"), every=50, unit="batch")`` (LoRA frozen first, so Norm trains
    first). ``first`` picks which group trains in the first period.
    Method card: docs/methods/alternate.md.
    """

    name = "alternate"
    groups: tuple[str, ...] | None = None
    every: int = 1
    unit: str = "epoch"
    first: str | None = None

    def __post_init__(self) -> None:
        check_positive("every", self.every)
        check_unit(self.unit)

    def _cycle(self, groups: Sequence[str]) -> tuple[str, ...]:
        cycle = tuple(self.groups) if self.groups is not None else tuple(groups)
        if self.first is not None:
            i = cycle.index(self.first)
            cycle = cycle[i:] + cycle[:i]
        return cycle

    def validate(self, groups: Sequence[str]) -> None:
        check_groups("alternate", self.groups, groups, least=2)
        cycle = tuple(self.groups) if self.groups is not None else tuple(groups)
        if self.first is not None and self.first not in cycle:
            raise ScheduleError(f"alternate: first={self.first!r} is not one of the alternating groups {list(cycle)}")

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        cycle = self._cycle(groups)
        period = (clock.step if self.unit == "batch" else clock.epoch) // self.every
        return frozenset(groups) - set(cycle) | {cycle[period % len(cycle)]}

    def describe(self) -> str:
        names = "/".join(self.groups) if self.groups else "first/second"
        every = f"every {self.unit}" if self.every == 1 else f"every {_span(self.every, self.unit)}"
        first = self.first or (self.groups[0] if self.groups else "first")
        return f"alternate {names} {every}, {first} trains first"


@register_schedule
@dataclass(frozen=True)
class Warmup(Schedule):
    """Keep ``groups`` frozen for the first ``steps`` batches, then follow ``then``.

    Seed 002's "warm-up LoRA 200" is ``Warmup(("lora",), 200)``: Norm and head adapt first.
    ``then`` sees a clock that starts at the end of the warm-up (epoch boundaries unchanged).
    Method card: docs/methods/warmup.md.
    """

    name = "warmup"
    nested = ("then",)
    groups: tuple[str, ...] = ()
    steps: int = 1
    then: Schedule = Standard()

    def __post_init__(self) -> None:
        if isinstance(self.groups, str):
            object.__setattr__(self, "groups", (self.groups,))
        check_positive("steps", self.steps)

    def validate(self, groups: Sequence[str]) -> None:
        check_groups("warmup", self.groups, groups, least=1)
        super().validate(groups)

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        if clock.step < self.steps:
            return frozenset(groups) - set(self.groups)
        return self.then.trainable(clock.shifted(self.steps), groups)

    @property
    def scales_lr(self) -> bool:  # type: ignore[override]
        return self.then.scales_lr

    def lr_factors(self, clock: Clock, groups: Sequence[str]) -> dict[str, float]:
        """Base rates during the warm-up, then ``then``'s factors on its own clock."""
        if clock.step < self.steps:
            return {}
        return self.then.lr_factors(clock.shifted(self.steps), groups)

    def resets_state(self, clock: Clock) -> bool:
        return clock.step >= self.steps and self.then.resets_state(clock.shifted(self.steps))

    def describe(self) -> str:
        return f"warm-up: {'+'.join(self.groups)} frozen for {self.steps} batches, then {self.then.describe()}"


@register_schedule
@dataclass(frozen=True)
class Chain(Schedule):
    """Run schedules one after another: ``phases`` is a list of ``(schedule, length, unit)``.

    The last phase's length may be ``None`` (until the end). Each phase sees a clock that
    starts at its own beginning. Method card: docs/methods/warmup.md.

    >>> Chain(((Freeze(("first",)), 2, "epoch"), (Standard(), None, "epoch"))).describe()
    'freeze first for 2 epochs -> standard (nothing frozen)'
    """

    name = "chain"
    nested = ("phases",)
    phases: tuple[tuple[Schedule, int | None, str], ...] = ()

    def __post_init__(self) -> None:
        phases = []
        for p in self.phases:
            if isinstance(p, dict):
                p = (p["schedule"], p.get("length"), p.get("unit", "batch"))
            sched, length, unit = p
            if isinstance(sched, dict):
                sched = schedule_from_dict(sched)
            check_unit(unit)
            if length is not None:
                check_positive("phase length", length)
            phases.append((sched, length, unit))
        if not phases:
            raise ScheduleError("chain needs at least one phase")
        if any(length is None for _, length, _ in phases[:-1]):
            raise ScheduleError("only the last phase of a chain may have no length")
        object.__setattr__(self, "phases", tuple(phases))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "phases": [{"schedule": s.to_dict(), "length": n, "unit": u} for s, n, u in self.phases],
        }

    def _phase(self, clock: Clock) -> tuple[Schedule, Clock]:
        """The phase running at ``clock`` and the clock it sees (starting at its own beginning)."""
        start = 0
        for sched, length, unit in self.phases:
            steps = None if length is None else length * (clock.steps_per_epoch if unit == "epoch" else 1)
            if steps is None or clock.step < start + steps:
                return sched, clock.shifted(start)
            start += steps
        return self.phases[-1][0], clock.shifted(start)

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        sched, local = self._phase(clock)
        return sched.trainable(local, groups)

    @property
    def scales_lr(self) -> bool:  # type: ignore[override]
        return any(sched.scales_lr for sched, _, _ in self.phases)

    def lr_factors(self, clock: Clock, groups: Sequence[str]) -> dict[str, float]:
        sched, local = self._phase(clock)
        return sched.lr_factors(local, groups)

    def resets_state(self, clock: Clock) -> bool:
        sched, local = self._phase(clock)
        return sched.resets_state(local)

    def describe(self) -> str:
        return " -> ".join(s.describe() + (f" for {_span(n, u)}" if n is not None else "") for s, n, u in self.phases)


@register_schedule
@dataclass(frozen=True)
class Intersect(Schedule):
    """A group trains only when every one of ``schedules`` lets it (e.g. progressive + alternate).

    Method card: docs/methods/warmup.md.
    """

    name = "intersect"
    nested = ("schedules",)
    schedules: tuple[Schedule, ...] = ()

    def __post_init__(self) -> None:
        if len(self.schedules) < 2:
            raise ScheduleError("intersect needs at least two schedules")

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        out = frozenset(groups)
        for s in self.schedules:
            out &= s.trainable(clock, groups)
        return out

    @property
    def scales_lr(self) -> bool:  # type: ignore[override]
        return any(s.scales_lr for s in self.schedules)

    def lr_factors(self, clock: Clock, groups: Sequence[str]) -> dict[str, float]:
        """The product of every schedule's factor: each one scales the rate the others leave."""
        out: dict[str, float] = {}
        for s in self.schedules:
            for group, factor in s.lr_factors(clock, groups).items():
                out[group] = out.get(group, 1.0) * factor
        return out

    def resets_state(self, clock: Clock) -> bool:
        return any(s.resets_state(clock) for s in self.schedules)

    def describe(self) -> str:
        return " AND ".join(f"({s.describe()})" for s in self.schedules)

