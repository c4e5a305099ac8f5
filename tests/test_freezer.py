"""The freezer makes freezing real: bit-identical frozen weights, grad None, optimizer state per policy."""

import itertools

import pytest
import torch
from torch import nn

from freezelab import Freezer, freeze, groups
from freezelab.schedules import (
    Alternate,
    BlockCycle,
    Chain,
    Clock,
    Freeze,
    FreezeOut,
    Progressive,
    RandomLayers,
    Standard,
    Warmup,
)

from models_for_tests import AdapterNet, BNNet, mlp

SPE, EPOCHS = 4, 4
POLICIES = ("keep", "recreate", "remove", "release")
OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=0.1),
    "adam_foreach": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True),
}
SCHEDULES = {
    "standard": (Standard(), "halves"),
    "alternate_epoch": (Alternate(unit="epoch"), "halves"),
    "alternate_batch3": (Alternate(unit="batch", every=3, first="second"), "halves"),
    "warmup": (Warmup(("second",), 5, Alternate(unit="batch", every=2)), "halves"),
    "progressive": (Progressive(0.25, 1.0, unit="batch"), "layers"),
    "freezeout": (FreezeOut(0.3, "cubic", anneal=False), "layers"),  # annealing: tests/test_references.py
    "block_cycle": (BlockCycle(every=2, order="random", seed=1), "layers"),
    "random_layers": (RandomLayers(k=2, every=3, seed=5), "layers"),
}


def make(kind, model):
    return groups.depth(model, 2) if kind == "halves" else groups.layers(model, head=True)


def run_and_check(model, gs, schedule, opt_name, policy, steps=SPE * EPOCHS, bn_stats="train"):
    """Train `steps` steps, checking every invariant at every step; returns the freezer."""
    opt = OPTIMIZERS[opt_name](model.parameters())
    fz = Freezer(model, gs, schedule, opt, policy=policy, bn_stats=bn_stats)
    named = dict(model.named_parameters())
    ever_trained: set[str] = set()
    prev_opt = fz.optimizer
    prev_trainable = None
    for step in range(steps):
        clock = Clock.at(step, SPE, EPOCHS)
        fz.step(clock)
        want = schedule.trainable(clock, gs.schedulable) | set(gs.always_trainable)
        assert fz.trainable == want
        assert fz.optimizer is prev_opt  # every policy keeps the optimizer object (recreate resets it in place)
        if policy == "recreate" and prev_trainable is not None and want != prev_trainable:
            assert not fz.optimizer.state, "recreate: a switch must start from fresh optimizer state"
        frozen = [p for g in gs for p in g.param_names if g.name not in want]
        trainable = [p for g in gs for p in g.param_names if g.name in want]
        ever_trained |= set(trainable)
        before = {n: named[n].detach().clone() for n in named}
        state_before = {n: {k: v.clone() for k, v in fz.optimizer.state[named[n]].items() if torch.is_tensor(v)}
                        for n in frozen if named[n] in fz.optimizer.state}
        for n in frozen:
            assert not named[n].requires_grad and named[n].grad is None
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        for n in frozen:
            assert named[n].grad is None, f"{n} got a gradient while frozen"
        fz.optimizer.step()
        fz.optimizer.zero_grad(set_to_none=True)
        for n in frozen:
            assert torch.equal(named[n], before[n]), f"{n} moved while frozen at step {step}"
        for n in trainable:
            assert not torch.equal(named[n], before[n]), f"{n} did not train at step {step}"
        # Optimizer state, per policy.
        opt_params = {id(p) for g in fz.optimizer.param_groups for p in g["params"]}
        state_ids = {id(p) for p in fz.optimizer.state}
        for n in frozen:
            p = named[n]
            if policy == "keep":
                assert id(p) in opt_params
            else:
                assert id(p) not in opt_params, f"{policy}: frozen {n} still in param_groups"
            if policy in ("release", "recreate"):
                assert id(p) not in state_ids, f"{policy}: frozen {n} still has state"
            if n in state_before:  # parked state must not move while frozen
                for k, v in state_before[n].items():
                    assert torch.equal(fz.optimizer.state[p][k], v)
        prev_trainable = want
    return fz


CASES = list(itertools.product(SCHEDULES, POLICIES))


@pytest.mark.parametrize("sched_name,policy", CASES)
def test_every_schedule_and_policy_on_mlp(sched_name, policy):
    schedule, kind = SCHEDULES[sched_name]
    model = mlp()
    run_and_check(model, make(kind, model), schedule, "adamw", policy)


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
@pytest.mark.parametrize("policy", POLICIES)
def test_optimizers_never_leak_into_frozen_params(opt_name, policy):
    """Weight decay and momentum must not move a frozen parameter (the classic AdamW/SGD leak)."""
    model = mlp()
    # Train everything for 4 steps to build momentum, then freeze the first half for 8 steps.
    sched = Chain(((Standard(), 4, "batch"), (Freeze(("first",)), None, "batch")))
    run_and_check(model, groups.depth(model, 2), sched, opt_name, policy, steps=12)


def test_a_zero_gradient_would_leak_so_none_matters():
    """Sanity check that the test above is sensitive: zero grads DO move params under AdamW."""
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.1)
    w.grad = torch.ones(3)
    opt.step()
    w.grad = torch.zeros(3)
    before = w.detach().clone()
    opt.step()
    assert not torch.equal(w, before)


@pytest.mark.parametrize("policy", POLICIES)
def test_models_with_norms_and_adapters(policy):
    model = AdapterNet()
    gs = groups.kind(model, ("lora", "norm", "head"), rest=None)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "base" in n}
    run_and_check(model, gs, Alternate(("norm", "lora"), every=2, unit="batch"), "adamw", policy)
    for n, p in model.named_parameters():
        if "base" in n:  # unmanaged and frozen by the model itself: never touched
            assert not p.requires_grad and torch.equal(p, base_before[n])


@pytest.mark.parametrize("policy", POLICIES)
def test_batchnorm_model_all_policies(policy):
    model = BNNet()
    run_and_check(model, groups.depth(model, 2), Alternate(unit="batch", every=2), "sgd_momentum", policy)


def test_remove_keeps_state_and_resumes_it_when_thawed():
    model = mlp()
    named = dict(model.named_parameters())
    fz = Freezer(model, groups.depth(model, 2), Alternate(unit="batch", every=1), torch.optim.Adam(model.parameters()), policy="remove")
    for step in range(3):
        fz.step(Clock.at(step, 10, 1))
        model(torch.randn(4, 6)).sum().backward()
        fz.optimizer.step()
        fz.optimizer.zero_grad()
    # "first" trained at steps 0 and 2, so its Adam step count is 2 (continued, not restarted).
    assert fz.optimizer.state[named["0.weight"]]["step"].item() == 2


def test_release_frees_state_and_restarts_it():
    model = mlp(width=64)
    named = dict(model.named_parameters())
    opt = torch.optim.Adam(model.parameters())
    fz = Freezer(model, groups.depth(model, 2), Alternate(unit="batch", every=1), opt, policy="release")

    def state_bytes():
        return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))

    sizes = []
    for step in range(3):
        fz.step(Clock.at(step, 10, 1))
        model(torch.randn(4, 6)).sum().backward()
        opt.step()
        opt.zero_grad()
        sizes.append(state_bytes())
    full = sum(2 * p.numel() * 4 for p in model.parameters())
    assert max(sizes) < full  # never holds state for the whole model
    assert fz.optimizer.state[named["0.weight"]]["step"].item() == 1  # restarted after thawing


def test_bn_stats_frozen_stops_running_statistics():
    model = BNNet()
    fz = Freezer(model, groups.depth(model, 2), Freeze(("first",)), bn_stats="frozen")
    model.train()
    fz.step(Clock.at(0, 1, 1))
    mean_before = model.bn1.running_mean.clone()
    model(torch.randn(8, 6)).sum().backward()
    assert torch.equal(model.bn1.running_mean, mean_before)  # frozen group: stats fixed
    assert not model.bn1.training and model.bn2.training
    # default: statistics keep updating even when the affine params are frozen
    model2 = BNNet()
    Freezer(model2, groups.depth(model2, 2), Freeze(("first",))).step(Clock.at(0, 1, 1))
    before = model2.bn1.running_mean.clone()
    model2(torch.randn(8, 6))
    assert not torch.equal(model2.bn1.running_mean, before)


def test_frozen_prefix_skips_backward_work():
    """With the first half frozen, autograd never computes the first layer's input gradient."""
    model = mlp()
    Freezer(model, groups.depth(model, 2), Freeze(("first",))).step(Clock.at(0, 1, 1))
    x = torch.randn(4, 6, requires_grad=False)
    out = model(x)
    # Walk the autograd graph: no node reaches the first layer's weight.
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    leaves = {id(fn.variable) for fn in seen if hasattr(fn, "variable")}
    assert id(model[0].weight) not in leaves and id(model[2].weight) not in leaves
    assert id(model[4].weight) in leaves


def test_state_dict_round_trip_under_remove():
    torch.manual_seed(1)
    model = mlp()
    gs = groups.depth(model, 2)
    sched = Alternate(unit="batch", every=1)
    fz = Freezer(model, gs, sched, torch.optim.Adam(model.parameters()), policy="remove")
    for step in range(3):
        fz.step(Clock.at(step, 10, 1))
        model(torch.randn(4, 6)).sum().backward()
        fz.optimizer.step()
        fz.optimizer.zero_grad()
    saved = fz.state_dict()
    model2 = mlp()
    model2.load_state_dict(model.state_dict())
    fz2 = Freezer(model2, gs, sched, torch.optim.Adam(model2.parameters()), policy="remove")
    fz2.load_state_dict(saved)
    assert fz2.trainable == fz.trainable
    p1, p2 = dict(model.named_parameters()), dict(model2.named_parameters())
    for n in p1:
        s1, s2 = fz.optimizer.state.get(p1[n], {}), fz2.optimizer.state.get(p2[n], {})
        assert s1.keys() == s2.keys()
        for k in s1:
            assert torch.equal(s1[k], s2[k])


def test_functional_form_and_bad_arguments():
    model = mlp()
    gs = groups.depth(model, 2)
    opt = freeze(model, gs, {"second"}, torch.optim.SGD(model.parameters(), lr=0.1), policy="recreate")
    assert [p.requires_grad for p in model.parameters()] == [False, False, False, False, True, True, True, True]
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    with pytest.raises(ValueError, match="unknown group"):
        freeze(model, gs, {"third"})
    with pytest.raises(ValueError, match="unknown optimizer policy"):
        Freezer(model, gs, Standard(), policy="drop")
    with pytest.raises(ValueError, match="needs the optimizer"):
        Freezer(model, gs, Standard(), policy="remove")


def test_trainable_fraction():
    model = mlp()
    fz = Freezer(model, groups.depth(model, 2), Freeze(("first",)))
    fz.step(Clock.at(0, 1, 1))
    n_second = sum(p.numel() for p in list(model.parameters())[4:])
    assert fz.trainable_fraction == pytest.approx(n_second / sum(p.numel() for p in model.parameters()))
