"""Parameter groups: named, disjoint, ordered sets of a model's parameters.

A freezing schedule never talks about tensors; it talks about *groups* ("first", "second",
"lora", "norm", "head", "fc3"). This module turns any ``nn.Module`` into such groups, checks
that they make sense (disjoint, non-empty, every pattern matched something) and keeps them in
depth order, because progressive schedules freeze "the earliest layers first".

Example::

    >>> import torch.nn as nn
    >>> from freezelab import groups
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))
    >>> gs = groups.depth(net, blocks=2)
    >>> gs.names
    ('first', 'second')
    >>> gs["first"].param_names
    ('0.weight', '0.bias')

Parameters that belong to no group are *unmanaged*: the freezer leaves their ``requires_grad``
exactly as it finds it (that is how a PEFT model keeps its base weights frozen for good).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

__all__ = [
    "Group",
    "GroupSet",
    "GroupError",
    "NORM_TYPES",
    "leaf_modules",
    "depth",
    "layers",
    "pattern",
    "kind",
    "from_spec",
]

#: Module classes whose parameters count as "norm" parameters.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

#: Substrings that mark LoRA adapter weights (PEFT's naming: ``lora_A``, ``lora_B``,
#: ``lora_embedding_A``, ``lora_magnitude_vector`` ...).
LORA_MARKERS: tuple[str, ...] = ("lora_",)


class GroupError(ValueError):
    """A group definition that cannot be right: empty, overlapping, or matching nothing."""


@dataclass(frozen=True)
class Group:
    """One named set of parameters.

    ``always_trainable`` groups are never frozen by any schedule (a classifier head, say).
    """

    name: str
    param_names: tuple[str, ...]
    always_trainable: bool = False


@dataclass(frozen=True)
class GroupSet:
    """Disjoint, ordered groups of one model's parameters.

    The order is depth order wherever the builder knows it, and is what progressive schedules
    mean by "earliest". ``schedulable`` lists the groups a schedule may freeze.
    """

    groups: tuple[Group, ...]
    unmanaged: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        names: set[str] = set()
        for g in self.groups:
            if g.name in names:
                raise GroupError(f"group name {g.name!r} is used twice; give each group its own name")
            names.add(g.name)
            if not g.param_names:
                raise GroupError(f"group {g.name!r} is empty: it matched no parameter")
            for p in g.param_names:
                if p in seen:
                    raise GroupError(
                        f"parameter {p!r} is in both group {seen[p]!r} and {g.name!r}; groups must be disjoint"
                    )
                seen[p] = g.name

    # -- lookups -----------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    @property
    def schedulable(self) -> tuple[str, ...]:
        """Names of the groups a schedule may freeze, in depth order."""
        return tuple(g.name for g in self.groups if not g.always_trainable)

    @property
    def always_trainable(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups if g.always_trainable)

    def __getitem__(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no group named {name!r}; groups are {list(self.names)}")

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self):
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def group_of(self) -> dict[str, str]:
        """Map parameter name -> group name."""
        return {p: g.name for g in self.groups for p in g.param_names}

    def params(self, model: nn.Module, name: str) -> list[nn.Parameter]:
        """The parameter tensors of group ``name`` in ``model``."""
        named = dict(model.named_parameters())
        return [named[p] for p in self[name].param_names]

    def validate_for(self, model: nn.Module) -> None:
        """Raise if a group names a parameter the model does not have."""
        have = {n for n, _ in model.named_parameters()}
        for g in self.groups:
            missing = [p for p in g.param_names if p not in have]
            if missing:
                raise GroupError(f"group {g.name!r} names parameters the model lacks: {missing[:3]}")

    # -- derived sets --------------------------------------------------------------
    def with_always_trainable(self, *names: str) -> GroupSet:
        """A copy in which the named groups are never frozen."""
        for n in names:
            self[n]  # raises a KeyError naming the valid groups
        return GroupSet(
            tuple(replace(g, always_trainable=g.always_trainable or g.name in names) for g in self.groups),
            self.unmanaged,
        )

    def describe(self) -> str:
        parts = [f"{g.name}({len(g.param_names)}{'*' if g.always_trainable else ''})" for g in self.groups]
        return " | ".join(parts) + ("  (* always trainable)" if self.always_trainable else "")

    def to_dict(self) -> dict:
        return {
            "groups": [
                {"name": g.name, "params": list(g.param_names), "always_trainable": g.always_trainable}
                for g in self.groups
            ],
            "unmanaged": list(self.unmanaged),
        }


# ---------------------------------------------------------------------------------
# Module order
# ---------------------------------------------------------------------------------
def leaf_modules(model: nn.Module, example_input: object | None = None) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters directly, in forward order.

    With ``example_input`` the order is the order in which the modules first run in a forward
    pass (what "depth" means for a model whose attributes are declared out of order); without
    it, registration order. Modules that never run in the traced pass are appended in
    registration order so no parameter is lost.
    """
    owners = [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if example_input is None:
        return owners
    order: list[str] = []
    by_id = {id(m): n for n, m in owners}
    hooks = []

    def record(module: nn.Module, *_: object) -> None:
        name = by_id[id(module)]
        if name not in order:
            order.append(name)

    for _, m in owners:
        hooks.append(m.register_forward_pre_hook(record))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, Mapping):
                model(**example_input)
            elif isinstance(example_input, tuple):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    by_name = dict(owners)
    untraced = [(n, m) for n, m in owners if n not in order]
    return [(n, by_name[n]) for n in order] + untraced


def _own_param_names(prefix: str, module: nn.Module) -> list[str]:
    return [f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False)]


def _split_sizes(n: int, blocks: int) -> list[int]:
    """Contiguous block sizes; the *later* blocks take the remainder.

    With 5 layers in 2 halves that gives 2 | 3, the split seed 000 used for
    ``fc1,bn1 | fc2,bn2,fc3``; with 3 layers, ``fc1 | fc2,fc3``.
    """
    base, extra = divmod(n, blocks)
    return [base + (1 if i >= blocks - extra else 0) for i in range(blocks)]


def _head_split(
    units: list[tuple[str, nn.Module]], head: bool | str
) -> tuple[list[tuple[str, nn.Module]], tuple[str, nn.Module] | None]:
    if not head:
        return units, None
    if head is True:
        return units[:-1], units[-1]
    for i, (n, m) in enumerate(units):
        if n == head:
            return units[:i] + units[i + 1 :], (n, m)
    raise GroupError(f"head module {head!r} owns no parameters; modules that do: {[n for n, _ in units]}")


def _with_head(groups: list[Group], head_unit: tuple[str, nn.Module] | None, model: nn.Module) -> GroupSet:
    if head_unit is not None:
        groups.append(Group("head", tuple(_own_param_names(*head_unit)), always_trainable=True))
    return _finish(groups, model)


def _finish(groups: list[Group], model: nn.Module) -> GroupSet:
    grouped = {p for g in groups for p in g.param_names}
    unmanaged = tuple(n for n, _ in model.named_parameters() if n not in grouped)
    return GroupSet(tuple(groups), unmanaged)


# ---------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------
def depth(
    model: nn.Module,
    blocks: int = 2,
    names: Sequence[str] | None = None,
    *,
    head: bool | str = False,
    example_input: object | None = None,
) -> GroupSet:
    """Split the parameterised leaf modules into ``blocks`` contiguous groups in forward order.

    ``blocks=2`` gives the seeds' halves, named ``first`` and ``second``; otherwise the groups
    are ``block0``, ``block1``, ... unless ``names`` are given. ``head=True`` (or a module name)
    takes the last module out as an always-trainable ``head`` group before splitting.

    >>> depth(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 2).names
    ('first', 'second')
    """
    units, head_unit = _head_split(leaf_modules(model, example_input), head)
    if blocks < 1:
        raise GroupError(f"blocks must be >= 1, got {blocks}")
    if blocks > len(units):
        raise GroupError(f"cannot split {len(units)} parameterised modules into {blocks} blocks; use blocks <= {len(units)}")
    if names is None:
        names = ("first", "second") if blocks == 2 else tuple(f"block{i}" for i in range(blocks))
    if len(names) != blocks:
        raise GroupError(f"{blocks} blocks need {blocks} names, got {list(names)}")
    groups, start = [], 0
    for name, size in zip(names, _split_sizes(len(units), blocks)):
        params = [p for n, m in units[start : start + size] for p in _own_param_names(n, m)]
        groups.append(Group(name, tuple(params)))
        start += size
    return _with_head(groups, head_unit, model)


def layers(model: nn.Module, *, head: bool | str = False, example_input: object | None = None) -> GroupSet:
    """One group per parameterised leaf module, named after the module, in forward order.

    This is the unit that progressive freezing (Composer, FreezeOut), BAdam and LISA walk over.
    """
    units, head_unit = _head_split(leaf_modules(model, example_input), head)
    groups = [Group(n or "root", tuple(_own_param_names(n, m))) for n, m in units]
    return _with_head(groups, head_unit, model)


def _matcher(pat: str, regex: bool):
    if regex:
        try:
            compiled = re.compile(pat)
        except re.error as e:
            raise GroupError(f"pattern {pat!r} is not a valid regular expression: {e}") from None
        return lambda name: compiled.search(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, pat)


def pattern(
    model: nn.Module,
    patterns: Mapping[str, str | Sequence[str]],
    *,
    regex: bool = False,
    rest: str | None = None,
    always_trainable: Iterable[str] = (),
) -> GroupSet:
    """Groups by parameter-name pattern (glob by default, ``regex=True`` for regular expressions).

    ``patterns`` maps a group name to one pattern or a list of them. A parameter matching two
    groups is an error (groups must be disjoint), as is a pattern matching nothing. Unmatched
    parameters go to the group ``rest`` if given, else stay unmanaged.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> pattern(net, {"a": "0.*"}, rest="b").names
    ('a', 'b')
    """
    names = [n for n, _ in model.named_parameters()]
    assigned: dict[str, str] = {}
    members: dict[str, list[str]] = {g: [] for g in patterns}
    for group, pats in patterns.items():
        for pat in [pats] if isinstance(pats, str) else list(pats):
            match = _matcher(pat, regex)
            hits = [n for n in names if match(n)]
            if not hits:
                raise GroupError(f"pattern {pat!r} for group {group!r} matches no parameter (e.g. {names[:3]})")
            for n in hits:
                if assigned.get(n, group) != group:
                    raise GroupError(
                        f"parameter {n!r} matches pattern {pat!r} of group {group!r} and also group {assigned[n]!r}; "
                        "make the patterns disjoint"
                    )
                if n not in assigned:
                    assigned[n] = group
                    members[group].append(n)
    groups = [Group(g, tuple(n for n in names if n in set(ps))) for g, ps in members.items()]
    leftover = tuple(n for n in names if n not in assigned)
    if rest is not None and leftover:
        groups.append(Group(rest, leftover))
    return GroupSet(tuple(groups), () if rest is not None else leftover).with_always_trainable(*always_trainable)


_KINDS = ("norm", "lora", "head")


def kind(
    model: nn.Module,
    kinds: Sequence[str] = _KINDS,
    *,
    rest: str | None = "rest",
    head: str | None = None,
    head_trainable: bool = True,
    example_input: object | None = None,
) -> GroupSet:
    """Groups by what the parameters *are*: ``norm`` layers, ``lora`` adapters, the ``head``.

    The head is the last parameterised module in forward order unless ``head`` names one; it
    is always trainable unless ``head_trainable=False``. Remaining parameters go to ``rest``
    (or stay unmanaged with ``rest=None``). Asking for a kind the model lacks is an error.
    """
    unknown = [k for k in kinds if k not in _KINDS]
    if unknown:
        raise GroupError(f"unknown kind(s) {unknown}; choose from {list(_KINDS)}")
    units = leaf_modules(model, example_input)
    taken: dict[str, str] = {}
    if "head" in kinds:
        _, (hname, hmod) = _head_split(units, head or True)
        for p in _own_param_names(hname, hmod):
            taken[p] = "head"
    for mname, mod in units:
        for p in _own_param_names(mname, mod):
            if p in taken:
                continue
            if "lora" in kinds and any(mk in p for mk in LORA_MARKERS):
                taken[p] = "lora"
            elif "norm" in kinds and isinstance(mod, NORM_TYPES):
                taken[p] = "norm"
    all_names = [n for n, _ in model.named_parameters()]
    groups = []
    for k in [k for k in _KINDS if k in kinds]:
        params = tuple(n for n in all_names if taken.get(n) == k)
        if not params:
            raise GroupError(f"kind {k!r} matches no parameter in {type(model).__name__}; drop it from kinds")
        groups.append(Group(k, params, always_trainable=(k == "head" and head_trainable)))
    leftover = tuple(n for n in all_names if n not in taken)
    if rest is not None and leftover:
        groups.insert(0, Group(rest, leftover))
    return GroupSet(tuple(groups), () if rest is not None else leftover)


_BUILDERS = {"depth": depth, "layers": layers, "pattern": pattern, "kind": kind}


def from_spec(model: nn.Module, spec: Mapping[str, object], example_input: object | None = None) -> GroupSet:
    """Build groups from a plain dict (a YAML ``groups:`` block).

    ``{"by": "depth", "blocks": 2, "head": true}``, ``{"by": "layers"}``,
    ``{"by": "pattern", "patterns": {"lora": "*lora_*"}, "rest": "rest"}``,
    ``{"by": "kind", "kinds": ["lora", "norm", "head"], "rest": null}``; any of them may add
    ``always_trainable: [names]``.
    """
    spec = dict(spec)
    by = spec.pop("by", "depth")
    if by not in _BUILDERS:
        raise GroupError(f"unknown group builder {by!r}; choose from {sorted(_BUILDERS)}")
    extra_always = spec.pop("always_trainable", ())
    if isinstance(extra_always, str):
        extra_always = (extra_always,)
    builder = _BUILDERS[by]
    if by != "pattern":
        spec.setdefault("example_input", example_input)
    try:
        gs = builder(model, **spec)
    except TypeError as e:
        raise GroupError(f"bad option for groups by {by!r}: {e}") from None
    return gs.with_always_trainable(*extra_always) if extra_always else gs
