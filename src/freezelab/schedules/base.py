"""The schedule protocol, the training clock, and the schedule registry.

A schedule is a pure function of the clock: given where training is (global step, epoch,
run length) and the ordered names of the groups it may freeze, it returns the names that
train now. Purity is what makes schedules testable at their boundaries, serialisable into a
run's config, and safe to evaluate ahead of time (a CUDA graph per trainable set).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import yaml

__all__ = [
    "Clock",
    "Schedule",
    "ScheduleError",
    "register_schedule",
    "schedule_from_dict",
    "parse_schedule",
    "list_schedules",
    "SCHEDULES",
]


class ScheduleError(ValueError):
    """A schedule that cannot be built or cannot run on the given groups."""


@dataclass(frozen=True)
class Clock:
    """Where training is, as seen by a schedule.

    ``step`` is the 0-based global optimizer step about to be taken, ``epoch`` the 0-based
    epoch it belongs to. ``total_steps`` is the length of the run the schedule sees (a phase of
    a :class:`~freezelab.schedules.Sequence` sees its own remaining length).
    """

    step: int
    epoch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int

    @classmethod
    def at(cls, step: int, steps_per_epoch: int, epochs: int) -> Clock:
        """The clock of a plain run at global ``step``."""
        return cls(step, step // steps_per_epoch, steps_per_epoch, steps_per_epoch * epochs, epochs)

    @property
    def step_in_epoch(self) -> int:
        return self.step - self.epoch * self.steps_per_epoch

    @property
    def progress(self) -> float:
        """Fraction of training elapsed before this step, in [0, 1)."""
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def epoch_progress(self) -> float:
        """Fraction of training elapsed at the start of this epoch (what an epoch-end hook sees)."""
        return self.epoch / self.epochs if self.epochs else 0.0

    def shifted(self, steps: int) -> Clock:
        """The clock of a phase that started ``steps`` steps ago.

        Epochs shift by whole epochs only, so a phase that starts mid-epoch keeps the run's
        epoch boundaries (an alternation per epoch after a 200-batch warm-up flips at real
        epoch ends).
        """
        whole = steps // self.steps_per_epoch
        return Clock(
            self.step - steps,
            self.epoch - whole,
            self.steps_per_epoch,
            max(self.total_steps - steps, 1),
            max(self.epochs - whole, 1),
        )


SCHEDULES: dict[str, type[Schedule]] = {}


def register_schedule(cls: type[Schedule]) -> type[Schedule]:
    """Class decorator: make a schedule available by its ``name`` to configs and the CLI."""
    if cls.name in SCHEDULES:
        raise ScheduleError(f"schedule name {cls.name!r} registered twice")
    SCHEDULES[cls.name] = cls
    return cls


class Schedule:
    """Base class. Subclasses are frozen dataclasses with a ``name`` and ``trainable``.

    Schedules only ever freeze groups they act on: ``groups=None`` means "all schedulable
    groups", and groups outside the ones a schedule names keep training.
    """

    name: ClassVar[str] = ""
    #: Fields that hold nested schedules (serialised as dicts).
    nested: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`lr_factors` can answer anything but 1.0. Read it on the instance: a
    #: schedule whose answer depends on its options (FreezeOut's ``anneal``) or on nested
    #: schedules (``warmup``, ``chain``, ``intersect``) overrides it with a property.
    scales_lr: ClassVar[bool] = False
    #: Whether the run must hand the schedule each finished epoch's logged row (:meth:`observe`):
    #: an adaptive schedule (AutoFreeze) decides from logged statistics, at epoch boundaries only.
    adapts: ClassVar[bool] = False

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        """The names in ``groups`` that train at ``clock``."""
        raise NotImplementedError

    def frozen(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        return frozenset(groups) - self.trainable(clock, groups)

    def lr_factors(self, clock: Clock, groups: Sequence[str]) -> dict[str, float]:
        """Per-group multipliers of the run's base learning rate at ``clock``.

        A group missing from the answer has factor 1.0. Only schedules with ``scales_lr``
        answer anything else (FreezeOut anneals each layer's rate to zero at its stop time).
        Like :meth:`trainable`, this is a pure function of the clock.
        """
        return {}

    def resets_state(self, clock: Clock) -> bool:
        """Whether the optimizer state of every parameter is cleared before the step at ``clock``.

        BAdam clears its base optimizer's whole state at every block switch, even when the
        block stays (``fixed`` order) and for parameters that always train; the
        :class:`~freezelab.freezer.Freezer` does so where this says ``True``. Pure in the clock.
        """
        return False

    def observe(self, history: Sequence[Mapping[str, Any]], groups: Sequence[str], epochs: int | None = None) -> Schedule:
        """The schedule for the next epoch, given every finished epoch's logged row (``history``).

        Only schedules with ``adapts`` answer anything but ``self``. The answer must depend on
        ``history`` alone (never on what was observed before), so that a resumed run that reads
        its rows back decides exactly as the uninterrupted one did.
        """
        return self

    def validate(self, groups: Sequence[str]) -> None:
        """Raise a :class:`ScheduleError` if the schedule cannot run on ``groups``."""
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if field.name in self.nested:
                for sub in value if isinstance(value, tuple) else (value,):
                    (sub[0] if isinstance(sub, tuple) else sub).validate(groups)

    def describe(self) -> str:
        """One line for logs and reports."""
        raise NotImplementedError

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON safe) that :func:`schedule_from_dict` turns back into ``self``."""
        out: dict[str, Any] = {"name": self.name}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            out[field.name] = _plain(getattr(self, field.name))
        return out

    def __str__(self) -> str:
        return self.describe()


def _plain(value: Any) -> Any:
    if isinstance(value, Schedule):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _restore(value: Any) -> Any:
    """Lists back to tuples and nested dicts back to schedules (frozen dataclasses need hashables)."""
    if isinstance(value, Mapping) and "name" in value and value["name"] in SCHEDULES:
        return schedule_from_dict(value)
    if isinstance(value, list):
        return tuple(_restore(v) for v in value)
    return value


def schedule_from_dict(spec: Mapping[str, Any] | str) -> Schedule:
    """Build a schedule from ``{"name": ..., **params}`` (or a bare name).

    Unknown names and unknown keys are errors that list what is valid.
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in SCHEDULES:
        raise ScheduleError(f"unknown schedule {name!r}; choose from {sorted(SCHEDULES)}")
    cls = SCHEDULES[name]
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    bad = [k for k in spec if k not in valid]
    if bad:
        raise ScheduleError(f"schedule {name!r} has no option {bad[0]!r}; its options are {valid}")
    try:
        return cls(**{k: _restore(v) for k, v in spec.items()})
    except (TypeError, ValueError) as e:
        raise ScheduleError(f"schedule {name!r}: {e}") from None


def parse_schedule(text: str) -> Schedule:
    """Parse the CLI shorthand ``name`` or ``name:key=value,key=value``.

    Values are read as YAML scalars or flow lists, so ``alternate:every=50,unit=batch`` and
    ``alternate:groups=[lora,norm],first=norm`` both work.

    >>> parse_schedule("alternate:unit=batch,every=50").describe()
    'alternate first/second every 50 batches, first trains first'
    """
    name, _, rest = text.partition(":")
    spec: dict[str, Any] = {"name": name.strip()}
    for item in _split_top_level(rest):
        key, eq, value = item.partition("=")
        if not eq:
            raise ScheduleError(f"expected key=value in schedule {text!r}, got {item!r}")
        spec[key.strip()] = yaml.safe_load(value)
    return schedule_from_dict(spec)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p for p in parts if p.strip()]


def list_schedules() -> dict[str, str]:
    """Schedule names with the first line of their docstring."""
    return {n: (c.__doc__ or "").strip().splitlines()[0] for n, c in sorted(SCHEDULES.items())}


UNITS = ("batch", "epoch")


def check_positive(name: str, value: object) -> None:
    """Raise unless ``value`` is a positive integer (``True`` is not one)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ScheduleError(f"{name} must be a positive integer, got {value!r}")


def check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ScheduleError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_unit(unit: object) -> None:
    check_choice("unit", unit, UNITS)


def check_groups(schedule: str, named: Sequence[str] | None, groups: Sequence[str], *, least: int = 1) -> None:
    """Raise if a schedule names groups that do not exist or too few to act on."""
    if named is None:
        if len(groups) < least:
            raise ScheduleError(f"{schedule} needs at least {least} schedulable groups, the model has {list(groups)}")
        return
    missing = [g for g in named if g not in groups]
    if missing:
        raise ScheduleError(f"{schedule} names group(s) {missing} that are not schedulable groups {list(groups)}")
    if len(named) < least:
        raise ScheduleError(f"{schedule} needs at least {least} groups, got {list(named)}")


def acted_on(named: Sequence[str] | None, groups: Sequence[str]) -> tuple[str, ...]:
    """The groups a schedule acts on, in the model's depth order."""
    return tuple(groups) if named is None else tuple(g for g in groups if g in set(named))
