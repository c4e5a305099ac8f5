"""Frozen LoRA merged into the base weight: the same function, the LoRA branch skipped, weights restored exactly.

The oracle for every training comparison is the same run with ``merge_lora=False``: peft's own
unmerged forward. What must be bit-identical (the base weight after every thaw, the LoRA weights
while frozen, checkpoints) is compared with ``torch.equal``; what only rounds differently (the
trained weights of a merged run against an unmerged one) within the tolerance stated here.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from freezelab import Freezer, groups
from freezelab.freezer import FreezerError
from freezelab.config import ConfigError
from freezelab.lora_merge import LoraMerge, lora_layers, why_not_mergeable
from freezelab.schedules import Alternate, Clock

peft = pytest.importorskip("peft")

#: How far a merged run's trained weights may be from the unmerged run's after the 24 AdamW
#: steps below (float32 on the CPU): ``(W + sBA)x`` and ``Wx + sB(Ax)`` round differently.
TOLERANCE = 1e-5
SPE, EPOCHS = 6, 4  # 24 steps, alternating every 3 batches: 4 LoRA-frozen phases, 4 thaws


class Net(nn.Module):
    """A small MLP with LayerNorms and a head: LoRA on the two hidden Linears."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.norm1 = nn.Linear(12, 32), nn.LayerNorm(32)
        self.fc2, self.norm2 = nn.Linear(32, 32), nn.LayerNorm(32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.fc1(x)))
        return self.head(torch.relu(self.norm2(self.fc2(x))))


def lora_net(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["fc1", "fc2"], lora_dropout=dropout, modules_to_save=["head"])
    model = peft.get_peft_model(Net(), config)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            for p in m.parameters():
                p.requires_grad_(True)
    for m in model.modules():  # peft starts B at zero: give the adapters a product worth merging
        if hasattr(m, "lora_B") and len(m.lora_B):
            nn.init.normal_(m.lora_B["default"].weight, std=0.2)
    return model


def base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.get_base_layer().weight for name, m in lora_layers(model)}


def lora_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def freezer_for(model: nn.Module, merge: bool) -> Freezer:
    gs = groups.kind(model, ("lora", "norm", "head"), rest=None)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    # LoRA-first, as seed 002 names it: LoRA frozen (merged) first, every 3 batches.
    return Freezer(model, gs, Alternate(("norm", "lora"), every=3, unit="batch", first="norm"), opt, merge_lora=merge)


def batches(n: int = SPE * EPOCHS):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 12, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def train(model: nn.Module, fz: Freezer, data, on_step=None) -> None:
    for step, (x, y) in enumerate(data):
        fz.step(Clock.at(step, SPE, EPOCHS))
        if on_step is not None:
            on_step(step)
        nn.functional.cross_entropy(model(x), y).backward()
        fz.optimizer.step()
        fz.optimizer.zero_grad(set_to_none=True)


def test_a_merged_layer_computes_the_same_function_without_the_lora_branch():
    model = lora_net()
    x = torch.randn(8, 12)
    expected = model(x)
    calls = []
    for _, m in lora_layers(model):
        m.lora_A["default"].register_forward_hook(lambda *_: calls.append(1))
    for p in lora_weights(model).values():
        p.requires_grad_(False)
    merge = LoraMerge(model)
    merge.sync()
    assert merge.merged_count == 2 and all(m.merged for _, m in lora_layers(model))
    calls.clear()
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-6)
    assert calls == []  # the adapters' products never ran
    for p in lora_weights(model).values():
        p.requires_grad_(True)
    merge.sync()
    assert merge.merged_count == 0 and model(x) is not None and len(calls) == 2


def test_a_vit_with_deep_lora_merges_every_target_and_keeps_its_outputs():
    pytest.importorskip("timm")
    from freezelab.models import build_model
    from freezelab.pretrained import LoraSpec, wrap_lora

    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    model = wrap_lora(build_model("vit_tiny32"), LoraSpec(r=4, alpha=8, targets=("qkv", "proj", "fc1", "fc2")),
                      example_input=images).eval()
    for _, m in lora_layers(model):
        nn.init.normal_(m.lora_B["default"].weight, std=0.05)
    expected = model(images)
    for p in lora_weights(model).values():
        p.requires_grad_(False)
    merge = LoraMerge(model)
    merge.sync()
    assert merge.merged_count == len(lora_layers(model)) > 20  # 6 blocks x (qkv, proj, fc1, fc2) + the patch embedding
    torch.testing.assert_close(model(images), expected, rtol=0, atol=1e-5)


def test_alternating_with_merging_restores_the_base_exactly_and_never_moves_frozen_lora():
    model = lora_net()
    fz = freezer_for(model, merge=True)
    original = {n: w.detach().clone() for n, w in base_weights(model).items()}
    frozen_lora: dict[str, torch.Tensor] = {}
    merged_steps = []

    def check(step: int) -> None:
        lora_frozen = not any(p.requires_grad for p in lora_weights(model).values())
        assert fz.lora_merge.merged_count == (2 if lora_frozen else 0)
        if lora_frozen:
            merged_steps.append(step)
            if not frozen_lora:
                frozen_lora.update({n: p.detach().clone() for n, p in lora_weights(model).items()})
            for n, p in lora_weights(model).items():
                assert torch.equal(p, frozen_lora[n]), (step, n)  # bit-identical while frozen
        else:
            frozen_lora.clear()
            for n, w in base_weights(model).items():
                assert torch.equal(w, original[n]), (step, n)  # restored exactly at every thaw

    train(model, fz, batches(), check)
    assert merged_steps[:3] == [0, 1, 2] and len(merged_steps) == 12


def test_a_merged_run_ends_within_tolerance_of_the_unmerged_one():
    data = batches()
    runs = {}
    for merge in (False, True):
        model = lora_net()
        fz = freezer_for(model, merge)
        train(model, fz, data)
        if fz.lora_merge is not None:
            fz.lora_merge.unmerge_all()
        runs[merge] = dict(model.named_parameters())
    worst = max((runs[True][n] - runs[False][n]).abs().max().item() for n in runs[False])
    assert 0 < worst <= TOLERANCE  # not bit-identical (the rounding differs), but within the stated tolerance
    for n in base_weights(lora_net()):  # the frozen base itself: bit-identical
        key = f"{n}.base_layer.weight"
        assert torch.equal(runs[True][key], runs[False][key])


def test_a_checkpoint_taken_while_merged_holds_the_unmerged_weights_and_resumes_bit_identical():
    data = batches()
    reference = lora_net()
    train(reference, freezer_for(reference, merge=True), data)

    model = lora_net()
    fz = freezer_for(model, merge=True)
    train(model, fz, data[:7])  # step 6 froze LoRA again: merged now
    assert fz.lora_merge.merged_count == 2
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(fz.optimizer.state_dict())
    unmerged = lora_net()
    for n, w in base_weights(unmerged).items():
        assert torch.equal(saved_model[f"{n}.base_layer.weight"], w)  # the base as it was built, not the merged one

    resumed = lora_net(seed=5)  # other weights: everything must come from the checkpoint
    fz2 = freezer_for(resumed, merge=True)
    resumed.load_state_dict(saved_model)
    fz2.optimizer.load_state_dict(saved_opt)
    for step, (x, y) in enumerate(data[7:], start=7):
        fz2.step(Clock.at(step, SPE, EPOCHS))
        nn.functional.cross_entropy(resumed(x), y).backward()
        fz2.optimizer.step()
        fz2.optimizer.zero_grad(set_to_none=True)
    for (n, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n


def test_loading_into_a_merged_model_unmerges_it_and_the_next_step_merges_the_loaded_weights():
    model = lora_net()
    fz = freezer_for(model, merge=True)
    fz.step(Clock.at(0, SPE, EPOCHS))
    assert fz.lora_merge.merged_count == 2
    other = lora_net(seed=3)
    model.load_state_dict(other.state_dict())
    assert fz.lora_merge.merged_count == 0
    for n, w in base_weights(model).items():
        assert torch.equal(w, base_weights(other)[n])
    fz.step(Clock.at(1, SPE, EPOCHS))
    assert fz.lora_merge.merged_count == 2
    x = torch.randn(4, 12)
    torch.testing.assert_close(model(x), other(x), rtol=0, atol=1e-6)


def test_unmerged_gives_the_lora_branch_back_for_a_probe_and_merges_again_after():
    model = lora_net()
    fz = freezer_for(model, merge=True)
    fz.step(Clock.at(0, SPE, EPOCHS))
    with fz.unmerged_lora():
        assert fz.lora_merge.merged_count == 0
        for p in lora_weights(model).values():
            p.requires_grad_(True)
        nn.functional.cross_entropy(model(torch.randn(4, 12)), torch.tensor([0, 1, 2, 0])).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_weights(model).values())
        for p in lora_weights(model).values():
            p.requires_grad_(False)
            p.grad = None
    assert fz.lora_merge.merged_count == 2


def test_detach_gives_back_the_unmerged_model():
    model = lora_net()
    fz = freezer_for(model, merge=True)
    original = {n: w.detach().clone() for n, w in base_weights(model).items()}
    fz.step(Clock.at(0, SPE, EPOCHS))
    fz.detach()
    assert not any(m.merged for _, m in lora_layers(model))
    assert all(torch.equal(w, original[n]) for n, w in base_weights(model).items())


def test_what_cannot_merge_says_why():
    assert why_not_mergeable(Net()) == "the model has no peft LoRA layer"
    assert "LoRA dropout" in why_not_mergeable(lora_net(dropout=0.1))
    model = lora_net()
    model.base_model.model.fc1.base_layer.weight.requires_grad_(True)
    assert "base weight trains" in why_not_mergeable(model)
    with pytest.raises(ValueError, match="cannot merge frozen LoRA adapters: .*LoRA dropout"):
        LoraMerge(lora_net(dropout=0.1))
    with pytest.raises(FreezerError, match="LoRA dropout.*; pass merge_lora=False"):
        freezer_for(lora_net(dropout=0.1), merge=True)


def test_the_run_config_decides_merging_and_refuses_on_where_it_cannot():
    from freezelab.config import RunConfig
    from freezelab.run.plan import lora_merge_choice

    assert lora_merge_choice(RunConfig(), lora_net()) == (True, "merge_frozen_lora: auto, plain LoRA adapters merge exactly")
    assert lora_merge_choice(RunConfig(merge_frozen_lora="off"), lora_net()) == (False, "merge_frozen_lora: off")
    assert lora_merge_choice(RunConfig(), lora_net(dropout=0.1))[0] is False
    with pytest.raises(ConfigError, match="merge_frozen_lora: on cannot be used here: .*LoRA dropout.*; use merge_frozen_lora: auto or off"):
        lora_merge_choice(RunConfig(merge_frozen_lora="on"), lora_net(dropout=0.1))
    with pytest.raises(ConfigError, match="merge_frozen_lora must be auto, on or off"):
        RunConfig.from_dict({"merge_frozen_lora": "yes"})


@pytest.mark.slow
def test_a_lora_run_merges_and_measures_interference_as_the_unmerged_run():
    """A ViT LoRA run alternating every 3 batches, with and without merging: the probe sees LoRA's branch."""
    import dataclasses

    from conftest import data_root
    from freezelab.data import load_dataset
    from freezelab.run.loop import Training, run_training

    if data_root() is None:
        pytest.skip("needs FREEZELAB_DATA with CIFAR-10")
    pytest.importorskip("timm")
    cfg = {"dataset": "cifar10", "data_root": data_root(), "model": "vit_tiny32", "subset": 128, "epochs": 2,
           "batch_size": 32, "device": "cpu", "interference": ["lora", "norm"],
           "model_args": {"lora": {"r": 4, "alpha": 8, "targets": ["qkv", "proj", "fc1", "fc2"]}},
           "groups": {"by": "kind", "kinds": ["lora", "norm", "head"]},
           "schedule": {"name": "alternate", "groups": ["norm", "lora"], "first": "norm", "every": 3, "unit": "batch"}}
    data = load_dataset("cifar10", root=data_root(), subset=128, flatten=False)
    data = dataclasses.replace(data, val=data.val[:64], test=data.test[:64])
    results = {}
    for mode in ("off", "auto"):
        training = Training({**cfg, "merge_frozen_lora": mode}, None, data=data, progress=False)
        assert training.run.plan.merge_lora == (mode == "auto")
        results[mode] = run_training(training)
    off, on = results["off"], results["auto"]
    for column in ("grad_cosine", "interference_loss", "val_loss"):
        assert on.epochs[column].tolist() == pytest.approx(off.epochs[column].tolist(), rel=1e-4), column
    assert not any(m.merged for _, m in lora_layers(on.model))  # the run hands back the model's own weights
    params_off = dict(off.model.named_parameters())
    worst = max((p - params_off[n]).abs().max().item() for n, p in on.model.named_parameters())
    assert worst <= TOLERANCE


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device machine)")
@pytest.mark.parametrize("compile_", ["off", "auto"])
def test_the_graph_path_with_merged_lora_trains_like_the_eager_unmerged_reference(compile_):
    """CUDA graphs per trainable set over a merged/unmerged ViT: the eager, unmerged loop is the reference."""
    import dataclasses

    from conftest import data_root
    from freezelab.data import load_dataset
    from freezelab.run.loop import Training, run_training

    if data_root() is None:
        pytest.skip("needs FREEZELAB_DATA with CIFAR-10")
    pytest.importorskip("timm")
    cfg = {"dataset": "cifar10", "data_root": data_root(), "model": "vit_tiny32", "subset": 512, "epochs": 2,
           "batch_size": 64, "device": "cuda", "precision": "fp32", "grad_stats": False, "compile": compile_,
           "model_args": {"lora": {"r": 4, "alpha": 8, "targets": ["qkv", "proj", "fc1", "fc2"]}},
           "groups": {"by": "kind", "kinds": ["lora", "norm", "head"]},
           "schedule": {"name": "alternate", "groups": ["norm", "lora"], "first": "norm", "every": 3, "unit": "batch"}}
    data = load_dataset("cifar10", root=data_root(), subset=512, flatten=False, device="cuda")
    data = dataclasses.replace(data, val=data.val[:256], test=data.test[:256])
    fast = Training({**cfg, "fast": "graph"}, None, data=data, progress=False)
    ref = Training({**cfg, "fast": "off", "merge_frozen_lora": "off"}, None, data=data, progress=False)
    assert fast.run.plan.stepper == "graph" and fast.run.plan.merge_lora and not ref.run.plan.merge_lora
    base = {n: p.detach().clone() for n, p in fast.run.model.named_parameters() if not p.requires_grad}
    fast_result, ref_result = run_training(fast), run_training(ref)
    torch.testing.assert_close(torch.tensor(fast_result.epochs["train_loss"].tolist()),
                               torch.tensor(ref_result.epochs["train_loss"].tolist()), rtol=1e-4, atol=1e-5)
    ref_params = dict(ref_result.model.named_parameters())
    for n, p in fast_result.model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n  # the frozen base: restored exactly after every merge
        else:
            torch.testing.assert_close(p, ref_params[n], rtol=1e-3, atol=1e-4, msg=n)
    sets = fast_result.summary["trainable_sets"]
    assert set(sets) == {"head+norm", "head+lora"}
