"""Tests for freezelab.optim: optimizers by name, LR schedules equal to torch's schedulers."""

from __future__ import annotations

import functools
import math
import pickle
from collections.abc import Callable

import pytest
import torch
from torch.optim import lr_scheduler

from freezelab.optim import (
    build_optimizer,
    list_lr_schedules,
    list_optimizers,
    lr_schedule,
    optimizer_state_bytes,
)

BASE_LR = 0.05
# (epochs, steps_per_epoch): odd sizes catch off-by-one errors; epochs < 3 hits step_size=1.
SIZES = [(1, 5), (2, 1), (7, 3), (30, 4), (12, 13)]


def _params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return list(torch.nn.Linear(3, 2).parameters())


@pytest.mark.parametrize(
    ("name", "cls", "momentum"),
    [
        ("sgd", torch.optim.SGD, 0.0),
        ("sgd_momentum", torch.optim.SGD, 0.9),
        ("adam", torch.optim.Adam, None),
        ("adamw", torch.optim.AdamW, None),
        ("rmsprop", torch.optim.RMSprop, 0.0),
    ],
)
def test_build_optimizer_by_name(name: str, cls: type, momentum: float | None) -> None:
    opt = build_optimizer(name, _params(), lr=0.01, weight_decay=1e-4)
    group = opt.param_groups[0]
    assert type(opt) is cls and group["lr"] == 0.01 and group["weight_decay"] == 1e-4
    assert group.get("momentum") == momentum


def test_weight_decay_default_is_torchs_own() -> None:
    assert build_optimizer("adamw", _params(), lr=0.01).param_groups[0]["weight_decay"] == 0.01
    assert build_optimizer("adam", _params(), lr=0.01).param_groups[0]["weight_decay"] == 0


def test_optimizer_accepts_param_groups_and_custom_momentum() -> None:
    weight, bias = _params()
    opt = build_optimizer(
        "sgd_momentum", [{"params": [weight]}, {"params": [bias], "lr": 0.5}], lr=0.1, momentum=0.5
    )
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[1]["momentum"] == 0.5


def test_fused_and_foreach_reach_torch() -> None:
    assert build_optimizer("adam", _params(), lr=0.1, foreach=False).defaults["foreach"] is False
    assert build_optimizer("adamw", _params(), lr=0.1, fused=False).defaults["fused"] is False
    with pytest.raises(ValueError, match="fused"):
        build_optimizer("rmsprop", _params(), lr=0.1, fused=True)


def test_unknown_optimizer_lists_names() -> None:
    assert list(list_optimizers()) == ["sgd", "sgd_momentum", "adam", "adamw", "rmsprop"]
    with pytest.raises(ValueError, match="sgd_momentum"):
        build_optimizer("lion", _params(), lr=0.1)


def _torch_lrs(make: Callable, epochs: int, steps_per_epoch: int, per: str) -> list[float]:
    """The LR in force at each global step when a torch scheduler is stepped per epoch/step."""
    opt = torch.optim.SGD(_params(), lr=BASE_LR, momentum=0.9)
    scheduler = make(opt)
    lrs = []
    for _ in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if per == "step":
                scheduler.step()
        if per == "epoch":
            scheduler.step()
    return lrs


def _hf_warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """transformers' get_cosine_schedule_with_warmup multiplier, written out independently."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def _torch_scheduler(name: str, opt: torch.optim.Optimizer, epochs: int, steps: int) -> object:
    """The torch scheduler each named schedule must reproduce."""
    total = epochs * steps
    return {
        "none": lambda: lr_scheduler.LambdaLR(opt, lambda _: 1.0),
        "step": lambda: lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1),
        "cosine": lambda: lr_scheduler.CosineAnnealingLR(opt, T_max=epochs),
        "exponential": lambda: lr_scheduler.ExponentialLR(opt, gamma=0.9),
        "onecycle": lambda: lr_scheduler.OneCycleLR(opt, max_lr=BASE_LR, total_steps=total),
        "warmup_cosine": lambda: lr_scheduler.LambdaLR(opt, _hf_warmup_cosine(total // 20, total)),
    }[name]()


PER_EPOCH = {"none", "step", "cosine", "exponential"}
SCHEDULES = ["none", "step", "cosine", "exponential", "onecycle", "warmup_cosine"]


@pytest.mark.parametrize(("epochs", "steps_per_epoch"), SIZES)
@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_equals_torch_scheduler(name: str, epochs: int, steps_per_epoch: int) -> None:
    per = "epoch" if name in PER_EPOCH else "step"
    make = functools.partial(_torch_scheduler, name, epochs=epochs, steps=steps_per_epoch)
    expected = _torch_lrs(make, epochs, steps_per_epoch, per)
    lr_at = lr_schedule(name, BASE_LR, epochs=epochs, steps_per_epoch=steps_per_epoch)
    got = [lr_at(step) for step in range(epochs * steps_per_epoch)]
    assert len(got) == len(expected)
    for step, (g, e) in enumerate(zip(got, expected)):
        assert math.isclose(g, e, rel_tol=1e-12, abs_tol=0.0), (step, g, e)


def test_schedules_cover_the_listed_names() -> None:
    assert list(list_lr_schedules()) == SCHEDULES


def test_schedule_options_reach_the_formula() -> None:
    options = {"pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0}
    expected = _torch_lrs(
        lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=BASE_LR, total_steps=40, **options),
        epochs=4,
        steps_per_epoch=10,
        per="step",
    )
    lr_at = lr_schedule("onecycle", BASE_LR, epochs=4, steps_per_epoch=10, **options)
    assert [lr_at(s) for s in range(40)] == pytest.approx(expected, rel=1e-12)
    step_lr = lr_schedule("step", 1.0, epochs=10, steps_per_epoch=2, step_size=2, gamma=0.5)
    assert [step_lr(s) for s in (0, 3, 4, 8)] == [1.0, 1.0, 0.5, 0.25]


def test_warmup_cosine_shape() -> None:
    lr_at = lr_schedule("warmup_cosine", 1.0, epochs=10, steps_per_epoch=10, warmup_steps=10)
    lrs = [lr_at(s) for s in range(100)]
    assert lrs[0] == 0.0 and lrs[5] == 0.5 and lrs[10] == 1.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-3


def test_schedule_is_pure_and_picklable() -> None:
    lr_at = lr_schedule("onecycle", BASE_LR, epochs=3, steps_per_epoch=7)
    forward = [lr_at(s) for s in range(21)]
    assert [lr_at(s) for s in reversed(range(21))] == forward[::-1]
    assert [pickle.loads(pickle.dumps(lr_at))(s) for s in range(21)] == forward


@pytest.mark.parametrize("step", [-1, 21])
def test_schedule_rejects_steps_outside_training(step: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        lr_schedule("cosine", BASE_LR, epochs=3, steps_per_epoch=7)(step)


def test_schedule_rejects_unknown_names_and_options() -> None:
    with pytest.raises(ValueError, match="warmup_cosine"):
        lr_schedule("linear", BASE_LR, epochs=3, steps_per_epoch=7)
    with pytest.raises(ValueError, match="eta_min"):
        lr_schedule("cosine", BASE_LR, epochs=3, steps_per_epoch=7, gamma=0.5)
    with pytest.raises(ValueError, match="epochs"):
        lr_schedule("none", BASE_LR, epochs=0, steps_per_epoch=7)


def test_optimizer_state_bytes_counts_state_tensors() -> None:
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(4))]
    for p in params:
        p.grad = torch.ones_like(p)
    adam = build_optimizer("adam", params, lr=0.1)
    assert optimizer_state_bytes(adam) == 0
    adam.step()
    steps = sum(adam.state[p]["step"].nbytes for p in params)
    assert optimizer_state_bytes(adam) == 2 * (15 + 4) * 4 + steps

    sgd = build_optimizer("sgd_momentum", params, lr=0.1)
    sgd.step()
    assert optimizer_state_bytes(sgd) == (15 + 4) * 4
