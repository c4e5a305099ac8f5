"""Tests for freezelab.pretrained: local checkpoints through model_args, and LoRA wrapping with its groups."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from torch import nn

from freezelab import groups
from freezelab.config import ConfigError
from freezelab.models import build_model
from freezelab.pretrained import (
    RUN_CHECKPOINT,
    LoraSpec,
    load_checkpoint,
    prepare,
    read_state_dict,
    split_model_args,
    wrap_lora,
)
from freezelab.run import build_run, train
from freezelab.run import record as run_folder

from conftest import data_root

IMAGES = torch.randn(2, 3, 32, 32)
TINY = {"dataset": "digits", "epochs": 1, "batch_size": 64, "model_args": {"hidden": [16]}, "device": "cpu",
        "grad_stats": False}
LORA = {"r": 4, "alpha": 8, "targets": ["qkv", "proj", "fc1", "fc2"], "dropout": 0.0}


def equal_except(a: dict, b: dict, skip: set[str]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a if k not in skip)


def fresh(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **kwargs)


# -- reading checkpoints ------------------------------------------------------------------------
def test_the_run_folder_checkpoint_name_is_records():
    assert RUN_CHECKPOINT == run_folder.CHECKPOINT


def test_a_timm_state_dict_loads_and_a_head_of_another_size_keeps_its_init(tmp_path, caplog):
    pytest.importorskip("timm")
    source = fresh("vit_tiny32", seed=1, num_classes=100)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    model = fresh("vit_tiny32", seed=2)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="freezelab.models"):
        kept = load_checkpoint(model, tmp_path / "vit.pth", example_input=IMAGES)
    assert kept == ["head.weight", "head.bias"]
    assert equal_except(model.state_dict(), source.state_dict(), {"head.weight", "head.bias"})
    assert torch.equal(model.head.weight, init["head.weight"])  # the fresh (seeded) head, not the file's
    assert [r.message for r in caplog.records if "kept at their fresh init" in r.message]


def test_an_imagenet21k_shaped_vit_s16_file_loads_into_vit_s16_and_takes_deep_lora(tmp_path):
    """A user's ImageNet-21k ViT-S/16 (timm's vit_small_patch16_224 layout, 21,843-class head, as safetensors):
    every backbone tensor loads, the 10-class head keeps its seeded init, and seed 002's LoRA wraps the result."""
    timm = pytest.importorskip("timm")
    safetensors = pytest.importorskip("safetensors.torch")
    pytest.importorskip("peft")
    torch.manual_seed(1)
    source = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=21843)
    safetensors.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    images = torch.randn(2, 3, 224, 224)
    _, pretrained = split_model_args({"checkpoint": str(tmp_path / "model.safetensors"), "lora": LORA})
    model = prepare(fresh("vit_s16", seed=2), pretrained, name="vit_s16", example_input=images)
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in model.state_dict().items()
            if "lora_" not in k and "modules_to_save" not in k}
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(base[k], v) for k, v in backbone.items())
    assert model.base_model.model.head.original_module.weight.shape == (10, 384)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n} == {"qkv", "proj", "fc1", "fc2"}
    assert model(images).shape == (2, 10)


def test_training_checkpoints_and_safetensors_give_the_same_weights(tmp_path):
    pytest.importorskip("timm")
    safetensors = pytest.importorskip("safetensors.torch")
    state = fresh("vit_tiny32", seed=1).state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "train.pth.tar")
    safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vit.safetensors"))
    for file in ("train.pth.tar", "vit.safetensors"):
        read = read_state_dict(tmp_path / file)
        assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)


def test_a_torchvision_state_dict_with_1000_classes_loads_into_cifar_resnet18(tmp_path):
    from torchvision.models import resnet18

    source = resnet18(num_classes=1000)
    source.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # torchvision's layout with the CIFAR stem
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = fresh("cifar_resnet18")
    init_head = model.fc.weight.clone()
    assert load_checkpoint(model, tmp_path / "resnet18.pth", name="cifar_resnet18", example_input=IMAGES) == [
        "fc.weight", "fc.bias"]
    assert equal_except(model.state_dict(), source.state_dict(), {"fc.weight", "fc.bias"})
    assert torch.equal(model.fc.weight, init_head) and model(IMAGES).shape == (2, 10)


def test_an_imagenet_stem_is_a_mismatch_unless_reinit_names_it(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18(num_classes=1000).state_dict(), tmp_path / "imagenet.pth")
    with pytest.raises(ConfigError, match=r"does not fit model 'cifar_resnet18'.*conv1\.weight: \(64, 3, 7, 7\)"
                                          r".*model_args\.reinit") as error:
        load_checkpoint(fresh("cifar_resnet18"), tmp_path / "imagenet.pth", name="cifar_resnet18")
    assert "\n" not in str(error.value)
    model = fresh("cifar_resnet18")
    kept = load_checkpoint(model, tmp_path / "imagenet.pth", reinit=["conv1"], example_input=IMAGES)
    assert kept == ["conv1.weight", "fc.weight", "fc.bias"]


def test_another_architecture_names_the_first_keys_and_the_fix(tmp_path):
    torch.save(fresh("small_cnn").state_dict(), tmp_path / "cnn.pth")
    with pytest.raises(ConfigError, match=r"cnn\.pth does not fit model 'cifar_resnet18' \(\d+ mismatches: .*"
                                          r"use the model it was trained as") as error:
        load_checkpoint(fresh("cifar_resnet18"), tmp_path / "cnn.pth", name="cifar_resnet18", example_input=IMAGES)
    assert "\n" not in str(error.value) and "..." in str(error.value)


@pytest.mark.parametrize("make, message", [
    (lambda p: p, r"missing\.pth does not exist; give the path"),
    (lambda p: p.parent, r"is a folder without checkpoint\.pt"),
    (lambda p: (p.write_bytes(b"not a pickle"), p)[1], r"is not a weights-only torch checkpoint"),
    (lambda p: (torch.save({"epoch": 1}, p), p)[1], r"holds no state dict \(keys \['epoch'\]\)"),
])
def test_bad_checkpoint_files_are_one_line_errors(tmp_path, make, message):
    path = make(tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match=message) as error:
        read_state_dict(path)
    assert "\n" not in str(error.value)


def test_a_numpy_checkpoint_goes_through_timm_and_fits_only_timm_vits(tmp_path):
    pytest.importorskip("timm")
    np.savez(tmp_path / "other.npz", **{"some/kernel": np.zeros((2, 2), np.float32)})
    with pytest.raises(ConfigError, match=r"only timm models with load_pretrained"):
        load_checkpoint(fresh("cifar_resnet18"), tmp_path / "other.npz", name="cifar_resnet18")
    with pytest.raises(ConfigError, match=r"other\.npz does not fit model 'vit_tiny32' \(ValueError: .*JAX"):
        load_checkpoint(fresh("vit_tiny32"), tmp_path / "other.npz", name="vit_tiny32")


def test_a_freezelab_run_folder_starts_a_new_run(tmp_path):
    first = tmp_path / "first"
    train({**TINY, "seed": 3}, first, progress=False)
    saved = run_folder.load_checkpoint(first)["model"]
    run = build_run({**TINY, "seed": 4, "model_args": {"hidden": [16], "checkpoint": str(first)}})
    assert all(torch.equal(run.model.state_dict()[k], saved[k]) for k in saved)
    assert not torch.equal(build_run({**TINY, "seed": 4}).model.fc1.weight, saved["fc1.weight"])


def test_a_missing_checkpoint_fails_when_the_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"nowhere\.pth does not exist"):
        build_run({**TINY, "model_args": {"checkpoint": str(tmp_path / "nowhere.pth")}})


@pytest.mark.parametrize("args, message", [
    ({"lora": {"rank": 8}}, r"unknown model_args\.lora option 'rank'"),
    ({"lora": {"r": 0}}, r"r must be a whole number >= 1"),
    ({"lora": {"targets": []}}, r"targets must be module names"),
    ({"lora": {"targets": 3}}, r"targets must be module names"),
    ({"lora": "yes"}, r"lora must be a mapping"),
    ({"reinit": ["conv1"]}, r"add model_args\.checkpoint"),
    ({"checkpoint": 3}, r"checkpoint must be a file path"),
])
def test_bad_model_args_are_config_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        split_model_args(args)


def test_split_model_args_leaves_the_builders_arguments():
    builder, pretrained = split_model_args({"hidden": [8], "lora": {"targets": "blocks.*qkv"}})
    assert builder == {"hidden": [8]} and pretrained.lora == LoraSpec(targets="blocks.*qkv")
    assert pretrained.checkpoint is None and pretrained.reinit == ()


# -- LoRA -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_vit() -> nn.Module:
    pytest.importorskip("peft")
    pytest.importorskip("timm")
    return wrap_lora(fresh("vit_tiny32"), LoraSpec.from_dict(LORA), example_input=IMAGES)


def test_lora_freezes_the_base_and_trains_adapters_norms_and_the_head(lora_vit):
    trainable = {n for n, p in lora_vit.named_parameters() if p.requires_grad}
    kinds = {"lora" if "lora_" in n else "head" if ".modules_to_save." in n else "norm" for n in trainable}
    assert kinds == {"lora", "norm", "head"}
    norms = {n for n, m in lora_vit.named_modules() if isinstance(m, nn.LayerNorm)}
    assert {f"{m}.{w}" for m in norms for w in ("weight", "bias")} <= trainable
    assert not any(p.requires_grad for n, p in lora_vit.named_parameters() if ".original_module." in n)
    gs = groups.from_spec(lora_vit, {"by": "kind", "kinds": ["lora", "norm", "head"]}, example_input=IMAGES)
    assert gs.names == ("norm", "lora", "head") and gs.always_trainable == ("head",)
    assert set(gs.unmanaged) == {n for n, p in lora_vit.named_parameters() if not p.requires_grad}
    assert lora_vit(IMAGES).shape == (2, 10)


def test_plain_lora_leaves_the_norms_frozen():
    pytest.importorskip("peft")
    model = wrap_lora(fresh("vit_tiny32"), LoraSpec.from_dict({**LORA, "norms": False}), example_input=IMAGES)
    with pytest.raises(groups.GroupError, match="kind 'norm' matches only frozen parameters"):
        groups.kind(model, ["lora", "norm", "head"], example_input=IMAGES)
    assert groups.kind(model, ["lora", "head"], example_input=IMAGES).names == ("lora", "head")


def test_lora_targets_that_match_nothing_are_a_config_error():
    pytest.importorskip("peft")
    with pytest.raises(ConfigError, match=r"model_args\.lora\.targets \['attention'\] do not fit VisionTransformer"):
        wrap_lora(fresh("vit_tiny32"), LoraSpec(targets=("attention",)), example_input=IMAGES)


@pytest.mark.slow
@pytest.mark.skipif(data_root() is None, reason="needs FREEZELAB_DATA with CIFAR-10")
def test_a_lora_run_alternating_norm_and_lora_per_batch_leaves_the_base_bit_identical():
    pytest.importorskip("peft")
    from freezelab.data import load_dataset
    from freezelab.run.loop import Training, run_training

    cfg = {"model": "vit_tiny32", "model_args": {"lora": LORA}, "groups": {"by": "kind", "kinds": ["lora", "norm", "head"]},
           "schedule": {"name": "alternate", "unit": "batch", "groups": ["norm", "lora"]}, "dataset": "cifar10",
           "data_root": data_root(), "subset": 256, "epochs": 1, "batch_size": 64, "device": "cpu", "grad_stats": False}
    data = load_dataset("cifar10", root=data_root(), subset=256, flatten=False)
    # Evaluating a ViT on all 15k val + test images would take minutes on two cores: 128 of each.
    data = dataclasses.replace(data, val=data.val[:128], test=data.test[:128])
    training = Training(cfg, None, data=data, progress=False)
    model, gs = training.run.model, training.run.groups
    assert gs.names == ("norm", "lora", "head")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    run_training(training)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert set(gs.unmanaged) and not changed & set(gs.unmanaged)  # the frozen base: bit-identical
    for name in gs.names:  # 4 batches alternating norm/lora: every group trained
        assert changed & set(gs[name].param_names), name
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in set(gs.unmanaged))


def test_a_damaged_freezelab_checkpoint_is_refused_by_name(tmp_path):
    first = tmp_path / "first"
    train({**TINY, "seed": 3}, first, progress=False)
    path = first / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one garbled byte near the end of the payload
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"checkpoint\.pt fails its SHA-256 check"):
        build_run({**TINY, "model_args": {"hidden": [16], "checkpoint": str(path)}})
