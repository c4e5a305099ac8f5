"""Parameter groups: depth, layers, pattern and kind builders, and the errors they must raise."""

import pytest
import torch
from torch import nn

from freezelab import groups
from freezelab.groups import GroupError, GroupSet, Group

from models_for_tests import AdapterNet, BNNet, OutOfOrder, mlp


def test_halves_of_four_layer_mlp_match_seed_001():
    gs = groups.depth(mlp(), 2)
    assert gs.names == ("first", "second")
    assert gs["first"].param_names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert gs["second"].param_names == ("4.weight", "4.bias", "6.weight", "6.bias")
    assert gs.unmanaged == ()


def test_halves_with_batchnorm_match_seed_000():
    gs = groups.depth(BNNet(), 2)
    first = {p.split(".")[0] for p in gs["first"].param_names}
    second = {p.split(".")[0] for p in gs["second"].param_names}
    assert first == {"fc1", "bn1"} and second == {"fc2", "bn2", "fc3"}


def test_n_blocks_are_contiguous_and_cover_everything():
    model = mlp()
    gs = groups.depth(model, 4)
    assert gs.names == ("block0", "block1", "block2", "block3")
    flat = [p for g in gs for p in g.param_names]
    assert flat == [n for n, _ in model.named_parameters()]


def test_forward_order_beats_declaration_order():
    model = OutOfOrder()
    assert groups.depth(model, 2)["first"].param_names[0] == "late.weight"  # registration order
    traced = groups.depth(model, 2, example_input=torch.randn(2, 6))
    assert traced["first"].param_names == ("early.weight", "early.bias")


def test_head_is_split_off_and_always_trainable():
    gs = groups.depth(mlp(), 2, head=True)
    assert gs.names == ("first", "second", "head")
    assert gs.always_trainable == ("head",)
    assert gs.schedulable == ("first", "second")
    assert gs["head"].param_names == ("6.weight", "6.bias")


def test_layers_gives_one_group_per_parameterised_module():
    gs = groups.layers(BNNet())
    assert gs.names == ("fc1", "bn1", "fc2", "bn2", "fc3")


def test_pattern_glob_and_regex():
    model = BNNet()
    gs = groups.pattern(model, {"norm": "bn*", "fc12": ["fc1.*", "fc2.*"]}, rest="rest")
    assert gs.names == ("norm", "fc12", "rest")
    assert gs["rest"].param_names == ("fc3.weight", "fc3.bias")
    rx = groups.pattern(model, {"weights": r"\.weight$"}, regex=True)
    assert all(p.endswith(".weight") for p in rx["weights"].param_names)
    assert all(p.endswith(".bias") for p in rx.unmanaged)


def test_pattern_that_matches_nothing_names_the_pattern():
    with pytest.raises(GroupError, match=r"'conv\*'"):
        groups.pattern(BNNet(), {"convs": "conv*"})


def test_overlapping_patterns_are_an_error():
    with pytest.raises(GroupError, match="disjoint"):
        groups.pattern(BNNet(), {"a": "fc1.*", "b": "fc1.weight"})


def test_bad_regex_is_a_clear_error():
    with pytest.raises(GroupError, match="not a valid regular expression"):
        groups.pattern(BNNet(), {"a": "fc1.("}, regex=True)


def test_empty_and_duplicate_groups_are_errors():
    with pytest.raises(GroupError, match="empty"):
        GroupSet((Group("a", ()),))
    with pytest.raises(GroupError, match="used twice"):
        GroupSet((Group("a", ("x",)), Group("a", ("y",))))
    with pytest.raises(GroupError, match="both group"):
        GroupSet((Group("a", ("x",)), Group("b", ("x",))))


def test_too_many_blocks_is_an_error():
    with pytest.raises(GroupError, match="blocks <= 4"):
        groups.depth(mlp(), 5)


def test_kind_groups_find_lora_norm_and_head():
    model = AdapterNet()
    gs = groups.kind(model, ("lora", "norm", "head"), rest=None)
    assert gs.names == ("norm", "lora", "head")
    assert all("lora_" in p for p in gs["lora"].param_names)
    assert all(p.startswith("norm") for p in gs["norm"].param_names)
    assert gs["head"].param_names == ("head.weight", "head.bias")
    assert gs["head"].always_trainable
    # The PEFT-style frozen base weights are left alone: unmanaged.
    assert set(gs.unmanaged) == {"block1.base.weight", "block1.base.bias", "block2.base.weight", "block2.base.bias"}


def test_kind_that_the_model_lacks_is_an_error():
    with pytest.raises(GroupError, match="'lora' matches no parameter"):
        groups.kind(mlp(), ("lora", "head"))
    with pytest.raises(GroupError, match="unknown kind"):
        groups.kind(mlp(), ("attention",))


def test_kind_norm_catches_batchnorm():
    gs = groups.kind(BNNet(), ("norm", "head"))
    assert {p.split(".")[0] for p in gs["norm"].param_names} == {"bn1", "bn2"}
    assert gs.names == ("rest", "norm", "head")


def test_from_spec_builds_each_kind_and_rejects_bad_input():
    model = BNNet()
    assert groups.from_spec(model, {"by": "depth", "blocks": 2}).names == ("first", "second")
    assert groups.from_spec(model, {"by": "layers", "always_trainable": ["fc3"]}).always_trainable == ("fc3",)
    assert groups.from_spec(model, {"by": "pattern", "patterns": {"bn": "bn*"}, "rest": "other"}).names == ("bn", "other")
    with pytest.raises(GroupError, match="unknown group builder"):
        groups.from_spec(model, {"by": "magic"})
    with pytest.raises(GroupError, match="bad option"):
        groups.from_spec(model, {"by": "depth", "blokcs": 2})
    with pytest.raises(KeyError, match="no group named"):
        groups.from_spec(model, {"by": "depth", "always_trainable": ["head"]})


def test_validate_for_catches_a_foreign_model():
    gs = groups.depth(BNNet(), 2)
    with pytest.raises(GroupError, match="lacks"):
        gs.validate_for(nn.Linear(2, 2))
