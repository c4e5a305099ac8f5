"""Schedules that train one slice of the model at a time: BAdam's block cycling and LISA.

Both pick the slice from the period index ``step // every``. By default randomness is drawn
from a generator seeded by ``(seed, period)`` (or ``(seed, cycle)``), so the answer is an O(1)
pure function of the clock. The references draw from one generator in sequence instead (BAdam
from torch's, LISA in LMFlow from numpy's global one); ``rng="torch"`` and ``rng="numpy_legacy"``
replay those sequences, still as a pure function of the clock (the draws are memoised).
Method cards: docs/methods/block_cycle.md and docs/methods/random_layers.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .base import Clock, Schedule, ScheduleError, acted_on, check_choice, check_groups, check_positive, register_schedule

__all__ = ["BlockCycle", "RandomLayers"]

_ORDERS = ("ascending", "descending", "random", "fixed")
_OTHERS = ("train", "freeze")


class _Replay:
    """The ``index``-th draw of a sequential generator, memoised per (kind, seed, size...) key.

    A reference that draws from one generator in sequence makes draw ``i`` depend on every
    draw before it; replaying them once and remembering the answers keeps the schedule a pure
    function of the clock at O(1) amortised cost per step.
    """

    def __init__(self) -> None:
        self._runs: dict[tuple, tuple[Callable[[], tuple[int, ...]], list[tuple[int, ...]]]] = {}

    def get(self, key: tuple, make: Callable[[], Callable[[], tuple[int, ...]]], index: int) -> tuple[int, ...]:
        if key not in self._runs:
            self._runs[key] = (make(), [])
        draw, seen = self._runs[key]
        while len(seen) <= index:
            seen.append(draw())
        return seen[index]


_REPLAY = _Replay()


def _torch_randperms(seed: int, n: int) -> Callable[[], tuple[int, ...]]:
    """Successive ``torch.randperm(n)`` from a CPU generator seeded with ``seed``.

    That is what BAdam's ``torch.randperm`` calls return after ``torch.manual_seed(seed)``,
    as long as nothing else draws from torch's global generator in between.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    return lambda: tuple(torch.randperm(n, generator=gen).tolist())


def _legacy_choices(seed: int, n: int, k: int) -> Callable[[], tuple[int, ...]]:
    """Successive ``choice(range(n), k, replace=False)`` from ``RandomState(seed)``.

    That is what LMFlow's ``np.random.choice`` calls return after ``np.random.seed(seed)``
    (the HF Trainer calls it with ``args.seed``), as long as nothing else draws from numpy's
    global generator in between.
    """
    state = np.random.RandomState(seed)
    return lambda: tuple(int(i) for i in state.choice(range(n), k, replace=False))


@register_schedule
@dataclass(frozen=True)
class BlockCycle(Schedule):
    """BAdam: one block trains for ``every`` batches, then the next; ``order`` of the cycle.

    ``random`` draws a fresh permutation of the blocks for each full cycle (BAdam's
    "random reshuffling"); ``fixed`` trains block ``start`` only. Pair it with the ``release``
    optimizer policy to drop the state of inactive blocks, which is where BAdam's memory
    saving comes from.

    Options that reproduce ``badam.BlockOptimizer`` exactly (docs/methods/block_cycle.md):
    ``start`` (its ``start_block``), ``first_every`` (it trains its first block
    ``max(every - 1, 1)`` steps), ``rng="torch"`` (its ``torch.randperm`` sequence, blocks taken
    from the end of each permutation) and ``others="freeze"`` (parameters outside the blocks are
    frozen, as with its default ``include_embedding=False, include_lm_head=False``) and
    ``reset_state=True`` (it clears the whole optimizer state at every switch, even when the
    block stays, as in ``fixed`` order or a random cycle repeating the last block).
    Method card: docs/methods/block_cycle.md.
    """

    name = "block_cycle"
    groups: tuple[str, ...] | None = None
    every: int = 50
    order: str = "ascending"
    seed: int = 0
    start: int | None = None
    first_every: int | None = None
    rng: str = "numpy"
    others: str = "train"
    reset_state: bool = False

    def __post_init__(self) -> None:
        check_positive("every", self.every)
        if not isinstance(self.reset_state, bool):
            raise ScheduleError(f"reset_state must be true or false, got {self.reset_state!r}")
        check_choice("order", self.order, _ORDERS)
        check_choice("rng", self.rng, ("numpy", "torch"))
        check_choice("others", self.others, _OTHERS)
        if self.first_every is not None:
            check_positive("first_every", self.first_every)
        if self.start is not None:
            if not isinstance(self.start, int) or isinstance(self.start, bool) or self.start < 0:
                raise ScheduleError(f"start must be a block index (0, 1, ...), got {self.start!r}")
            if self.order == "random":
                raise ScheduleError("start does not apply to order 'random'; drop start or pick another order")
        elif self.order == "fixed":
            raise ScheduleError("order 'fixed' trains one block only: say which with start=<block index>")

    def validate(self, groups: Sequence[str]) -> None:
        check_groups("block_cycle", self.groups, groups, least=1)
        n = len(acted_on(self.groups, groups))
        if self.start is not None and self.start >= n:
            raise ScheduleError(f"block_cycle: start={self.start} but there are only {n} blocks (0..{n - 1})")

    def period(self, step: int) -> int:
        """Index of the block period that ``step`` falls in (the number of switches before it)."""
        first = self.every if self.first_every is None else self.first_every
        return 0 if step < first else 1 + (step - first) // self.every

    def resets_state(self, clock: Clock) -> bool:
        """With ``reset_state``: at the first step of every period after the first (BAdam's switches)."""
        return self.reset_state and clock.step > 0 and self.period(clock.step) != self.period(clock.step - 1)

    def active(self, period: int, n: int) -> int:
        """Index of the block that trains in ``period`` (of ``n`` blocks)."""
        if self.order == "fixed":
            return self.start  # type: ignore[return-value]  # __post_init__ insists on it
        cycle, pos = divmod(period, n)
        if self.order == "ascending":
            return ((self.start or 0) + pos) % n
        if self.order == "descending":
            return ((n - 1 if self.start is None else self.start) - pos) % n
        if self.rng == "torch":
            perm = _REPLAY.get(("torch", self.seed, n), lambda: _torch_randperms(self.seed, n), cycle)
            return perm[n - 1 - pos]  # BAdam pops from the end of each permutation
        return int(np.random.default_rng([self.seed, cycle]).permutation(n)[pos])

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        blocks = acted_on(self.groups, groups)
        keep = blocks[self.active(self.period(clock.step), len(blocks))]
        base = frozenset() if self.others == "freeze" else frozenset(groups) - set(blocks)
        return base | {keep}

    def describe(self) -> str:
        first = f" (first block {self.first_every})" if self.first_every is not None else ""
        start = f" from block {self.start}" if self.start is not None else ""
        others = ", other groups frozen" if self.others == "freeze" else ""
        reset = ", optimizer state cleared at every switch" if self.reset_state else ""
        return (f"block cycle (BAdam): one block every {self.every} batches{first}, {self.order} order{start}"
                f"{others}{reset}")


@register_schedule
@dataclass(frozen=True)
class RandomLayers(Schedule):
    """LISA: every ``every`` batches, ``k`` groups drawn uniformly at random train; the rest wait.

    LISA keeps the embedding and head always trainable: mark those groups
    ``always_trainable`` (or leave them out of ``groups``) so they are not among the ones drawn.
    ``rng="numpy_legacy"`` replays LMFlow's draws exactly. Method card:
    docs/methods/random_layers.md.
    """

    name = "random_layers"
    k: int = 2
    every: int = 50
    groups: tuple[str, ...] | None = None
    seed: int = 0
    rng: str = "numpy"

    def __post_init__(self) -> None:
        check_positive("k", self.k)
        check_positive("every", self.every)
        check_choice("rng", self.rng, ("numpy", "numpy_legacy"))

    def validate(self, groups: Sequence[str]) -> None:
        check_groups("random_layers", self.groups, groups, least=1)
        n = len(acted_on(self.groups, groups))
        if self.k > n:
            raise ScheduleError(f"random_layers: k={self.k} exceeds the {n} groups it draws from")

    def chosen(self, period: int, units: Sequence[str]) -> frozenset[str]:
        n = len(units)
        if self.rng == "numpy_legacy":
            idx: Sequence[int] = _REPLAY.get(
                ("numpy_legacy", self.seed, n, self.k), lambda: _legacy_choices(self.seed, n, self.k), period
            )
        else:
            idx = np.random.default_rng([self.seed, period]).choice(n, size=self.k, replace=False)
        return frozenset(units[i] for i in idx)

    def trainable(self, clock: Clock, groups: Sequence[str]) -> frozenset[str]:
        units = acted_on(self.groups, groups)
        return frozenset(groups) - set(units) | self.chosen(clock.step // self.every, units)

    def describe(self) -> str:
        rng = ", LMFlow's numpy draws" if self.rng == "numpy_legacy" else ""
        return f"random layers (LISA): {self.k} groups drawn every {self.every} batches{rng}"
