"""The freezer: applies a schedule to a model and its optimizer(s), step by step.

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
  ``recreate``  seed 000's "new optimizer over the trainable parameters at every switch": all
                optimizer state (Adam moments, momentum) is lost at each switch. Done *in
                place* (frozen parameters leave ``param_groups``, the state is cleared), which
                is bit-identical to building a new optimizer but keeps the object, so a host
                trainer keeps stepping it and LR schedulers stay bound to it.
  ``remove``    Composer's way: frozen parameters leave ``param_groups`` but keep their
                state, which is used again if they thaw.
  ``release``   BAdam's way: frozen parameters leave ``param_groups`` and their state is
                deleted, freeing its memory; a thawed parameter starts with fresh state.

The optimizer stays a plain torch optimizer under every policy: the freezer hooks its
``state_dict()`` so that the saved state always lists the *full* parameter groups, exactly as
a freshly built optimizer holds them, and ``load_state_dict()`` restores the trainable set. A
checkpoint written by torch, Lightning or the Hugging Face Trainer in the middle of a
schedule therefore loads into a freshly built optimizer and resumes bit for bit.

What the freezer manages, and what it leaves alone:

* Parameters in no group are *unmanaged*: their ``requires_grad`` stays as it is.
* A parameter that was already frozen when the freezer was built (a PEFT base weight, a
  backbone the user froze) stays frozen, unless its group was named explicitly
  (``groups.pattern`` or ``include_frozen=True``): freezelab never thaws what the user froze.
* Every parameter the schedule may make trainable must be stepped by the optimizer;
  otherwise the freezer refuses to start (a "norm" phase that updates nothing is worse
  than an error). ``missing="add"`` puts such parameters into the first param group.

Optionally (``bn_stats="frozen"``) a normalisation layer whose parameters are all frozen
is put in eval mode, so its running statistics stop moving too; and (``merge_lora=True``) a
peft LoRA layer whose adapters are all frozen is merged into its base weight and restored
exactly when they thaw (:mod:`freezelab.lora_merge`), so a frozen branch costs nothing.

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
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .groups import NORM_TYPES, GroupSet, mark_frozen_by_freezelab, user_frozen
from .lora_merge import LoraMerge
from .schedules import Clock, Schedule

__all__ = ["Freezer", "FreezerError", "check_options", "POLICIES", "BN_STATS", "MISSING", "freeze", "unwrap_optimizer"]

POLICIES = ("keep", "recreate", "remove", "release")
BN_STATS = ("train", "frozen")
MISSING = ("error", "add")
#: The key under which the trainable set travels inside ``optimizer.state_dict()``.
STATE_KEY = "freezelab"

Optimizers = torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None


class FreezerError(ValueError):
    """A freezer that cannot do what it is asked; the message names the parameters and the fix."""


def check_options(policy: str, bn_stats: str, missing: str) -> None:
    """Raise :class:`FreezerError` for an unknown policy, ``bn_stats`` or ``missing`` value."""
    if policy not in POLICIES:
        raise FreezerError(f"unknown optimizer policy {policy!r}; choose from {list(POLICIES)}")
    if bn_stats not in BN_STATS:
        raise FreezerError(f"bn_stats must be one of {list(BN_STATS)}, got {bn_stats!r}")
    if missing not in MISSING:
        raise FreezerError(f"missing must be one of {list(MISSING)}, got {missing!r}")


# The freezer attached to each optimizer (one at a time: a new one takes over the hooks).
_attached: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unwrap_optimizer(opt: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a host's wrapper (accelerate's, Lightning's), or ``opt`` itself.

    Wrappers delegate ``param_groups``, ``state`` and ``state_dict`` to the optimizer they
    wrap, so the freezer must work on (and hook) that one.
    """
    seen = 0
    while seen < 8:
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            inner = getattr(opt, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is opt:
            break
        opt, seen = inner, seen + 1
    if not isinstance(opt, torch.optim.Optimizer):
        raise FreezerError(f"expected a torch.optim.Optimizer, got {type(opt).__name__}; pass the optimizer that steps the model")
    return opt


def freeze(
    model: nn.Module,
    groups: GroupSet,
    trainable: set[str] | frozenset[str],
    optimizer: Optimizers = None,
    policy: str = "keep",
) -> torch.optim.Optimizer | None:
    """Functional form: make exactly the groups in ``trainable`` (plus always-trainable ones) train.

    Returns the optimizer (the same object under every policy). Calling it again on the
    same model and optimizer takes over from the previous call, so groups it froze can thaw.
    For schedules over many steps use :class:`Freezer`.
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
            raise FreezerError(f"unknown group(s) {sorted(bad)}; schedulable groups are {list(groups)}")

    def describe(self) -> str:
        return f"fixed {sorted(self.names)}"


class _OptimizerView:
    """One optimizer as the freezer sees it: the full membership of each of its param groups.

    ``remove``/``release``/``recreate`` narrow ``param_groups`` to the trainable parameters;
    the full lists are what a thawed parameter returns to and what checkpoints record.
    """

    def __init__(self, opt: torch.optim.Optimizer, previous: _OptimizerView | None) -> None:
        self.opt = opt
        if previous is not None and len(previous.full) == len(opt.param_groups):
            self.full, self.full_names = previous.full, previous.full_names  # a narrowed optimizer
        else:
            self.full = [list(g["params"]) for g in opt.param_groups]
            self.full_names = [list(g["param_names"]) if "param_names" in g else None for g in opt.param_groups]
        self.handles: list[Any] = []

    def params(self) -> list[torch.Tensor]:
        return [p for group in self.full for p in group]

    def set_full(self) -> None:
        for group, full, names in zip(self.opt.param_groups, self.full, self.full_names):
            group["params"] = list(full)
            if names is not None:
                group["param_names"] = list(names)

    def narrow(self) -> None:
        """Only parameters that train stay in ``param_groups`` (names stay aligned with them)."""
        for group, full, names in zip(self.opt.param_groups, self.full, self.full_names):
            keep = [i for i, p in enumerate(full) if p.requires_grad]
            group["params"] = [full[i] for i in keep]
            if names is not None:
                group["param_names"] = [names[i] for i in keep]

    def drop_frozen_state(self) -> None:
        for p in self.params():
            if not p.requires_grad:
                self.opt.state.pop(p, None)


class Freezer:
    """Keeps a model's trainable set equal to what ``schedule`` says, step by step.

    Call :meth:`step` with the clock *before* each forward pass; it returns ``True`` when the
    trainable set changed (callers that cache compiled steps per set use that). The clock
    counts *optimizer* steps, so a switch never falls inside a gradient-accumulation window.

    ``optimizer`` is the optimizer that steps the model (or a list of them, or ``None`` for
    ``keep`` when something else steps it); host wrappers are unwrapped. ``merge_lora``: merge
    frozen peft LoRA adapters into their base weights while frozen (:mod:`freezelab.lora_merge`).
    """

    def __init__(
        self,
        model: nn.Module,
        groups: GroupSet,
        schedule: Schedule,
        optimizer: Optimizers = None,
        *,
        policy: str = "keep",
        bn_stats: str = "train",
        missing: str = "error",
        merge_lora: bool = False,
    ) -> None:
        check_options(policy, bn_stats, missing)
        optimizers = [] if optimizer is None else [optimizer] if not isinstance(optimizer, Sequence) else list(optimizer)
        optimizers = [unwrap_optimizer(o) for o in optimizers]
        if policy != "keep" and not optimizers:
            raise FreezerError(f"policy {policy!r} needs the optimizer; pass optimizer=...")
        groups.validate_for(model)
        schedule.validate(groups.schedulable)
        self.model, self.groups, self.schedule = model, groups, schedule
        self.policy, self.bn_stats = policy, bn_stats
        self.trainable: frozenset[str] | None = None
        self.switches = 0
        self.trainable_numel = 0
        self._clock: Clock | None = None  # the clock of the step being taken (for per-group LR factors)
        self._params = self._managed_params(model, groups)
        self._total_numel = sum(p.numel() for p in model.parameters())
        self._views = [_OptimizerView(o, _attached[o]._view_of(o) if o in _attached else None) for o in optimizers]
        self._check_optimizers(missing)
        self._lr_groups = self._lr_group_names() if self.scales_lr else None
        for view in self._views:
            self._attach(view)
        self._norms = [
            (m, list(m.parameters(recurse=False)))
            for m in model.modules()
            if isinstance(m, NORM_TYPES) and getattr(m, "track_running_stats", False)
        ]
        try:
            self.lora_merge = LoraMerge(model) if merge_lora else None
        except ValueError as error:
            raise FreezerError(f"{error}; pass merge_lora=False") from None

    # -- what is managed ---------------------------------------------------------------
    @staticmethod
    def _managed_params(model: nn.Module, groups: GroupSet) -> dict[str, list[nn.Parameter]]:
        """Each group's parameters that the freezer may toggle: never one the user froze."""
        named = dict(model.named_parameters())
        out: dict[str, list[nn.Parameter]] = {}
        for g in groups:
            params = [named[p] for p in g.param_names]
            if not getattr(g, "explicit", False):
                params = [p for p in params if not user_frozen(p)]
            if not params:
                raise FreezerError(
                    f"group {g.name!r} holds only parameters that were frozen before the Freezer was built "
                    "(requires_grad=False); freezelab never thaws what you froze. Drop the group, or name its "
                    "parameters explicitly (groups.pattern, or include_frozen=True) to let the schedule train them"
                )
            out[g.name] = params
        return out

    def _check_optimizers(self, missing: str) -> None:
        """Every parameter a schedule may make trainable must be stepped by an optimizer."""
        if not self._views:
            return
        stepped = {id(p) for view in self._views for p in view.params()}
        names = {id(p): n for n, p in self.model.named_parameters()}
        absent = [p for params in self._params.values() for p in params if id(p) not in stepped]
        if not absent:
            return
        if missing == "add":
            view = self._views[0]
            view.full[0].extend(absent)
            if view.full_names[0] is not None:
                view.full_names[0].extend(names[id(p)] for p in absent)
            view.set_full()
            return
        shown = ", ".join(repr(names[id(p)]) for p in absent[:4]) + (", ..." if len(absent) > 4 else "")
        raise FreezerError(
            f"{len(absent)} parameter(s) the schedule may train are not in the optimizer ({shown}), so they would "
            "never be updated (an optimizer built from requires_grad parameters only, or over another model?). "
            "Build the optimizer over every parameter the groups hold, e.g. AdamW(model.parameters()), or pass "
            "missing='add' to put them in its first param group"
        )

    def _lr_group_names(self) -> list[list[str | None]]:
        """For each optimizer param group, the one freezelab group its managed parameters belong to.

        A schedule that scales learning rates per group (FreezeOut's annealing) can only do so
        through param groups, so each param group may hold one freezelab group's parameters.
        """
        owner = {id(p): name for name, params in self._params.items() for p in params}
        names = {id(p): n for n, p in self.model.named_parameters()}
        out = []
        for view in self._views:
            row = []
            for full in view.full:
                found = {owner[id(p)] for p in full if id(p) in owner}
                if len(found) > 1:
                    example = ", ".join(repr(names.get(id(p), "?")) for p in full[:3])
                    raise FreezerError(
                        f"{self.schedule.describe()} sets a learning rate per group, but one optimizer param group "
                        f"({example}, ...) holds the groups {sorted(found)}; build the optimizer with one param group "
                        "per freezelab group: freezelab.optim.param_groups_by_group(model, groups)"
                    )
                row.append(found.pop() if found else None)
            out.append(row)
        return out

    # -- the per-step entry point ----------------------------------------------------
    @property
    def scales_lr(self) -> bool:
        """Whether the schedule also sets per-group learning-rate factors (FreezeOut's annealing)."""
        return bool(getattr(self.schedule, "scales_lr", False))

    def lr_factors(self, clock: Clock) -> list[list[float]]:
        """The learning-rate factor of every param group of every optimizer at ``clock`` (1.0 if unscaled).

        The freezer applies them itself around each ``optimizer.step()`` (a step pre-hook scales
        ``group["lr"]``, a post-hook restores it), so loops and LR schedulers need not know.
        Param groups follow the full membership (the same count under every policy).
        """
        if self._lr_groups is None:
            return [[1.0] * len(view.full) for view in self._views]
        factors = self.schedule.lr_factors(clock, self.groups.schedulable)
        return [[float(factors.get(name, 1.0)) if name is not None else 1.0 for name in row] for row in self._lr_groups]

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [view.opt for view in self._views]

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The (first) optimizer; the same object under every policy."""
        return self._views[0].opt if self._views else None

    def wanted(self, clock: Clock) -> frozenset[str]:
        """The groups that should train at ``clock``: the schedule's answer plus always-trainable ones."""
        return self.schedule.trainable(clock, self.groups.schedulable) | set(self.groups.always_trainable)

    def step(self, clock: Clock) -> bool:
        """Apply the schedule's answer for ``clock``; ``True`` if the trainable set changed."""
        names = self.wanted(clock)
        self._clock = clock
        changed = names != self.trainable
        if self.schedule.resets_state(clock):
            for view in self._views:
                view.opt.state.clear()  # BAdam's reset: a fresh optimizer at every block switch
        if changed:
            self.apply(names)
            if self.trainable_numel == 0:
                raise self._nothing_trainable(clock)
        if self.bn_stats == "frozen":
            self._update_norm_modes()
        if self.lora_merge is not None:
            self.lora_merge.sync()  # also after a model load_state_dict unmerged behind the freezer's back
        return changed

    def unmerged_lora(self) -> contextlib.AbstractContextManager:
        """A block in which every LoRA adapter runs in its own branch (for probes that need its gradient)."""
        return self.lora_merge.unmerged() if self.lora_merge is not None else contextlib.nullcontext()

    def check_trains_something(self, clock: Clock) -> None:
        """Raise :class:`FreezerError` now if the schedule would leave nothing trainable at ``clock``.

        Nothing is applied: a run checks its first step before it writes anything, so a schedule
        that freezes every group fails as bad input, not after the run folder exists.
        """
        names = self.wanted(clock)
        managed = {id(p) for params in self._params.values() for p in params}
        on = {id(p) for g in names for p in self._params.get(g, ())}
        if not any(id(p) in on or (id(p) not in managed and p.requires_grad) for p in self.model.parameters()):
            raise self._nothing_trainable(clock)

    def _nothing_trainable(self, clock: Clock) -> FreezerError:
        return FreezerError(
            f"at step {clock.step} the schedule ({self.schedule.describe()}) leaves nothing in the model "
            f"trainable; keep at least one group training (groups: {list(self.groups.names)})"
        )

    def apply(self, names: frozenset[str]) -> None:
        """Make exactly the groups ``names`` trainable and bring the optimizer(s) in line."""
        first = self.trainable is None
        self._set_flags(names)
        if not first and frozenset(names) != self.trainable:
            self.switches += 1
        previous, self.trainable = self.trainable, frozenset(names)
        for view in self._views:
            self._sync(view, reset=not first and previous != self.trainable)

    def _set_flags(self, names: frozenset[str]) -> None:
        for group, params in self._params.items():
            on = group in names
            for p in params:
                p.requires_grad_(on)
                if not on:
                    p.grad = None
                    mark_frozen_by_freezelab(p)
        self.trainable_numel = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if self.lora_merge is not None:
            self.lora_merge.sync()

    # -- optimizer policies -------------------------------------------------------------
    def _sync(self, view: _OptimizerView, reset: bool) -> None:
        """Bring one optimizer in line with the current flags (``reset``: a real switch happened)."""
        if self.policy == "keep":
            return
        view.narrow()
        if self.policy == "recreate" and reset:
            view.opt.state.clear()  # what a new optimizer over the trainable parameters starts with
        elif self.policy == "release":
            view.drop_frozen_state()

    def _view_of(self, opt: torch.optim.Optimizer) -> _OptimizerView | None:
        return next((v for v in self._views if v.opt is opt), None)

    def _attach(self, view: _OptimizerView) -> None:
        """Hook the optimizer's state_dict/load_state_dict (replacing an earlier freezer's hooks)."""
        previous = _attached.get(view.opt)
        if previous is not None:
            old = previous._view_of(view.opt)
            for handle in old.handles if old else ():
                handle.remove()
        opt, me = view.opt, weakref.ref(self)

        def before_save(_opt):
            if me() is not None:
                view.set_full()

        def after_save(_opt, state):
            fz = me()
            if fz is None:
                return None
            fz._sync_groups(view)
            state[STATE_KEY] = {"trainable": sorted(fz.trainable) if fz.trainable is not None else None,
                                "switches": fz.switches, "policy": fz.policy}
            return state

        def before_load(_opt, state):
            fz = me()
            saved = state.pop(STATE_KEY, None)
            if fz is None:
                return state
            if saved is not None and saved.get("trainable") is not None:
                fz._set_flags(frozenset(saved["trainable"]))
                fz.trainable, fz.switches = frozenset(saved["trainable"]), int(saved.get("switches", 0))
            saved_sizes = [len(g["params"]) for g in state["param_groups"]]
            if saved_sizes == [len(f) for f in view.full]:
                view.set_full()  # a full-membership state: what freezelab writes, and a fresh optimizer's
            return state

        def after_load(_opt):
            fz = me()
            if fz is not None:
                fz._sync_groups(view)
                if fz.policy == "release":
                    view.drop_frozen_state()

        view.handles = [
            opt.register_state_dict_pre_hook(before_save),
            opt.register_state_dict_post_hook(after_save),
            opt.register_load_state_dict_pre_hook(before_load),
            opt.register_load_state_dict_post_hook(after_load),
        ]
        if self.scales_lr:
            view.handles += self._lr_hooks(view)
        _attached[opt] = self

    def _lr_hooks(self, view: _OptimizerView) -> list[Any]:
        """Scale each param group's learning rate by the schedule's factor for the duration of a step.

        Applied around ``optimizer.step()`` rather than written into ``group["lr"]``, so whoever
        sets the base learning rate (freezelab's loop, a torch LR scheduler, a host trainer)
        keeps doing so and the factor multiplies what it set.
        """
        index, me, saved = self._views.index(view), weakref.ref(self), []

        def before_step(opt, _args, _kwargs):
            fz = me()
            if fz is None or fz._clock is None:
                return
            saved[:] = [group["lr"] for group in opt.param_groups]
            for group, factor in zip(opt.param_groups, fz.lr_factors(fz._clock)[index]):
                group["lr"] = group["lr"] * factor

        def after_step(opt, _args, _kwargs):
            for group, lr in zip(opt.param_groups, saved):
                group["lr"] = lr
            saved.clear()

        return [view.opt.register_step_pre_hook(before_step), view.opt.register_step_post_hook(after_step)]

    def _sync_groups(self, view: _OptimizerView) -> None:
        """Param-group membership as the policy says for the current flags (no state change)."""
        if self.policy == "keep" or self.trainable is None:
            view.set_full()
        else:
            view.narrow()

    def detach(self) -> None:
        """Give the optimizers back as plain optimizers: full param groups, no hooks."""
        for view in self._views:
            for handle in view.handles:
                handle.remove()
            view.handles = []
            view.set_full()
            if _attached.get(view.opt) is self:
                del _attached[view.opt]
        if self.lora_merge is not None:
            self.lora_merge.detach()

    # -- norm statistics --------------------------------------------------------------
    def _update_norm_modes(self) -> None:
        for module, params in self._norms:
            module.train(self.model.training and any(p.requires_grad for p in params))

    # -- accounting ---------------------------------------------------------------------
    @property
    def trainable_fraction(self) -> float:
        """Trainable parameters over all parameters of the model."""
        return self.trainable_numel / self._total_numel if self._total_numel else 0.0

    # -- checkpoints ----------------------------------------------------------------------
    def resume_at(self, clock: Clock) -> None:
        """Declare that training already ran the step at ``clock``, without touching optimizer state.

        For a freezer built *after* a host restored the optimizer (the Hugging Face Trainer does
        that before any callback runs): it takes the trainable set the schedule gave at the
        last finished step, so the next :meth:`step` is a real switch where the schedule says
        so (``recreate`` then resets the state, as the uninterrupted run did). Restore the
        switch count separately (:meth:`load_state_dict` with the saved set and count).
        """
        self._set_flags(self.wanted(clock))
        self.trainable = self.wanted(clock)
        for view in self._views:
            self._sync_groups(view)
            if self.policy == "release":
                view.drop_frozen_state()

    def state_dict(self) -> dict[str, Any]:
        """The trainable set, the switch count and the optimizers' (torch-native) state."""
        return {
            "trainable": sorted(self.trainable) if self.trainable is not None else None,
            "switches": self.switches,
            "optimizers": [opt.state_dict() for opt in self.optimizers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (on a freshly built model and optimizer).

        A state without optimizer entries restores only the trainable set and switch count.
        """
        if state.get("trainable") is not None:
            self.apply(frozenset(state["trainable"]))
        self.switches = state.get("switches", 0)
        if "optimizers" not in state and "optimizer" not in state:
            return  # the set and the count only: a host checkpoints the optimizer itself
        saved = state.get("optimizers", [state.get("optimizer")])
        if len(saved) != len(self._views):
            raise FreezerError(f"the checkpoint holds {len(saved)} optimizer state(s), this freezer has {len(self._views)}")
        for opt, opt_state in zip(self.optimizers, saved):
            opt.load_state_dict(opt_state)
