"""The freezer across model families: MLP, BatchNorm CNN, torchvision and timm ViTs, PEFT LoRA, a tied LM, pre-frozen.

Each family trains a few steps under every policy with the optimizer built the way its
ecosystem builds it (from the parameters that require grad), and every step checks the facts:
frozen weights bit-identical, their gradients None, what the user froze never thawed, tied
weights one tensor, and a host-style checkpoint inside a frozen phase resumes bit for bit.
"""

import io

import pytest
import torch

from freezelab import Freezer, groups
from freezelab.schedules import Alternate, Clock, Progressive

from model_families import FAMILIES, load

POLICIES = ("keep", "recreate", "remove", "release")
STEPS, SPE = 6, 3
SCHEDULE = Alternate(unit="batch", every=2)  # "second" frozen at steps 0-1 and 4-5, "first" at 2-3


def build(family: str, policy: str, seed: int = 0):
    fam = load(family, seed=seed)
    model = fam.model
    gs = groups.depth(model, 2, head=family != "prefrozen", example_input=fam.example_input)  # 2 units left there
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.1)
    return fam, gs, opt, Freezer(model, gs, SCHEDULE, opt, policy=policy)


def one_step(fam, fz, opt, step: int) -> None:
    fz.step(Clock.at(step, SPE, STEPS // SPE))
    torch.manual_seed(step)  # dropout (GPT-2) draws the same masks in every run
    fam.loss_fn(fam.model, fam.make_batch(step)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_freezes_for_real(family, policy):
    fam, gs, opt, fz = build(family, policy)
    named = dict(fam.model.named_parameters())
    user_frozen = {n: named[n].detach().clone() for n in fam.frozen}
    assert set(fam.frozen) <= set(gs.unmanaged)  # what the user froze is in no group
    assert "first" in gs and "second" in gs and ("head" in gs) == (family != "prefrozen")
    for step in range(STEPS):
        fz.step(Clock.at(step, SPE, STEPS // SPE))
        frozen = [n for g in gs for n in g.param_names if g.name not in fz.trainable]
        training = [n for g in gs for n in g.param_names if g.name in fz.trainable]
        assert frozen and training
        before = {n: named[n].detach().clone() for n in named}
        torch.manual_seed(step)
        fam.loss_fn(fam.model, fam.make_batch(step)).backward()
        for n in frozen:
            assert not named[n].requires_grad and named[n].grad is None, f"{n} got a gradient while frozen"
        opt.step()
        opt.zero_grad(set_to_none=True)
        for n in frozen:
            assert torch.equal(named[n], before[n]), f"{family}: {n} moved while frozen at step {step}"
        assert any(not torch.equal(named[n], before[n]) for n in training), f"{family}: nothing trained at step {step}"
        for n, value in user_frozen.items():
            assert not named[n].requires_grad and torch.equal(named[n], value), f"{family}: user-frozen {n} thawed"
    for canonical, alias in fam.tied:
        assert fam.model.get_parameter(canonical) is fam.model.get_parameter(alias)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_progressive_freezes_a_growing_prefix_and_never_the_head(family):
    fam = load(family)
    gs = groups.layers(fam.model, head=True, example_input=fam.example_input)
    opt = torch.optim.AdamW([p for p in fam.model.parameters() if p.requires_grad], lr=1e-3)
    fz = Freezer(fam.model, gs, Progressive(0.0, 1.0, unit="batch"), opt, policy="remove")
    order = gs.schedulable
    depth = 0
    for step in range(STEPS):
        one_step(fam, fz, opt, step)
        frozen = [g for g in order if g not in fz.trainable]
        assert frozen == list(order[: len(frozen)]), "progressive must freeze a prefix in forward order"
        assert len(frozen) >= depth and "head" in fz.trainable
        depth = len(frozen)
    assert depth > 0 or len(order) < 4  # with fewer groups the prefix only grows past 6 steps


@pytest.mark.parametrize("policy", ["remove", "recreate"])  # parked state, and state reset in place
@pytest.mark.parametrize("family", list(FAMILIES))
def test_host_checkpoint_inside_a_frozen_phase_resumes_bit_for_bit(family, policy):
    fam_a, _, opt_a, fz_a = build(family, policy)
    for step in range(STEPS):
        one_step(fam_a, fz_a, opt_a, step)

    fam_b, _, opt_b, fz_b = build(family, policy)
    for step in range(3):  # step 2 trained with "first" frozen
        one_step(fam_b, fz_b, opt_b, step)
    buf = io.BytesIO()
    torch.save({"model": fam_b.model.state_dict(), "optimizer": opt_b.state_dict()}, buf)
    buf.seek(0)
    checkpoint = torch.load(buf, weights_only=True)

    fam_c, _, opt_c, fz_c = build(family, policy, seed=1)  # other weights: all must come from the checkpoint
    fam_c.model.load_state_dict(checkpoint["model"])
    opt_c.load_state_dict(checkpoint["optimizer"])
    for step in range(3, STEPS):
        one_step(fam_c, fz_c, opt_c, step)
    for (n, a), b in zip(fam_a.model.state_dict().items(), fam_c.model.state_dict().values()):
        assert torch.equal(a, b), f"{family}/{policy}: {n} differs after resume"
