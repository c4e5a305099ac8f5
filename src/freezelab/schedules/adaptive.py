"""AutoFreeze-style adaptive freezing: a prefix group freezes once its gradient norm stops changing.

An adaptive schedule still has to be a pure function of the clock: the fast path asks for every
step's trainable set when an epoch starts, a checkpoint must resume to the same run, and a
report must be able to say why a group froze. So the adaptivity lives *outside* ``trainable``:

* :class:`AutoFreeze` holds an immutable record of decisions, ``((group, epoch), ...)`` meaning
  "``group`` is frozen from the start of 0-based ``epoch`` on"; ``trainable`` only reads it;
* :func:`autofreeze_decisions` is a pure function of the logged per-epoch history (the run's
  epochs table, one row per finished epoch with a ``grad_norm:<group>`` column per group);
* after each epoch the run calls :meth:`AutoFreeze.observe` with the rows so far and trains the
  next epoch under the schedule it returns. The decisions are recomputed from the *whole*
  history each time, so a resumed run (which reads its rows back from ``epochs.parquet``) holds
  exactly the decisions of the uninterrupted one.

The rule, for the earliest still-trainable group ``g`` after finished epoch ``e`` (0-based)::

    |n_g[e] - n_g[e - window]| / n_g[e - window] < threshold   ->   g frozen from epoch e + 1

where ``n_g`` is the group's gradient norm on the run's fixed probe batch. One group freezes
per epoch boundary at most, never the last acted-on group (the head), and never before
``start`` of training. Decisions only ever freeze: a frozen group stays frozen for the rest of
the run, which is what makes caching its outputs possible (:mod:`freezelab.run.prefix_cache`).
Method card, with what this follows of Liu et al. (2021) and what it does not:
docs/methods/autofreeze.md.

>>> s = AutoFreeze(threshold=0.1, window=1)
>>> rows = [{"grad_norm:a": 1.0, "grad_norm:b": 2.0}, {"grad_norm:a": 0.95, "grad_norm:b": 1.0}]
>>> s.observe(rows, ["a", "b"]).decisions
(('a', 2),)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .base import Clock, Schedule, ScheduleError, acted_on, check_groups, check_positive, register_schedule

__all__ = ["AutoFreeze", "autofreeze_decisions", "GRAD_NORM_PREFIX"]

#: The epochs-table column prefix of a group's gradient norm (``grad_norm:<group>``).
GRAD_NORM_PREFIX = "grad_norm:"


def autofreeze_decisions(
    history: Sequence[Mapping[str, float]],
    units: Sequence[str],
    *,
    threshold: float,
    window: int,
    start_epoch: int = 0,
    given: Sequence[tuple[str, int]] = (),
) -> tuple[tuple[str, int], ...]:
    """The freeze decisions ``((group, from_epoch), ...)`` that ``history`` implies.

    ``history[e]`` is the logged row of 0-based epoch ``e`` (``grad_norm:<group>`` keys);
    ``units`` are the groups acted on, in depth order (the last is never frozen). Pure: the
    same history always gives the same decisions, whichever epoch it is called after.
    ``given`` are decisions fixed in advance (kept, and the walk starts after them).

    >>> h = [{"grad_norm:a": 1.0}, {"grad_norm:a": 1.05}]
    >>> autofreeze_decisions(h, ["a", "b"], threshold=0.1, window=1)
    (('a', 2),)
    >>> autofreeze_decisions(h, ["a", "b"], threshold=0.01, window=1)
    ()
    """
    decisions = list(given)
    frozen = {g for g, _ in decisions}
    for e in range(window, len(history)):
        candidates = [u for u in units[:-1] if u not in frozen]
        if not candidates or e + 1 < start_epoch:
            continue
        group = candidates[0]
        key = GRAD_NORM_PREFIX + group
        if key not in history[e] or key not in history[e - window]:
            raise ScheduleError(
                f"autofreeze needs the column {key!r} in the epochs table (epoch {e + 1}); "
                "train with grad_stats: true so each epoch logs per-group gradient norms"
            )
        now, before = float(history[e][key]), float(history[e - window][key])
        if not (math.isfinite(now) and math.isfinite(before)) or before <= 0:
            continue  # no usable signal (a zero or NaN norm): keep training, decide later
        if abs(now - before) / before < threshold:
            decisions.append((group, e + 1))
            frozen.add(group)
    return tuple(decisions)


@register_schedule
@dataclass(frozen=True)
class AutoFreeze(Schedule):
    """AutoFreeze-style: freeze the earliest trainable group once its gradient-norm change is below ``threshold``.

    ``threshold`` is the relative change ``|n[e] - n[e-window]| / n[e-window]`` of the group's
    gradient norm over ``window`` epochs; ``start`` the fraction of the epochs before which
    nothing freezes. ``decisions`` is the record the run extends through :meth:`observe`
    (empty in a config; a spec may fix some in advance).
    """

    name = "autofreeze"
    threshold: float = 0.1
    window: int = 1
    start: float = 0.0
    groups: tuple[str, ...] | None = None
    decisions: tuple[tuple[str, int], ...] = ()

    #: The run must call :meth:`observe` after every epoch (see :mod:`freezelab.run.loop`).
    adapts = True

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) or self.threshold <= 0:
            raise ScheduleError(f"threshold must be a positive number (a relative change such as 0.1), got {self.threshold!r}")
        check_positive("window", self.window)
        if not isinstance(self.start, (int, float)) or not 0.0 <= self.start < 1.0:
            raise ScheduleError(f"start must be a fraction in [0, 1), got {self.start!r}")
        for item in self.decisions:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], int) and item[1] >= 0):
                raise ScheduleError(f"decisions are [group, from_epoch] pairs, got {item!r}")

    def validate(self, groups: Sequence[str]) -> None:
        check_groups("autofreeze", self.groups, groups, least=1)
        unknown = [g for g, _ in self.decisions if g not in groups]
        if unknown:
            raise ScheduleError(f"autofreeze decisions name group(s) {unknown} that are not schedulable groups {list(groups)}")

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        return frozenset(groups) - {g for g, epoch in self.decisions if clock.epoch >= epoch}

    def observe(self, history: Sequence[Mapping[str, float]], groups: Sequence[str], epochs: int | None = None) -> AutoFreeze:
        """The schedule for the next epoch: this one with the decisions ``history`` implies.

        Call it on the schedule of the *config* (whose decisions are the fixed ones), with every
        finished epoch's row; ``epochs`` (the run's length) turns ``start`` into an epoch.
        """
        start_epoch = math.ceil(self.start * epochs) if epochs else 0
        made = autofreeze_decisions(history, acted_on(self.groups, groups), threshold=self.threshold,
                                    window=self.window, start_epoch=start_epoch, given=self.decisions)
        return replace(self, decisions=made)

    def describe(self) -> str:
        made = ", ".join(f"{g} from epoch {e + 1}" for g, e in self.decisions)
        return (
            f"autofreeze: freeze the earliest trainable group once its gradient norm changes by less than "
            f"{self.threshold:.0%} over {self.window} epoch(s)" + (f" (frozen: {made})" if made else "")
        )
