"""The freezer: applies a schedule to a model and its optimizer, step by step.

Freezing is made *real* in three ways:

* ``requires_grad=False`` on frozen parameters before the forward pass, so autograd records
  no weight gradient for them and, for a frozen prefix, no input gradient either: the
  backward pass really skips that work.
* ``grad=None`` on every parameter the moment it freezes. PyTorch's optimizers skip a
  parameter whose gradient is ``None``, so neither weight decay nor momentum can move it
  (a zero gradient would not protect it: AdamW would still decay it and SGD momentum would
  still carry it).
* an *optimizer policy* that says what happens to the optimizer when the trainable set
  changes:

  ``keep``      one optimizer over everything; frozen parameters simply have no gradient.
                Cheapest and exact; their optimizer state stays allocated.
  ``recreate``  a new optimizer over the trainable parameters at every switch, as seed 000
                did. All optimizer state (Adam moments, momentum) is lost at each switch:
                kept for reproducing that study, not recommended.
  ``remove``    Composer's way: frozen parameters leave ``param_groups`` but keep their
                state, which is used again if they thaw.
  ``release``   BAdam's way: frozen parameters leave ``param_groups`` and their state is
                deleted, freeing its memory; a thawed parameter starts with fresh state.

Optionally (``bn_stats="frozen"``) a normalisation layer whose parameters are all frozen
is put in eval mode, so its running statistics stop moving too.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from freezelab import groups, schedules
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    >>> fz = Freezer(net, groups.depth(net, 2), schedules.Alternate(unit="batch"), opt)
    >>> fz.step(schedules.Clock.at(0, steps_per_epoch=10, epochs=1))
    True
    >>> [p.requires_grad for p in net.parameters()]
    [True, True, False, False]
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .groups import NORM_TYPES, GroupSet
from .schedules import Clock, Schedule

__all__ = ["Freezer", "POLICIES", "BN_STATS", "freeze"]

POLICIES = ("keep", "recreate", "remove", "release")
BN_STATS = ("train", "frozen")


def freeze(
    model: nn.Module,
    groups: GroupSet,
    trainable: set[str] | frozenset[str],
    optimizer: torch.optim.Optimizer | None = None,
    policy: str = "keep",
) -> torch.optim.Optimizer | None:
    """Functional form: make exactly the groups in ``trainable`` (plus always-trainable ones) train.

    Returns the optimizer to use from now on (a new one under ``recreate``). For schedules
    over many steps use :class:`Freezer`, which also remembers the full parameter groups that
    ``remove``/``release`` need to thaw parameters again.
    """
    fz = Freezer(model, groups, _Fixed(frozenset(trainable)), optimizer, policy=policy)
    fz.apply(frozenset(trainable) | set(groups.always_trainable))
    return fz.optimizer


class _Fixed(Schedule):
    """A schedule that always answers the same set (for the functional form)."""

    name = "_fixed"

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def trainable(self, clock: Clock, groups):  # noqa: D102 - trivial
        return self.names & set(groups)

    def validate(self, groups) -> None:
        bad = self.names - set(groups)
        if bad:
            raise ValueError(f"unknown group(s) {sorted(bad)}; schedulable groups are {list(groups)}")


class Freezer:
    """Keeps a model's trainable set equal to what ``schedule`` says, step by step.

    Call :meth:`step` with the clock *before* each forward pass; it returns ``True`` when the
    trainable set changed (callers that cache compiled steps per set use that). Use
    :attr:`optimizer` rather than holding on to the optimizer you passed in: the
    ``recreate`` policy replaces it.
    """

    def __init__(
        self,
        model: nn.Module,
        groups: GroupSet,
        schedule: Schedule,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        policy: str = "keep",
        bn_stats: str = "train",
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown optimizer policy {policy!r}; choose from {list(POLICIES)}")
        if bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats must be one of {list(BN_STATS)}, got {bn_stats!r}")
        if policy != "keep" and optimizer is None:
            raise ValueError(f"policy {policy!r} needs the optimizer; pass optimizer=...")
        groups.validate_for(model)
        schedule.validate(groups.schedulable)
        self.model, self.groups, self.schedule = model, groups, schedule
        self.policy, self.bn_stats = policy, bn_stats
        self.optimizer = optimizer
        self.trainable: frozenset[str] | None = None
        self.switches = 0
        self.trainable_numel = 0
        named = dict(model.named_parameters())
        self._params = {g.name: [named[p] for p in g.param_names] for g in groups}
        self._total_numel = sum(p.numel() for p in model.parameters())
        # The full membership of each optimizer param group, so `remove`/`release` can thaw.
        self._full_groups = [list(g["params"]) for g in optimizer.param_groups] if optimizer else []
        self._norms = [
            (m, list(m.parameters(recurse=False)))
            for m in model.modules()
            if isinstance(m, NORM_TYPES) and getattr(m, "track_running_stats", False)
        ]

    # -- the per-step entry point ----------------------------------------------------
    def wanted(self, clock: Clock) -> frozenset[str]:
        """The groups that should train at ``clock``: the schedule's answer plus always-trainable ones."""
        return self.schedule.trainable(clock, self.groups.schedulable) | set(self.groups.always_trainable)

    def step(self, clock: Clock) -> bool:
        """Apply the schedule's answer for ``clock``; ``True`` if the trainable set changed."""
        names = self.wanted(clock)
        changed = names != self.trainable
        if changed:
            self.apply(names)
        if self.bn_stats == "frozen":
            self._update_norm_modes()
        return changed

    def apply(self, names: frozenset[str]) -> None:
        """Make exactly the groups ``names`` trainable and bring the optimizer in line."""
        for group, params in self._params.items():
            on = group in names
            for p in params:
                p.requires_grad_(on)
                if not on:
                    p.grad = None
        if self.trainable is not None:
            self.switches += 1
        self.trainable = frozenset(names)
        self.trainable_numel = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if self.optimizer is not None:
            self._sync_optimizer()

    # -- optimizer policies -------------------------------------------------------------
    def _sync_optimizer(self) -> None:
        opt = self.optimizer
        assert opt is not None
        if self.policy == "keep":
            return
        if self.policy == "recreate":
            hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            new_groups = [
                {**h, "params": [p for p in full if p.requires_grad]} for h, full in zip(hyper, self._full_groups)
            ]
            new_groups = [g for g in new_groups if g["params"]]
            if not new_groups:
                raise ValueError("policy 'recreate' cannot build an optimizer with nothing trainable; use 'keep'")
            self.optimizer = type(opt)(new_groups, **_ctor_defaults(opt))
            return
        for group, full in zip(opt.param_groups, self._full_groups):
            group["params"] = [p for p in full if p.requires_grad]
        if self.policy == "release":
            self._release_frozen_state()

    def _release_frozen_state(self) -> None:
        assert self.optimizer is not None
        for full in self._full_groups:
            for p in full:
                if not p.requires_grad:
                    self.optimizer.state.pop(p, None)

    @contextlib.contextmanager
    def full_param_groups(self) -> Iterator[torch.optim.Optimizer]:
        """Temporarily put every parameter back into ``param_groups`` (for state_dict round trips)."""
        opt = self.optimizer
        if opt is None or self.policy not in ("remove", "release"):
            yield opt  # type: ignore[misc]
            return
        current = [g["params"] for g in opt.param_groups]
        for group, full in zip(opt.param_groups, self._full_groups):
            group["params"] = list(full)
        try:
            yield opt
        finally:
            for group, params in zip(opt.param_groups, current):
                group["params"] = params

    # -- norm statistics --------------------------------------------------------------
    def _update_norm_modes(self) -> None:
        for module, params in self._norms:
            module.train(self.model.training and any(p.requires_grad for p in params))

    # -- accounting ---------------------------------------------------------------------
    @property
    def trainable_fraction(self) -> float:
        """Trainable parameters over all parameters of the model."""
        return self.trainable_numel / self._total_numel if self._total_numel else 0.0

    def describe(self) -> str:
        return f"{self.schedule.describe()}; groups {self.groups.describe()}; optimizer policy {self.policy}"

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The trainable set and the optimizer's state, including state parked by ``remove``."""
        state: dict[str, Any] = {"trainable": sorted(self.trainable or ()), "switches": self.switches}
        if self.optimizer is not None:
            with self.full_param_groups() as opt:
                state["optimizer"] = opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (on a freshly built model and optimizer)."""
        self.apply(frozenset(state["trainable"]))
        self.switches = state.get("switches", 0)
        if self.optimizer is not None and "optimizer" in state:
            with self.full_param_groups() as opt:
                opt.load_state_dict(state["optimizer"])
            if self.policy == "release":
                self._release_frozen_state()


def _ctor_defaults(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The constructor keywords an optimizer was built with (``defaults`` minus derived keys)."""
    accepted = set(inspect.signature(type(opt).__init__).parameters)
    return {k: v for k, v in opt.defaults.items() if k in accepted and k != "params"}
