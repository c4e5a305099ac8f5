"""Optimizers and learning-rate schedules by name.

Why LR schedules are pure functions of the step, not ``torch.optim.lr_scheduler`` objects:
a freezing schedule may rebuild the optimizer whenever the trainable set changes (seed 000
does), and a captured CUDA graph cannot call ``scheduler.step()``. A function
``step -> lr`` survives both: the training loop sets ``group["lr"] = schedule(step)`` before
each optimizer step. The values equal what the matching torch scheduler produces when
stepped the usual way (``tests/test_optim.py`` checks this to 1e-12).

>>> model = torch.nn.Linear(4, 2)
>>> opt = build_optimizer("adam", model.parameters(), lr=1e-3)
>>> lr_at = lr_schedule("cosine", 1e-3, epochs=30, steps_per_epoch=100)
>>> for group in opt.param_groups:
...     group["lr"] = lr_at(150)          # step 150 is in the second epoch
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

_OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], str]] = {
    "sgd": (torch.optim.SGD, "plain SGD, no momentum"),
    "sgd_momentum": (torch.optim.SGD, "SGD with heavy-ball momentum (default 0.9)"),
    "adam": (torch.optim.Adam, "Adam (Kingma & Ba, 2015)"),
    "adamw": (torch.optim.AdamW, "AdamW: Adam with decoupled weight decay"),
    "rmsprop": (torch.optim.RMSprop, "RMSprop, torch defaults (alpha 0.99, no momentum)"),
}


def build_optimizer(
    name: str,
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float,
    *,
    weight_decay: float | None = None,
    momentum: float = 0.9,
    fused: bool | None = None,
    foreach: bool | None = None,
) -> torch.optim.Optimizer:
    """An optimizer by name, over tensors or param-group dicts.

    ``weight_decay=None`` keeps torch's default for that optimizer (0, except AdamW's 0.01,
    which is what seed 004's ``optim.AdamW(params, lr)`` trained with). ``momentum`` is used
    by ``sgd_momentum`` only. ``fused``/``foreach`` pick torch's kernel implementation;
    ``None`` lets torch choose.

    >>> opt = build_optimizer("sgd_momentum", torch.nn.Linear(4, 2).parameters(), lr=0.1)
    >>> opt.param_groups[0]["momentum"]
    0.9
    """
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(_OPTIMIZERS)}")
    cls = _OPTIMIZERS[name][0]
    options: dict[str, Any] = {"lr": lr}
    if weight_decay is not None:
        options["weight_decay"] = weight_decay
    if name == "sgd_momentum":
        options["momentum"] = momentum
    if foreach is not None:
        options["foreach"] = foreach
    if fused is not None:
        if "fused" not in inspect.signature(cls).parameters:
            raise ValueError(f"{name!r} ({cls.__name__}) has no fused implementation; drop fused=")
        options["fused"] = fused
    return cls(params, **options)


def param_groups_by_group(model: torch.nn.Module, groups: Any) -> list[dict[str, Any]]:
    """One optimizer param group per freezelab group (plus one for parameters in no group).

    What a schedule that sets per-group learning rates (FreezeOut's annealing) needs: the loop
    can only give different parameters different learning rates through param groups. Each
    group dict carries its freezelab group's name under ``"freezelab_group"`` for readers.

    >>> from freezelab import groups
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    >>> [g["freezelab_group"] for g in param_groups_by_group(net, groups.layers(net))]
    ['0', '1']
    """
    named = dict(model.named_parameters())
    out = [{"params": [named[n] for n in g.param_names], "freezelab_group": g.name} for g in groups]
    grouped = {n for g in groups for n in g.param_names}
    rest = [p for n, p in named.items() if n not in grouped]
    if rest:
        out.append({"params": rest, "freezelab_group": None})
    return out


def list_optimizers() -> dict[str, str]:
    """Optimizer names, each with a one-line description (for the CLI)."""
    return {name: description for name, (_, description) in _OPTIMIZERS.items()}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's per-parameter state tensors (moments, buffers, steps).

    Why: freezing can shrink optimizer state (a frozen parameter that left the optimizer
    has none), and this is the number that shows it.

    >>> opt = build_optimizer("sgd", torch.nn.Linear(4, 2).parameters(), lr=0.1)
    >>> optimizer_state_bytes(opt)
    0
    """
    return sum(
        value.nbytes
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


# --- LR schedules: each maps (step, base_lr, epochs, steps_per_epoch, **options) to an LR.


def _none(step: int, base_lr: float, epochs: int, steps_per_epoch: int) -> float:
    return base_lr


def _step(
    step: int,
    base_lr: float,
    epochs: int,
    steps_per_epoch: int,
    *,
    step_size: int | None = None,
    gamma: float = 0.1,
) -> float:
    size = step_size if step_size is not None else max(1, epochs // 3)
    return base_lr * gamma ** (step // steps_per_epoch // size)


def _cosine(
    step: int, base_lr: float, epochs: int, steps_per_epoch: int, *, eta_min: float = 0.0
) -> float:
    epoch = step // steps_per_epoch
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def _exponential(
    step: int, base_lr: float, epochs: int, steps_per_epoch: int, *, gamma: float = 0.9
) -> float:
    return base_lr * gamma ** (step // steps_per_epoch)


def _anneal_cos(start: float, end: float, pct: float) -> float:
    """Same expression as torch's OneCycleLR._annealing_cos, so values agree to the bit."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _onecycle(
    step: int,
    base_lr: float,
    epochs: int,
    steps_per_epoch: int,
    *,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> float:
    initial_lr = base_lr / div_factor
    min_lr = initial_lr / final_div_factor
    total = epochs * steps_per_epoch
    peak = float(pct_start * total) - 1  # the step where torch's warm-up phase ends
    if step <= peak:
        return _anneal_cos(initial_lr, base_lr, step / peak if peak > 0 else 1.0)
    return _anneal_cos(base_lr, min_lr, (step - peak) / (total - 1 - peak))


def _warmup_cosine(
    step: int,
    base_lr: float,
    epochs: int,
    steps_per_epoch: int,
    *,
    warmup_steps: int | None = None,
) -> float:
    total = epochs * steps_per_epoch
    warmup = warmup_steps if warmup_steps is not None else total // 20
    if step < warmup:
        return base_lr * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


_SCHEDULES: dict[str, tuple[Callable[..., float], str]] = {
    "none": (_none, "constant base_lr"),
    "step": (_step, "x gamma (0.1) every max(1, epochs // 3) epochs, like StepLR per epoch"),
    "cosine": (_cosine, "cosine from base_lr to 0 over the epochs, like CosineAnnealingLR"),
    "exponential": (_exponential, "x gamma (0.9) per epoch, like ExponentialLR"),
    "onecycle": (_onecycle, "OneCycleLR per step, max_lr=base_lr (momentum not cycled)"),
    "warmup_cosine": (_warmup_cosine, "linear warm-up from 0 (5% of steps), cosine to 0"),
}


@dataclass(frozen=True)
class LRSchedule:
    """A learning rate as a function of the global step (0-based, the step about to run).

    A frozen dataclass rather than a closure: it prints its settings in logs and it pickles,
    so it can travel with a config to a worker process.
    """

    name: str
    base_lr: float
    epochs: int
    steps_per_epoch: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def __call__(self, step: int) -> float:
        if not 0 <= step < self.total_steps:
            raise ValueError(
                f"step {step} is outside this schedule's 0..{self.total_steps - 1}; "
                "build the schedule with the epochs you will actually train"
            )
        fn = _SCHEDULES[self.name][0]
        return fn(step, self.base_lr, self.epochs, self.steps_per_epoch, **self.options)


def lr_schedule(
    name: str, base_lr: float, *, epochs: int, steps_per_epoch: int, **options: Any
) -> LRSchedule:
    """The LR schedule ``name`` as a pure function of the global step.

    Per-epoch schedules (``step``, ``cosine``, ``exponential``) hold one value through an
    epoch and change at epoch boundaries, as when a torch scheduler is stepped once per
    epoch; ``onecycle`` and ``warmup_cosine`` change every step. Options per schedule:
    ``step``: ``step_size``, ``gamma``; ``cosine``: ``eta_min``; ``exponential``: ``gamma``;
    ``onecycle``: ``pct_start``, ``div_factor``, ``final_div_factor``;
    ``warmup_cosine``: ``warmup_steps``.

    >>> lr_at = lr_schedule("step", 0.1, epochs=9, steps_per_epoch=10)
    >>> [round(lr_at(s), 6) for s in (0, 29, 30, 60)]
    [0.1, 0.1, 0.01, 0.001]
    """
    if name not in _SCHEDULES:
        raise ValueError(f"unknown LR schedule {name!r}; choose one of {sorted(_SCHEDULES)}")
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"need epochs >= 1 and steps_per_epoch >= 1, got {epochs} and {steps_per_epoch}"
        )
    allowed = [
        p.name
        for p in inspect.signature(_SCHEDULES[name][0]).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"LR schedule {name!r} takes options {allowed}, not {unknown}")
    return LRSchedule(name, base_lr, epochs, steps_per_epoch, dict(options))


def list_lr_schedules() -> dict[str, str]:
    """LR schedule names, each with a one-line description (for the CLI)."""
    return {name: description for name, (_, description) in _SCHEDULES.items()}
