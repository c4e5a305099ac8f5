"""Tests for freezelab.models: registry, activations, seed-exact MLPs, every model family."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from freezelab import groups
from freezelab.models import (
    ACTIVATIONS,
    DEFAULT_GROUPS,
    MLP,
    build_model,
    example_input,
    list_models,
    make_activation,
    model_info,
    model_options,
    register_model,
)

# name -> (builder kwargs, input shape without batch); small inputs keep the file fast.
FAMILIES = {
    "mlp": ({"in_features": 64, "hidden": [32, 16], "num_classes": 10}, (64,)),
    "seed000_mlp": ({}, (3, 32, 32)),
    "seed001_mlp": ({}, (1, 28, 28)),
    "fashion_mlp": ({"activation": "gelu"}, (1, 28, 28)),
    "small_cnn": ({"in_channels": 1, "num_classes": 7}, (1, 28, 28)),
    "resnet18": ({"in_channels": 1, "num_classes": 100}, (1, 32, 32)),
    "cifar_resnet18": ({}, (3, 32, 32)),
    "vit_tiny32": ({}, (3, 32, 32)),
}
NEEDS_TIMM = {"vit_s16", "vit_tiny32"}
#: What every registered model declares: (takes images, input size, first default group names).
INFO = {
    "mlp": (False, None, ("first", "second")),
    "seed000_mlp": (False, None, ("first", "second")),
    "seed001_mlp": (False, None, ("first", "second")),
    "fashion_mlp": (False, None, ("first", "second")),
    "small_cnn": (True, None, ("block0", "block1", "block2")),
    "resnet18": (True, None, ("stem", "layer1", "layer2", "layer3", "layer4", "head")),
    "cifar_resnet18": (True, None, ("stem", "layer1", "layer2", "layer3", "layer4", "head")),
    "vit_s16": (True, 224, ("rest", "norm", "head")),
    "vit_tiny32": (True, None, ("rest", "norm", "head")),
}


def test_list_models_names_every_preset_with_a_description() -> None:
    models = list_models()
    assert set(models) == set(INFO)
    assert all(description and "\n" not in description for description in models.values())


def test_unknown_model_error_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="seed000_mlp"):
        build_model("no_such_model")


def test_model_options_name_each_builders_arguments() -> None:
    assert model_options("seed000_mlp") == {"in_features": 3072, "num_classes": 10, "dropout": 0.2}
    assert "activation" in model_options("mlp") and "activation" not in model_options("seed001_mlp")
    assert {"in_channels", "num_classes"} <= set(model_options("resnet18"))
    with pytest.raises(ValueError, match="fashion_mlp"):
        model_options("no_such_model")


def test_registering_a_taken_name_fails() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(lambda: nn.Linear(1, 1))


@pytest.mark.parametrize("name", sorted(INFO))
def test_every_model_declares_images_input_size_and_default_groups_that_build(name: str) -> None:
    if name in NEEDS_TIMM:
        pytest.importorskip("timm")
    info = model_info(name)
    images, size, group_names = INFO[name]
    assert (info.name, info.images, info.input_size) == (name, images, size)
    assert info.description == list_models()[name]
    kwargs, shape = FAMILIES.get(name, ({}, (3, size, size)))
    model = build_model(name, **kwargs)
    x = example_input(model, shape, batch=1 if size else 2)
    gs = groups.from_spec(model, info.groups, example_input=x)
    assert gs.names == group_names
    assert not gs.unmanaged  # the default groups manage every parameter of the bare model
    if "head" in gs:
        assert gs.always_trainable == ("head",) and gs["head"].param_names[0].startswith(groups.find_head(model, x))


def test_model_info_hands_out_copies_and_defaults_to_the_seeds_halves() -> None:
    info = model_info("vit_tiny32")
    info.groups["kinds"].append("lora")
    assert model_info("vit_tiny32").groups["kinds"] == ["norm", "head"]
    assert model_info("mlp").groups == DEFAULT_GROUPS == {"by": "depth", "blocks": 2}
    with pytest.raises(ValueError, match="unknown model 'nope'.*seed000_mlp"):
        model_info("nope")
    with pytest.raises(ValueError, match="only image models have one"):
        register_model("flat_with_size", input_size=32)


def test_cifar_resnet18_is_torchvisions_resnet18_with_a_cifar_stem() -> None:
    from torchvision.models import resnet18

    model = build_model("cifar_resnet18")
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the CIFAR ResNet-18 of the literature
    conv = model.conv1
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1)) and isinstance(model.maxpool, nn.Identity)
    reference = resnet18(num_classes=10).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items() if k != "conv1.weight"} == {
        k: v.shape for k, v in reference.items() if k != "conv1.weight"}
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.hidden_activation_names == ["layer1", "layer2", "layer3", "layer4"]


def test_vit_tiny32_is_a_patch4_width192_depth6_vit() -> None:
    pytest.importorskip("timm")
    model = build_model("vit_tiny32")
    d, tokens, hidden = 192, (32 // 4) ** 2 + 1, 4 * 192
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    expected = (4 * 4 * 3 * d + d) + d + tokens * d + 6 * block + 2 * d + (d * 10 + 10)
    assert sum(p.numel() for p in model.parameters()) == expected == 2_693_578
    assert (len(model.blocks), model.blocks[0].attn.num_heads, model.pos_embed.shape[1]) == (6, 3, tokens)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_s16_takes_224_px() -> None:
    pytest.importorskip("timm")
    model = build_model("vit_s16").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)
    assert model.patch_embed.img_size == (224, 224)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_builds_runs_and_names_its_head_and_hidden_units(name: str) -> None:
    if name in NEEDS_TIMM:
        pytest.importorskip("timm")
    kwargs, input_shape = FAMILIES[name]
    model = build_model(name, **kwargs).eval()
    x = example_input(model, input_shape, batch=3)
    out = model(x)
    head = model.get_submodule(groups.find_head(model, x))
    assert isinstance(head, nn.Linear)
    assert out.shape == (3, head.out_features)
    assert out.shape[1] == kwargs.get("num_classes", 10)
    assert model.hidden_activation_names or name in NEEDS_TIMM  # ViTs have no ReLU units
    for hidden in model.hidden_activation_names:
        model.get_submodule(hidden)


@pytest.mark.parametrize("name", sorted(NEEDS_TIMM))
def test_vit_without_timm_says_how_to_install(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImportError, match=f"{name} needs timm: pip install timm"):
        build_model(name)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_make_activation_gives_a_fresh_module_each_call(name: str) -> None:
    first, second = make_activation(name), make_activation(name)
    assert isinstance(first, nn.Module) and first is not second


def test_activation_choices_match_seed_004() -> None:
    assert make_activation("leaky_relu").negative_slope == 0.1
    assert isinstance(make_activation("elu"), nn.ELU)
    with pytest.raises(ValueError, match="relu"):
        make_activation("swish")


def test_fashion_mlp_matches_seed_004() -> None:
    model = build_model("fashion_mlp", activation="tanh")
    assert sum(p.numel() for p in model.parameters()) == 235_146
    assert [n for n, _ in model.named_parameters()] == [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias",
    ]
    assert isinstance(model.act1, nn.Tanh) and isinstance(model.act2, nn.Tanh)
    assert model.hidden_activation_names == ["act1", "act2"] and groups.find_head(model) == "fc3"


def test_seed001_mlp_matches_seed_001() -> None:
    model = build_model("seed001_mlp")
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {
        "fc1.weight": (256, 784), "fc1.bias": (256,),
        "fc2.weight": (256, 256), "fc2.bias": (256,),
        "fc3.weight": (256, 256), "fc3.bias": (256,),
        "fc4.weight": (10, 256), "fc4.bias": (10,),
    }
    assert all(isinstance(model.get_submodule(f"act{i}"), nn.ReLU) for i in (1, 2, 3))


def test_seed000_mlp_matches_seed_000() -> None:
    model = build_model("seed000_mlp")
    assert [n for n, _ in model.named_parameters()] == [
        "fc1.weight", "fc1.bias", "norm1.weight", "norm1.bias",
        "fc2.weight", "fc2.bias", "norm2.weight", "norm2.bias",
        "fc3.weight", "fc3.bias",
    ]
    assert model.fc1.in_features == 3072 and model.fc2.out_features == 512
    assert isinstance(model.norm1, nn.BatchNorm1d)
    assert model.drop1.p == 0.2 and groups.find_head(model) == "fc3"


def test_mlp_forward_order_is_fc_norm_act_dropout_per_layer() -> None:
    model = MLP(12, [8, 6], 3, activation="relu", norm="layer", dropout=0.1)
    order: list[str] = []
    for name, module in model.named_children():
        module.register_forward_hook(lambda *_, name=name: order.append(name))
    model(example_input(model, (3, 2, 2)))
    assert order == [
        "flatten",
        "fc1", "norm1", "act1", "drop1",
        "fc2", "norm2", "act2", "drop2",
        "fc3",
    ]
    assert isinstance(model.norm1, nn.LayerNorm)


def test_mlp_without_norm_or_dropout_has_no_such_modules() -> None:
    model = MLP(4, [3], 2)
    assert [name for name, _ in model.named_children()] == ["flatten", "fc1", "act1", "fc2"]


@pytest.mark.parametrize("bad", [{"norm": "group"}, {"dropout": 1.0}, {"dropout": -0.1}])
def test_mlp_rejects_bad_options(bad: dict) -> None:
    with pytest.raises(ValueError):
        MLP(4, [3], 2, **bad)


def test_mlp_adapts_to_the_digits_dataset() -> None:
    model = build_model("seed001_mlp", in_features=64, num_classes=10)
    assert model(torch.randn(5, 64)).shape == (5, 10)


def test_example_input_follows_model_device_and_dtype() -> None:
    model = build_model("mlp", in_features=6, hidden=[4], num_classes=2).double()
    x = example_input(model, (6,), batch=4)
    assert x.shape == (4, 6) and x.dtype == torch.float64
    assert example_input(nn.Flatten(), (2, 2)).shape == (2, 2, 2)
