"""How a run reads its model from the registry: flattening, default groups, input size, LoRA's default."""

from __future__ import annotations

import pytest
import torch

from freezelab.config import ConfigError, RunConfig
from freezelab.run import build_run
from freezelab.run.build import LORA_GROUPS, data_request, groups_spec, input_size

DIGITS = {"dataset": "digits", "epochs": 1, "device": "cpu"}


def test_groups_left_unset_are_the_models_default_and_the_folder_records_them():
    assert RunConfig().groups is None
    run = build_run({**DIGITS, "model_args": {"hidden": [16, 16]}})
    assert run.groups.names == ("first", "second")  # the MLPs' halves, as before the registry had defaults
    assert run.config.groups == {"by": "depth", "blocks": 2}
    cnn = build_run({**DIGITS, "model": "small_cnn"})
    assert cnn.groups.names == ("block0", "block1", "block2") and cnn.config.groups == {"by": "depth", "blocks": 3}
    assert build_run({**DIGITS, "model": "small_cnn", "groups": {"by": "layers"}}).groups.names[0] == "conv1"


def test_images_or_flat_inputs_follow_the_registry():
    for model, flat in (("mlp", True), ("seed001_mlp", True), ("small_cnn", False), ("cifar_resnet18", False)):
        assert data_request(RunConfig(model=model), torch.device("cpu"))["flatten"] is flat, model
    assert build_run({**DIGITS, "model": "small_cnn"}).data.train.x.dim() == 4


def test_input_size_is_the_registrys_unless_the_builder_is_given_one():
    assert input_size(RunConfig(model="vit_s16")) == 224
    assert input_size(RunConfig(model="vit_s16", model_args={"img_size": 96})) == 96
    assert input_size(RunConfig(model="vit_tiny32")) is None and input_size(RunConfig(model="mlp")) is None


def test_a_224_px_model_gets_its_groups_from_a_resized_example():
    pytest.importorskip("timm")
    run = build_run({**DIGITS, "model": "vit_s16", "batch_size": 8})  # digits are 8 px; ViT-S/16 needs 224
    assert run.groups.names == ("rest", "norm", "head") and run.data.train.x.shape[-1] == 8


def test_a_lora_run_defaults_to_seed_002s_groups():
    pytest.importorskip("peft")
    assert groups_spec(RunConfig(model="vit_tiny32", model_args={"lora": {}})) == LORA_GROUPS
    assert groups_spec(RunConfig(model="vit_tiny32", groups={"by": "layers"})) == {"by": "layers"}
    with pytest.raises(ConfigError, match="groups must be a mapping .* or null"):
        RunConfig.from_dict({"groups": "depth"})


def test_every_run_option_has_a_type_check_and_its_words():
    """A new RunConfig field whose annotation the type check does not know would fail every run."""
    import dataclasses

    from freezelab import config

    assert {str(f.type) for f in dataclasses.fields(config.RunConfig)} <= set(config._TYPE_WORDS)
