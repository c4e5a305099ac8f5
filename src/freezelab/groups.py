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

The rules below are the ones every builder follows; they exist because real models break the
naive "one group per leaf module, in the order its forward hook fires" picture.

**Units.** A *unit* is one module together with the parameters it owns directly
(``recurse=False``); groups are made of whole units. :func:`units` lists them.

**Order** (``order=``). Progressive schedules mean *forward* depth, and declaration order can
lie (a head declared first, an encoder declared after the decoder), so:

* ``"forward"`` (default): units sorted by the *first use of any of their parameters* in one
  traced forward pass of ``example_input``. The trace is a ``TorchFunctionMode`` that sees
  every torch function and the parameter tensors among its arguments, in argument order. It
  therefore sees uses that module hooks miss: ``nn.MultiheadAttention`` runs its
  ``in_proj_weight`` and ``out_proj.weight`` through ``F.multi_head_attention_forward`` without
  ever calling ``out_proj``; a ViT adds ``cls_token``/``pos_embed`` in its own ``forward``; a
  tied LM head reuses the embedding matrix. Units that do not run in the trace come last, in
  definition order. Without ``example_input`` there is nothing to trace and definition order is
  used.
* ``"definition"``: ``named_modules()`` depth-first order, which is the traversal Composer's
  ``freeze_layers`` walks; with ``nonleaf="skip"`` it reproduces Composer's layer list.

The trace runs once in train mode (the path training takes; MHA's eval fast path is not taken,
and if the model cannot run in train mode on ``example_input``, e.g. BatchNorm on a batch of
one, it retries in eval mode) under ``torch.no_grad()``. It leaves the model as it found it:
every module's ``training`` flag, every buffer (BatchNorm running statistics) and the torch
and Python RNG states are restored, so building groups never changes a training run.

**Non-leaf owners** (``nonleaf=``). Some parameters are owned by a module that also has
children: a ViT's ``cls_token``/``pos_embed`` (owned by the model, ``"root"``), MHA's
``in_proj_weight``. With ``"own"`` (default) they form that module's own unit, placed where it
is first used (forward: next to the patch embedding for a ViT, i.e. first, as embeddings are)
or where the module sits (definition). With ``"skip"`` they are left unmanaged, exactly like
Composer's layer list (leaf modules with parameters only).

**Tied parameters.** One tensor reachable under two names (an LM's embedding and output
head) is managed once, under its canonical name: the first name ``named_parameters()`` gives.
It belongs to one unit: in definition order the first module holding it; in forward order the
holding module that was running when it was first used (the embedding), else the first holder.
The head rule below takes precedence: with ``head=True`` a tied LM's head keeps its weight, so
the embedding it shares is trained always, as the head is.

**Frozen parameters** (``include_frozen=``). A parameter with ``requires_grad=False`` when the
groups are built was frozen by the user (a PEFT base model, a frozen backbone): builders leave
it unmanaged, so no schedule can thaw it. ``include_frozen=True`` puts such parameters in
groups anyway and marks those groups ``explicit``; :func:`pattern` groups are always explicit,
because their patterns name the parameters. Only explicit groups may thaw a parameter.

**The head** is the deepest parameter-owning submodule whose forward output *is* the model's
output (tensor identity; a Hugging Face ``ModelOutput`` contributes ``.logits``, tuples and
dicts their first tensor), found in the same trace. Identity, not "the last module declared",
because declaration order lies and because a module that never ran cannot have produced the
output: that excludes PEFT's ``ModulesToSaveWrapper.original_module`` (a frozen copy of the
head kept beside the trained ``modules_to_save.default``). If no submodule's output is the
model's output (``return self.fc(x).softmax(-1)``), the head is the last unit to run; without
``example_input``, the last parameter-owning module in definition order that is not such an
untraced copy. ``head=True`` in :func:`depth`/:func:`layers` and the ``head`` kind of
:func:`kind` use it; ``head="name"`` names it yourself; :func:`find_head` shows it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import random
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "Group",
    "GroupSet",
    "GroupError",
    "NORM_TYPES",
    "ORDERS",
    "NONLEAF",
    "Unit",
    "units",
    "find_head",
    "depth",
    "layers",
    "pattern",
    "kind",
    "from_spec",
    "user_frozen",
]

# Parameters a freezelab Freezer froze. Everything else that has requires_grad=False was frozen
# by the user (a PEFT base, a frozen backbone) and is never put in a non-explicit group or thawed;
# these may be, so groups built (or a Freezer built) after a freezelab run still see them.
_frozen_here: dict[int, weakref.ref] = {}


def mark_frozen_by_freezelab(p: torch.Tensor) -> None:
    """Record that freezelab (not the user) froze ``p`` (called by the Freezer)."""
    key = id(p)
    _frozen_here[key] = weakref.ref(p, lambda _, key=key: _frozen_here.pop(key, None))


def user_frozen(p: torch.Tensor) -> bool:
    """``True`` if ``p`` is frozen and freezelab did not freeze it: it must stay frozen."""
    if p.requires_grad:
        return False
    ref = _frozen_here.get(id(p))
    return ref is None or ref() is not p


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

#: Values of the ``order=`` option: forward (traced first use) or definition (``named_modules()``).
ORDERS: tuple[str, ...] = ("forward", "definition")
#: Values of the ``nonleaf=`` option: a non-leaf module's own parameters form its unit, or stay unmanaged.
NONLEAF: tuple[str, ...] = ("own", "skip")

#: Classes (by name, so peft need not be importable) whose ``original_module`` child is an
#: untraced frozen copy, never the head.
_UNTRACED_COPY_WRAPPERS = ("AuxiliaryTrainingWrapper", "ModulesToSaveWrapper")


class GroupError(ValueError):
    """A group definition that cannot be right: empty, overlapping, matching nothing, or bad options."""


@dataclass(frozen=True)
class Group:
    """One named set of parameters.

    ``always_trainable`` groups are never frozen by any schedule (a classifier head, say).
    ``explicit`` groups name their parameters on purpose (pattern groups, or a builder called
    with ``include_frozen=True``): the freezer may manage them even if they were frozen when it
    was built. A non-explicit group never thaws a parameter the user froze.
    """

    name: str
    param_names: tuple[str, ...]
    always_trainable: bool = False
    explicit: bool = False


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

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

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


# ---------------------------------------------------------------------------------
# Units and the forward trace
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One module and the parameters it owns directly (canonical names), the atom of every group."""

    name: str  # the module's name in ``named_modules()``; "" for the model itself
    param_names: tuple[str, ...]
    module: nn.Module = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        """The group name this unit gets from :func:`layers`: the module name, ``"root"`` for the model."""
        return self.name or "root"


#: Torch functions that only read metadata (``size()``, ``dim()`` ...): not a use. Property reads
#: (``__get__``) count only when they give a tensor (``.T`` does; ``.shape``, ``.dtype`` do not).
_METADATA_ONLY = frozenset(
    {"size", "dim", "ndimension", "numel", "nelement", "stride", "is_contiguous", "data_ptr",
     "element_size", "is_floating_point", "is_complex", "get_device", "__len__", "__format__", "__repr__"}
)  # fmt: skip


def _tensors(obj: object) -> Iterator[torch.Tensor]:
    """The tensors in a torch function's (nested) arguments, in argument order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from _tensors(item)


def _main_tensor(out: object) -> torch.Tensor | None:
    """The tensor that stands for a module's output: itself, ``.logits``, or the first tensor inside."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for item in out:
            found = _main_tensor(item)
            if found is not None:
                return found
    return None


class _FirstUse(TorchFunctionMode):
    """Records, for each tracked tensor, when it is first an argument of a torch function
    and which holder modules were running at that moment."""

    def __init__(self, tracked: Mapping[int, torch.Tensor]) -> None:
        super().__init__()
        self.tracked = tracked
        self.running: list[int] = []  # ids of the holder modules whose forward is running
        self.first_use: dict[int, int] = {}  # tensor id -> rank of its first use
        self.running_at: dict[int, tuple[int, ...]] = {}  # tensor id -> running holders then

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)  # nested torch calls are not seen (the mode is off inside)
        name = getattr(func, "__name__", None)
        if name not in _METADATA_ONLY and (name != "__get__" or isinstance(result, torch.Tensor)):
            for t in _tensors((args, kwargs)):
                key = id(t)
                if key in self.tracked and key not in self.first_use:
                    self.first_use[key] = len(self.first_use)
                    self.running_at[key] = tuple(self.running)
        return result


@dataclass
class _Trace:
    first_use: dict[int, int]
    running_at: dict[int, tuple[int, ...]]
    head: str | None  # the deepest holder whose output is the model's output


def _call(model: nn.Module, example_input: object) -> object:
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


@contextlib.contextmanager
def _state_preserved(model: nn.Module) -> Iterator[None]:
    """Restore every module's mode, every buffer (object and values) and the RNG states on exit."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [
        (m, name, b, b.detach().clone()) for m in model.modules() for name, b in m._buffers.items() if b is not None
    ]
    devices = sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})
    py_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        with torch.no_grad():
            for m, name, b, saved in buffers:
                m._buffers[name] = b
                b.copy_(saved)
        for m, mode in modes:
            m.training = mode


def _trace(model: nn.Module, holders: Sequence[tuple[str, nn.Module]], example_input: object) -> _Trace:
    """One forward pass of ``example_input`` that records first uses and the head (see the module doc)."""
    tracked = {id(p): p for _, m in holders for p in m.parameters(recurse=False)}
    errors = []
    for train_mode in (True, False):
        mode = _FirstUse(tracked)
        outputs: dict[str, weakref.ref] = {}
        hooks = []
        for name, m in holders:

            def enter(module, args, key=id(m)):
                mode.running.append(key)

            def leave(module, args, out, name=name):
                mode.running.pop()
                t = _main_tensor(out)
                if t is not None:
                    outputs[name] = weakref.ref(t)

            hooks.append(m.register_forward_pre_hook(enter))
            hooks.append(m.register_forward_hook(leave, always_call=True))
        try:
            with _state_preserved(model), torch.no_grad():
                model.train(train_mode)
                with mode:
                    result = _main_tensor(_call(model, example_input))
            break
        except Exception as e:  # the user's model and input: report, then try eval mode
            errors.append(f"{'train' if train_mode else 'eval'} mode: {type(e).__name__}: {e}")
        finally:
            for h in hooks:
                h.remove()
    else:
        raise GroupError(
            f"cannot trace {type(model).__name__} on example_input ({'; '.join(errors)}); "
            "pass an input the model accepts, or order='definition' without example_input"
        )
    # The model itself always "outputs the output": it says nothing, so it is not a candidate.
    matches = [n for n, _ in holders if n and result is not None and n in outputs and outputs[n]() is result]
    head = max(matches, key=lambda n: n.count("."), default=None)
    return _Trace(mode.first_use, mode.running_at, head)


def _check_choice(option: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise GroupError(f"{option}={value!r} is not an option; choose {' or '.join(map(repr, choices))}")


def _check_flag(option: str, value: object) -> None:
    if not isinstance(value, bool):
        raise GroupError(f"{option} must be true or false, got {value!r}")


def _holders(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters directly, in ``named_modules()`` (definition) order."""
    return [(n, m) for n, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]


def _untraced_copies(model: nn.Module) -> list[str]:
    """Name prefixes of modules kept beside the real ones but never run (PEFT's ``original_module``)."""
    prefixes = []
    for name, m in model.named_modules():
        wrapped = getattr(m, "original_module", None)
        if isinstance(wrapped, nn.Module) and any(c.__name__ in _UNTRACED_COPY_WRAPPERS for c in type(m).__mro__):
            prefixes.append(f"{name}.original_module" if name else "original_module")
    return prefixes


def _head_name(
    model: nn.Module, holders: Sequence[tuple[str, nn.Module]], trace: _Trace | None, units: Sequence[Unit]
) -> str:
    if trace is not None and trace.head is not None:
        return trace.head
    if trace is not None:  # no submodule's output is the model's output: the last unit to run
        ran = [u for u in units if any(id(p) in trace.first_use for p in u.module.parameters(recurse=False))]
        if ran:
            return ran[-1].name
    copies = _untraced_copies(model)
    real = [n for n, _ in holders if not any(n == c or n.startswith(c + ".") for c in copies)]
    if not real:
        raise GroupError(f"{type(model).__name__} has no parameters, so it has no head")
    return real[-1]


@dataclass
class _Layout:
    units: list[Unit]  # ordered, head excluded when a head was asked for
    head: Unit | None
    frozen: dict[str, bool]  # canonical name -> frozen (requires_grad=False) when built


def _layout(
    model: nn.Module,
    *,
    order: str,
    nonleaf: str,
    include_frozen: bool,
    example_input: object | None,
    head: bool | str = False,
) -> _Layout:
    """The ordered units (and the head unit) of ``model`` under the module doc's rules."""
    _check_choice("order", order, ORDERS)
    _check_choice("nonleaf", nonleaf, NONLEAF)
    _check_flag("include_frozen", include_frozen)
    if not isinstance(head, (bool, str)):
        raise GroupError(f"head must be true, false or a module name, got {head!r}")
    holders = _holders(model)
    canonical = {id(p): n for n, p in model.named_parameters()}
    frozen = {n: user_frozen(p) for n, p in model.named_parameters()}
    is_unit = {id(m): nonleaf == "own" or next(m.children(), None) is None for _, m in holders}
    traced = example_input is not None and (order == "forward" or head is True)
    trace = _trace(model, holders, example_input) if traced else None

    # Each tensor to one holder: the running one at first use (forward), else the first (definition).
    owner: dict[int, int] = {}
    for _, m in holders:
        if is_unit[id(m)]:
            for p in m.parameters(recurse=False):
                owner.setdefault(id(p), id(m))
    if order == "forward" and trace is not None:
        holds = {id(m): {id(p) for p in m.parameters(recurse=False)} for _, m in holders}
        for key, running in trace.running_at.items():
            users = [h for h in reversed(running) if is_unit.get(h) and key in holds[h]]
            if key in owner and users:
                owner[key] = users[0]

    head_module: tuple[str, nn.Module] | None = None
    if head:
        by_name = dict(holders)
        if isinstance(head, str) and head not in by_name:
            have = [n or "(root)" for n, _ in holders]
            raise GroupError(
                f"head module {head!r} owns no parameters; modules that do: {have[:6]}{' ...' if len(have) > 6 else ''}"
            )
        if head is True:
            provisional = _make_units(holders, owner, canonical, trace)
            head = _head_name(model, holders, trace, provisional)
        head_module = (head, by_name[head])
        for p in head_module[1].parameters(recurse=False):  # the head keeps all it holds, tied weights too
            owner[id(p)] = id(head_module[1])

    keep = (lambda n: True) if include_frozen else (lambda n: not frozen[n])
    all_units = _make_units(holders, owner, canonical, trace if order == "forward" else None, keep)
    head_unit = None
    if head_module is not None:
        head_unit = next((u for u in all_units if u.module is head_module[1]), None)
        if head_unit is None:
            raise GroupError(
                f"the head {head_module[0] or 'root'!r} has no trainable parameter (all are frozen); make it "
                "trainable first (with peft: modules_to_save=[...]), pass include_frozen=True, or use head=False"
            )
        all_units = [u for u in all_units if u is not head_unit]
    return _Layout(all_units, head_unit, frozen)


def _make_units(
    holders: Sequence[tuple[str, nn.Module]],
    owner: Mapping[int, int],
    canonical: Mapping[int, str],
    trace: _Trace | None,
    keep=lambda name: True,
) -> list[Unit]:
    """Units in definition order, or with a trace by first use of their parameters (unused last)."""
    never = len(canonical)  # ranks first uses below this
    ranked = []
    for name, m in holders:
        mine = [p for p in m.parameters(recurse=False) if owner.get(id(p)) == id(m) and keep(canonical[id(p)])]
        if mine:
            rank = min(trace.first_use.get(id(p), never) for p in mine) if trace is not None else 0
            ranked.append((rank, len(ranked), Unit(name, tuple(canonical[id(p)] for p in mine), m)))
    return [u for _, _, u in sorted(ranked, key=lambda r: r[:2])]  # ties keep definition order


def units(
    model: nn.Module,
    *,
    order: str = "forward",
    nonleaf: str = "own",
    include_frozen: bool = False,
    example_input: object | None = None,
) -> list[Unit]:
    """The model's units (module + the parameters it owns directly) in ``order``; see the module doc.

    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> [u.name for u in units(net)]
    ['0', '2']
    """
    return _layout(model, order=order, nonleaf=nonleaf, include_frozen=include_frozen, example_input=example_input).units


def find_head(model: nn.Module, example_input: object | None = None) -> str:
    """The name of the module ``head=True`` picks: the deepest parameter-owning submodule whose
    output is the model's output in a traced forward pass (see the module doc for the fallbacks).

    >>> find_head(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))
    '2'
    """
    lay = _layout(model, order="forward", nonleaf="own", include_frozen=True, example_input=example_input, head=True)
    return lay.head.name


# ---------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------
def _split_sizes(n: int, blocks: int) -> list[int]:
    """Contiguous block sizes; the *later* blocks take the remainder.

    With 5 layers in 2 halves that gives 2 | 3, the split seed 000 used for
    ``fc1,bn1 | fc2,bn2,fc3``; with 3 layers, ``fc1 | fc2,fc3``.
    """
    base, extra = divmod(n, blocks)
    return [base + (1 if i >= blocks - extra else 0) for i in range(blocks)]


def _finish(groups: list[Group], model: nn.Module, head: Unit | None = None, explicit: bool = False) -> GroupSet:
    if head is not None:
        groups.append(Group("head", head.param_names, always_trainable=True, explicit=explicit))
    grouped = {p for g in groups for p in g.param_names}
    unmanaged = tuple(n for n, _ in model.named_parameters() if n not in grouped)
    return GroupSet(tuple(groups), unmanaged)


def depth(
    model: nn.Module,
    blocks: int = 2,
    names: Sequence[str] | None = None,
    *,
    head: bool | str = False,
    order: str = "forward",
    nonleaf: str = "own",
    include_frozen: bool = False,
    example_input: object | None = None,
) -> GroupSet:
    """Split the units into ``blocks`` contiguous groups in ``order`` (forward by default).

    ``blocks=2`` gives the seeds' halves, named ``first`` and ``second``; otherwise the groups
    are ``block0``, ``block1``, ... unless ``names`` are given. ``head=True`` (or a module name)
    takes the head out as an always-trainable ``head`` group before splitting. ``order``,
    ``nonleaf``, ``include_frozen`` and ``example_input`` are explained in the module doc.

    >>> depth(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 2).names
    ('first', 'second')
    """
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise GroupError(f"blocks must be a whole number >= 1, got {blocks!r}")
    if names is not None and (isinstance(names, str) or not all(isinstance(n, str) for n in names)):
        raise GroupError(f"names must be a list of group names, got {names!r}")
    lay = _layout(
        model, order=order, nonleaf=nonleaf, include_frozen=include_frozen, example_input=example_input, head=head
    )
    if blocks > len(lay.units):
        raise GroupError(
            f"cannot split {len(lay.units)} parameterised modules into {blocks} blocks; use blocks <= {len(lay.units)}"
        )
    if names is None:
        names = ("first", "second") if blocks == 2 else tuple(f"block{i}" for i in range(blocks))
    if len(names) != blocks:
        raise GroupError(f"{blocks} blocks need {blocks} names, got {list(names)}")
    groups, start = [], 0
    for name, size in zip(names, _split_sizes(len(lay.units), blocks)):
        params = tuple(p for u in lay.units[start : start + size] for p in u.param_names)
        groups.append(Group(name, params, explicit=include_frozen))
        start += size
    return _finish(groups, model, lay.head, include_frozen)


def layers(
    model: nn.Module,
    *,
    head: bool | str = False,
    order: str = "forward",
    nonleaf: str = "own",
    include_frozen: bool = False,
    example_input: object | None = None,
) -> GroupSet:
    """One group per unit, named after its module (``root`` for the model itself), in ``order``.

    This is the unit that progressive freezing (Composer, FreezeOut), BAdam and LISA walk over;
    ``layers(model, order="definition", nonleaf="skip")`` is Composer's layer list (leaf modules
    with parameters, depth-first), less the layers whose parameters were all frozen beforehand
    or already listed under a tied name.
    """
    lay = _layout(
        model, order=order, nonleaf=nonleaf, include_frozen=include_frozen, example_input=example_input, head=head
    )
    if lay.head is not None and any(u.label == "head" for u in lay.units):
        raise GroupError(
            f"the head is {lay.head.label!r}, but module 'head' is another layer and would share its group name; "
            "pass head='head' if that is the head, or head=False"
        )
    groups = [Group(u.label, u.param_names, explicit=include_frozen) for u in lay.units]
    return _finish(groups, model, lay.head, include_frozen)


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
    include_frozen: bool = False,
) -> GroupSet:
    """Groups by parameter-name pattern (glob by default, ``regex=True`` for regular expressions).

    ``patterns`` maps a group name to one pattern or a list of them. A parameter matching two
    groups is an error (groups must be disjoint), as is a pattern matching nothing. Pattern
    groups are *explicit*: they name their parameters, frozen ones included, so the freezer
    manages all of them. A pattern may match any name of a tied parameter (``lm_head.weight``);
    the group lists its canonical name (``transformer.wte.weight``). Unmatched parameters go to the group ``rest`` if given (trainable ones
    only, unless ``include_frozen=True``), else stay unmanaged.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> pattern(net, {"a": "0.*"}, rest="b").names
    ('a', 'b')
    """
    if not isinstance(patterns, Mapping) or not patterns:
        raise GroupError(f"patterns must map group names to patterns, e.g. {{'lora': '*lora_*'}}; got {patterns!r}")
    _check_flag("include_frozen", include_frozen)
    named = list(model.named_parameters())
    names = [n for n, _ in named]
    canonical = {id(p): n for n, p in named}
    every_name = [(n, canonical[id(p)]) for n, p in model.named_parameters(remove_duplicate=False)]
    assigned: dict[str, str] = {}
    members: dict[str, list[str]] = {g: [] for g in patterns}
    for group, pats in patterns.items():
        for pat in [pats] if isinstance(pats, str) else list(pats):
            match = _matcher(pat, regex)
            hits = list(dict.fromkeys(c for n, c in every_name if match(n)))  # a tied alias picks its canonical name
            if not hits:
                raise GroupError(f"pattern {pat!r} for group {group!r} matches no parameter (e.g. {names[:3]}); fix the pattern (a regex over parameter names)")
            for n in hits:
                if assigned.get(n, group) != group:
                    raise GroupError(
                        f"parameter {n!r} matches pattern {pat!r} of group {group!r} and also group {assigned[n]!r}; "
                        "make the patterns disjoint"
                    )
                if n not in assigned:
                    assigned[n] = group
                    members[group].append(n)
    groups = [Group(g, tuple(n for n in names if n in set(ps)), explicit=True) for g, ps in members.items()]
    leftover = tuple(n for n, p in named if n not in assigned and (include_frozen or not user_frozen(p)))
    if rest is not None and leftover:
        groups.append(Group(rest, leftover, explicit=include_frozen))
    return _finish(groups, model).with_always_trainable(*always_trainable)


_KINDS = ("norm", "lora", "head")


def kind(
    model: nn.Module,
    kinds: Sequence[str] | None = None,
    *,
    rest: str | None = "rest",
    head: str | None = None,
    head_trainable: bool = True,
    order: str = "forward",
    nonleaf: str = "own",
    include_frozen: bool = False,
    example_input: object | None = None,
) -> GroupSet:
    """Groups by what the parameters *are*: ``norm`` layers, ``lora`` adapters, the ``head``.

    ``kinds=None`` takes every kind the model has trainable parameters of; a kind asked for by
    name must match some, else it is an error (one that says so when it matches only frozen
    parameters, as a PEFT base's norms or an un-saved head do). The head is found as the module
    doc says unless ``head`` names its module; it is always trainable unless
    ``head_trainable=False``. Remaining trainable parameters go to ``rest`` (or stay unmanaged
    with ``rest=None``); frozen ones stay unmanaged unless ``include_frozen=True``, so a PEFT
    model's base is never thawed.
    """
    wanted = _KINDS if kinds is None else (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in wanted if k not in _KINDS]
    if unknown:
        raise GroupError(f"unknown kind(s) {unknown}; choose from {list(_KINDS)}")
    _check_flag("include_frozen", include_frozen)
    lay = _layout(
        model, order=order, nonleaf=nonleaf, include_frozen=True, example_input=example_input,
        head=(head or True) if "head" in wanted else False,
    )  # fmt: skip
    found: dict[str, list[str]] = {k: [] for k in (*_KINDS, "rest")}
    for u in ([lay.head] if lay.head else []) + lay.units:
        for p in u.param_names:
            if u is lay.head:
                found["head"].append(p)
            elif "lora" in wanted and any(mk in p for mk in LORA_MARKERS):
                found["lora"].append(p)
            elif "norm" in wanted and isinstance(u.module, NORM_TYPES):
                found["norm"].append(p)
            else:
                found["rest"].append(p)
    managed = {k: tuple(p for p in ps if include_frozen or not lay.frozen[p]) for k, ps in found.items()}
    groups = []
    for k in (k for k in _KINDS if k in wanted):
        if managed[k]:
            groups.append(Group(k, managed[k], always_trainable=k == "head" and head_trainable, explicit=include_frozen))
        elif kinds is None:
            continue
        elif found[k]:
            raise GroupError(
                f"kind {k!r} matches only frozen parameters ({found[k][:2]}{' ...' if len(found[k]) > 2 else ''}); "
                "groups never thaw what was frozen: make them trainable first (with peft: modules_to_save=[...] "
                "for a head) or pass include_frozen=True"
            )
        else:
            raise GroupError(f"kind {k!r} matches no parameter in {type(model).__name__}; drop it from kinds")
    if not groups:
        raise GroupError(f"{type(model).__name__} has no trainable norm, lora or head parameter; use depth or layers")
    if rest is not None and managed["rest"]:
        groups.insert(0, Group(rest, managed["rest"], explicit=include_frozen))
    return _finish(groups, model)


_BUILDERS = {"depth": depth, "layers": layers, "pattern": pattern, "kind": kind}


def from_spec(model: nn.Module, spec: Mapping[str, object], example_input: object | None = None) -> GroupSet:
    """Build groups from a plain dict (a YAML ``groups:`` block).

    ``{"by": "depth", "blocks": 2, "head": true}``, ``{"by": "layers", "order": "definition"}``,
    ``{"by": "pattern", "patterns": {"lora": "*lora_*"}, "rest": "rest"}``,
    ``{"by": "kind", "kinds": ["lora", "norm", "head"], "rest": null}``; any of them may add
    ``always_trainable: [names]``, and the builders' options (``order``, ``nonleaf``,
    ``include_frozen``) by name.
    """
    if not isinstance(spec, Mapping):
        raise GroupError(f"groups must be a mapping such as {{by: depth, blocks: 2}}, got {spec!r}")
    spec = dict(spec)
    by = spec.pop("by", "depth")
    if by not in _BUILDERS:
        raise GroupError(f"unknown group builder {by!r}; choose from {sorted(_BUILDERS)}")
    extra_always = spec.pop("always_trainable", ())
    if isinstance(extra_always, str):
        extra_always = (extra_always,)
    builder = _BUILDERS[by]
    options = [p for p in inspect.signature(builder).parameters if p != "model"]
    bad = sorted(k for k in spec if k not in options)
    if bad:
        raise GroupError(f"bad option(s) {bad} for groups by {by!r}; options are {options}")
    required = [n for n, p in inspect.signature(builder).parameters.items() if n != "model" and p.default is p.empty]
    if any(n not in spec for n in required):
        raise GroupError(f"groups by {by!r} needs {required}, e.g. {{by: pattern, patterns: {{lora: '*lora_*'}}}}")
    if "example_input" in options:
        spec.setdefault("example_input", example_input)
    gs = builder(model, **spec)
    return gs.with_always_trainable(*extra_always) if extra_always else gs
