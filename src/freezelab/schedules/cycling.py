"""Schedules that train one slice of the model at a time: BAdam's block cycling and LISA.

Both pick the slice from the period index ``step // every``; randomness is drawn from a
generator seeded by ``(seed, period)`` so the answer is a pure function of the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .base import Clock, Schedule, ScheduleError, acted_on, check_groups, register_schedule

__all__ = ["BlockCycle", "RandomLayers"]

_ORDERS = ("ascending", "descending", "random")


@register_schedule
@dataclass(frozen=True)
class BlockCycle(Schedule):
    """BAdam: one block trains for ``every`` batches, then the next; ``order`` of the cycle.

    ``random`` draws a fresh permutation of the blocks for each full cycle (BAdam's
    "random reshuffling"). Pair it with the ``release`` optimizer policy to drop the state of
    inactive blocks, which is where BAdam's memory saving comes from.
    """

    name = "block_cycle"
    groups: tuple[str, ...] | None = None
    every: int = 50
    order: str = "ascending"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or self.every < 1:
            raise ScheduleError(f"every must be a positive integer, got {self.every!r}")
        if self.order not in _ORDERS:
            raise ScheduleError(f"order must be one of {list(_ORDERS)}, got {self.order!r}")

    def validate(self, groups: Sequence[str]) -> None:
        check_groups("block_cycle", self.groups, groups, least=1)

    def active(self, period: int, n: int) -> int:
        """Index of the block that trains in ``period`` (of ``n`` blocks)."""
        cycle, pos = divmod(period, n)
        if self.order == "ascending":
            return pos
        if self.order == "descending":
            return n - 1 - pos
        return int(np.random.default_rng([self.seed, cycle]).permutation(n)[pos])

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        blocks = acted_on(self.groups, groups)
        keep = blocks[self.active(clock.step // self.every, len(blocks))]
        return frozenset(groups) - set(blocks) | {keep}

    def describe(self) -> str:
        return f"block cycle (BAdam): one block every {self.every} batches, {self.order} order"


@register_schedule
@dataclass(frozen=True)
class RandomLayers(Schedule):
    """LISA: every ``every`` batches, ``k`` groups drawn uniformly at random train; the rest wait.

    LISA keeps the embedding and head always trainable: mark those groups
    ``always_trainable`` so they are not among the ones drawn.
    """

    name = "random_layers"
    k: int = 2
    every: int = 50
    groups: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("k", "every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ScheduleError(f"{name} must be a positive integer, got {value!r}")

    def validate(self, groups: Sequence[str]) -> None:
        check_groups("random_layers", self.groups, groups, least=1)
        n = len(acted_on(self.groups, groups))
        if self.k > n:
            raise ScheduleError(f"random_layers: k={self.k} exceeds the {n} groups it draws from")

    def chosen(self, period: int, units: Sequence[str]) -> frozenset[str]:
        idx = np.random.default_rng([self.seed, period]).choice(len(units), size=self.k, replace=False)
        return frozenset(units[i] for i in idx)

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        units = acted_on(self.groups, groups)
        return frozenset(groups) - set(units) | self.chosen(clock.step // self.every, units)

    def describe(self) -> str:
        return f"random layers (LISA): {self.k} groups drawn every {self.every} batches"
