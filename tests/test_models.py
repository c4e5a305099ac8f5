"""Tests for freezelab.models: registry, activations, seed-exact MLPs, every model family."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from freezelab import groups
from freezelab.models import (
    ACTIVATIONS,
    MLP,
    build_model,
    example_input,
    list_models,
    make_activation,
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
}


def test_list_models_names_every_preset_with_a_description() -> None:
    models = list_models()
    assert set(FAMILIES) | {"vit_s16"} <= set(models)
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


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_builds_runs_and_names_its_head_and_hidden_units(name: str) -> None:
    kwargs, input_shape = FAMILIES[name]
    model = build_model(name, **kwargs).eval()
    x = example_input(model, input_shape, batch=3)
    out = model(x)
    head = model.get_submodule(groups.find_head(model, x))
    assert isinstance(head, nn.Linear)
    assert out.shape == (3, head.out_features)
    assert out.shape[1] == kwargs.get("num_classes", 10)
    assert model.hidden_activation_names
    for hidden in model.hidden_activation_names:
        model.get_submodule(hidden)


def test_vit_without_timm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImportError, match="pip install timm"):
        build_model("vit_s16")


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
