"""The freezer on real-world terms: torch-native optimizer state, resume, coherence, user-frozen parameters."""

import io

import pytest
import torch
from torch import nn

from freezelab import Freezer, freeze, groups
from freezelab.freezer import FreezerError
from freezelab.schedules import Alternate, Chain, Clock, Freeze, Standard

from models_for_tests import mlp

POLICIES = ("keep", "recreate", "remove", "release")
SPE, EPOCHS, STEPS = 4, 3, 12
OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=0.1),
}
# "first" trains at steps 0-2, 6-8; "second" at 3-5, 9-11: step 4 is inside a frozen phase of "first".
SCHEDULE = Alternate(unit="batch", every=3)


def batch(step: int):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def fresh(seed: int, opt_name: str):
    torch.manual_seed(seed)
    model = mlp()
    return model, OPTIMIZERS[opt_name](model.parameters())


def train(model, fz, opt, steps):
    for step in steps:
        fz.step(Clock.at(step, SPE, EPOCHS))
        x, y = batch(step)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def assert_same(model_a, opt_a, model_b, opt_b):
    for (n, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(a, b), f"{n} differs after resume"
    pa, pb = list(model_a.parameters()), list(model_b.parameters())
    for a, b in zip(pa, pb):
        sa, sb = opt_a.state.get(a, {}), opt_b.state.get(b, {})
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k]))


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("order", ["freezer_first", "state_first"])
def test_resume_inside_a_frozen_phase_is_bit_identical(policy, opt_name, order):
    """A host checkpoint (model + optimizer.state_dict(), nothing of freezelab's) resumes bit for bit.

    ``freezer_first``: the Freezer exists when the state is loaded (freezelab's own loop, HF);
    ``state_first``: the host restores the optimizer before the Freezer is built.
    """
    model_a, opt_a = fresh(0, opt_name)
    train(model_a, Freezer(model_a, groups.depth(model_a, 2), SCHEDULE, opt_a, policy=policy), opt_a, range(STEPS))

    model_b, opt_b = fresh(0, opt_name)
    fz_b = Freezer(model_b, groups.depth(model_b, 2), SCHEDULE, opt_b, policy=policy)
    train(model_b, fz_b, opt_b, range(5))
    assert not model_b[0].weight.requires_grad  # checkpoint taken while "first" is frozen
    checkpoint = roundtrip({"model": model_b.state_dict(), "optimizer": opt_b.state_dict()})

    model_c, opt_c = fresh(123, opt_name)  # other initial weights: everything must come from the checkpoint
    model_c.load_state_dict(checkpoint["model"])
    if order == "freezer_first":
        fz_c = Freezer(model_c, groups.depth(model_c, 2), SCHEDULE, opt_c, policy=policy)
        opt_c.load_state_dict(checkpoint["optimizer"])
        assert fz_c.trainable == frozenset({"second"}) and not model_c[0].weight.requires_grad
    else:
        opt_c.load_state_dict(checkpoint["optimizer"])
        fz_c = Freezer(model_c, groups.depth(model_c, 2), SCHEDULE, opt_c, policy=policy)
    train(model_c, fz_c, opt_c, range(5, STEPS))
    assert_same(model_a, opt_a, model_c, opt_c)


@pytest.mark.parametrize("policy", POLICIES)
def test_optimizer_state_dict_is_full_and_loads_into_a_fresh_optimizer(policy):
    model, opt = fresh(0, "adamw")
    fz = Freezer(model, groups.depth(model, 2), SCHEDULE, opt, policy=policy)
    train(model, fz, opt, range(5))
    state = opt.state_dict()  # torch's own call: raised KeyError under `remove` before
    assert [len(g["params"]) for g in state["param_groups"]] == [8]  # full membership, like a fresh optimizer
    assert state["freezelab"]["trainable"] == ["second"]
    if policy != "keep":  # the optimizer itself stays narrowed after saving
        assert len(opt.param_groups[0]["params"]) == 4
    plain_model, plain = fresh(1, "adamw")
    plain.load_state_dict(roundtrip(state))  # no freezer attached: loads as plain torch state
    expected = {"keep": 8, "remove": 8, "recreate": 4, "release": 4}[policy]
    assert len(plain.state) == expected
    full = Freezer(model, groups.depth(model, 2), SCHEDULE, opt, policy=policy)
    full.detach()
    assert len(opt.param_groups[0]["params"]) == 8 and "freezelab" not in opt.state_dict()


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
def test_recreate_in_place_equals_building_a_new_optimizer(opt_name):
    """Seed 000's policy: a new optimizer over the trainable parameters at every switch."""
    model_a, opt_a = fresh(0, opt_name)
    fz = Freezer(model_a, groups.depth(model_a, 2), SCHEDULE, opt_a, policy="recreate")
    train(model_a, fz, opt_a, range(STEPS))

    model_b, _ = fresh(0, opt_name)
    gs = groups.depth(model_b, 2)
    named = dict(model_b.named_parameters())
    opt_b, current = None, None
    for step in range(STEPS):
        want = SCHEDULE.trainable(Clock.at(step, SPE, EPOCHS), gs.schedulable)
        if want != current:
            for g in gs:
                for n in g.param_names:
                    named[n].requires_grad_(g.name in want)
                    named[n].grad = None
            opt_b = OPTIMIZERS[opt_name]([p for p in model_b.parameters() if p.requires_grad])
            current = want
        x, y = batch(step)
        nn.functional.cross_entropy(model_b(x), y).backward()
        opt_b.step()
        opt_b.zero_grad(set_to_none=True)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
    assert fz.optimizer is opt_a


def test_recreate_keeps_lr_schedulers_bound():
    model, opt = fresh(0, "sgd_momentum")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    fz = Freezer(model, groups.depth(model, 2), SCHEDULE, opt, policy="recreate")
    lrs = []
    for step in range(8):
        fz.step(Clock.at(step, SPE, EPOCHS))
        x, y = batch(step)
        nn.functional.cross_entropy(model(x), y).backward()
        fz.optimizer.step()
        fz.optimizer.zero_grad()
        sched.step()
        lrs.append(fz.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([1e-2 * 0.5 ** ((s + 1) // 2) for s in range(8)])


# -- coherence between the groups and the optimizer --------------------------------------------
def test_parameters_missing_from_the_optimizer_are_an_error_naming_them():
    model = mlp()
    for p in model[0].parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])  # the usual PEFT/HF optimizer
    for p in model[0].parameters():
        p.requires_grad_(True)  # ...and then the user makes them trainable again
    with pytest.raises(FreezerError, match=r"2 parameter\(s\).*'0\.weight'.*missing='add'"):
        Freezer(model, groups.depth(model, 2), Standard(), opt)
    fz = Freezer(model, groups.depth(model, 2), Standard(), opt, missing="add")
    assert sum(len(g["params"]) for g in fz.optimizer.param_groups) == 8


def test_an_optimizer_over_another_model_is_refused():
    model, other = mlp(), mlp()
    with pytest.raises(FreezerError, match="not in the optimizer"):
        Freezer(model, groups.depth(model, 2), Standard(), torch.optim.SGD(other.parameters(), lr=0.1))


def test_several_optimizers_each_follow_the_policy():
    model = mlp()
    opt1 = torch.optim.AdamW(model[0].parameters(), lr=1e-2)
    opt2 = torch.optim.SGD([p for m in list(model)[1:] for p in m.parameters()], lr=1e-2, momentum=0.9)
    fz = Freezer(model, groups.depth(model, 2), SCHEDULE, [opt1, opt2], policy="remove")
    assert fz.optimizers == [opt1, opt2]
    for step in range(4):
        fz.step(Clock.at(step, SPE, EPOCHS))
        x, y = batch(step)
        nn.functional.cross_entropy(model(x), y).backward()
        for opt in fz.optimizers:
            opt.step()
            opt.zero_grad()
    assert not opt1.param_groups[0]["params"]  # all of opt1's parameters are in "first", frozen at step 3
    saved = [opt1.state_dict(), opt2.state_dict()]
    assert [len(s["param_groups"][0]["params"]) for s in saved] == [2, 6]
    with pytest.raises(FreezerError, match="not in the optimizer"):
        Freezer(model, groups.depth(model, 2), SCHEDULE, [opt2], policy="remove")


def test_host_wrappers_are_unwrapped():
    model = mlp()
    opt = torch.optim.AdamW(model.parameters())

    class Wrapper:  # what accelerate and Lightning hand a callback: delegation through `.optimizer`
        def __init__(self, inner):
            self.optimizer = inner

    fz = Freezer(model, groups.depth(model, 2), SCHEDULE, Wrapper(opt), policy="remove")
    assert fz.optimizer is opt
    with pytest.raises(FreezerError, match="expected a torch.optim.Optimizer"):
        Freezer(model, groups.depth(model, 2), SCHEDULE, object(), policy="remove")


def test_named_param_groups_stay_aligned():
    model = mlp()
    opt = torch.optim.AdamW(model.named_parameters(), lr=1e-2)
    if "param_names" not in opt.param_groups[0]:
        pytest.skip("this torch keeps no parameter names in param_groups")
    fz = Freezer(model, groups.depth(model, 2), SCHEDULE, opt, policy="remove")
    train(model, fz, opt, range(4))
    names = dict(model.named_parameters())
    group = opt.param_groups[0]
    assert [names[n] for n in group["param_names"]] == group["params"]
    assert len(opt.state_dict()["param_groups"][0]["param_names"]) == 8


# -- what the user froze stays frozen -----------------------------------------------------------
def test_parameters_frozen_before_the_freezer_stay_frozen():
    model = mlp()
    for p in model[0].parameters():
        p.requires_grad_(False)
    before = model[0].weight.detach().clone()
    # Groups built before the user froze layer 0: they hold 0.*, but nobody asked to thaw it.
    gs = groups.GroupSet((groups.Group("first", ("0.weight", "0.bias", "2.weight", "2.bias")),
                          groups.Group("second", ("4.weight", "4.bias", "6.weight", "6.bias"))))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fz = Freezer(model, gs, SCHEDULE, opt, policy="remove")
    train(model, fz, opt, range(STEPS))
    assert not model[0].weight.requires_grad and torch.equal(model[0].weight, before)
    assert model[2].weight.requires_grad or model[4].weight.requires_grad


def test_explicit_groups_may_thaw_what_they_name():
    model = mlp()
    for p in model.parameters():
        p.requires_grad_(False)
    gs = groups.pattern(model, {"first": ["0.*", "2.*"], "second": ["4.*", "6.*"]})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fz = Freezer(model, gs, SCHEDULE, opt)
    fz.step(Clock.at(0, SPE, EPOCHS))
    assert model[0].weight.requires_grad and not model[4].weight.requires_grad


def test_a_group_of_only_user_frozen_parameters_is_an_error():
    model = mlp()
    gs = groups.depth(model, 2)
    for p in model[0].parameters():
        p.requires_grad_(False)
    for p in model[2].parameters():
        p.requires_grad_(False)
    with pytest.raises(FreezerError, match="group 'first' holds only parameters that were frozen before"):
        Freezer(model, gs, SCHEDULE)


def test_the_functional_form_called_twice_can_thaw_what_it_froze():
    model = mlp()
    gs = groups.depth(model, 2)
    opt = torch.optim.AdamW(model.parameters())
    freeze(model, gs, {"second"}, opt, policy="remove")
    assert not model[0].weight.requires_grad and len(opt.param_groups[0]["params"]) == 4
    freeze(model, gs, {"first"}, opt, policy="remove")
    assert model[0].weight.requires_grad and not model[4].weight.requires_grad
    assert len(opt.param_groups[0]["params"]) == 4


def test_a_schedule_that_freezes_everything_is_one_clear_error():
    model = mlp()
    fz = Freezer(model, groups.depth(model, 2), Chain(((Standard(), 2, "batch"), (Freeze(("first", "second")), None, "batch"))))
    fz.step(Clock.at(0, SPE, EPOCHS))
    with pytest.raises(FreezerError, match="at step 2 .* leaves nothing in the model trainable"):
        fz.step(Clock.at(2, SPE, EPOCHS))


# -- per-group learning-rate factors (FreezeOut's annealing) ---------------------------------------
class _Halving(Standard):
    """A test schedule that trains everything and gives group "first" half the learning rate after step 1."""

    scales_lr = True

    def lr_factors(self, clock, groups):
        return {"first": 0.5 if clock.step >= 1 else 1.0}


def test_lr_factors_scale_each_param_group_around_the_step_only():
    from freezelab.optim import param_groups_by_group

    model = mlp()
    gs = groups.depth(model, 2)
    opt = torch.optim.SGD(param_groups_by_group(model, gs), lr=0.1)
    lr_sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    fz = Freezer(model, gs, _Halving(), opt)
    named = dict(model.named_parameters())
    for step in range(4):
        fz.step(Clock.at(step, SPE, EPOCHS))
        x, y = batch(step)
        nn.functional.cross_entropy(model(x), y).backward()
        w0, w4 = named["0.weight"].detach().clone(), named["4.weight"].detach().clone()
        g0, g4 = named["0.weight"].grad.clone(), named["4.weight"].grad.clone()
        opt.step()
        base = 0.1 * 0.1 ** (step // 2)
        assert torch.allclose(w0 - named["0.weight"], base * (0.5 if step >= 1 else 1.0) * g0, atol=1e-7)
        assert torch.allclose(w4 - named["4.weight"], base * g4, atol=1e-7)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([base, base])  # restored after the step
        opt.zero_grad()
        lr_sched.step()


def test_lr_factors_need_one_param_group_per_freezelab_group():
    model = mlp()
    with pytest.raises(FreezerError, match="one param group per freezelab group"):
        Freezer(model, groups.depth(model, 2), _Halving(), torch.optim.SGD(model.parameters(), lr=0.1))


def test_resume_at_makes_the_next_step_a_real_switch_for_a_late_freezer():
    """The HF order: the optimizer state is loaded before the Freezer exists, and the resume step is a switch."""
    model_a, opt_a = fresh(0, "adamw")
    train(model_a, Freezer(model_a, groups.depth(model_a, 2), SCHEDULE, opt_a, policy="recreate"), opt_a, range(STEPS))
    model_b, opt_b = fresh(0, "adamw")
    fz_b = Freezer(model_b, groups.depth(model_b, 2), SCHEDULE, opt_b, policy="recreate")
    train(model_b, fz_b, opt_b, range(3))  # step 3 is a switch
    checkpoint = roundtrip({"model": model_b.state_dict(), "optimizer": opt_b.state_dict(), "fz": fz_b.state_dict()})
    model_c, opt_c = fresh(5, "adamw")
    model_c.load_state_dict(checkpoint["model"])
    opt_c.load_state_dict(checkpoint["optimizer"])  # no freezer attached yet
    fz_c = Freezer(model_c, groups.depth(model_c, 2), SCHEDULE, opt_c, policy="recreate")
    fz_c.resume_at(Clock.at(2, SPE, EPOCHS))
    fz_c.load_state_dict({"trainable": checkpoint["fz"]["trainable"], "switches": checkpoint["fz"]["switches"]})
    train(model_c, fz_c, opt_c, range(3, STEPS))
    assert_same(model_a, opt_a, model_c, opt_c)
    assert fz_c.switches == 3
