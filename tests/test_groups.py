"""Parameter groups: depth, layers, pattern and kind builders, and the errors they must raise."""

import pytest
import torch
from torch import nn

from freezelab import groups
from freezelab.groups import GroupError, GroupSet, Group

from model_families import FAMILIES, LORA_TARGETS, load
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


# ---------------------------------------------------------------------------------
# Model families (tests/model_families.py): order, membership, head, frozen, tied, state
# ---------------------------------------------------------------------------------
FAMILY_NAMES = sorted(FAMILIES)


@pytest.fixture(params=FAMILY_NAMES)
def fam(request):
    return load(request.param)


def _builds(fam):
    """Every builder with head and order variants, as (label, GroupSet)."""
    x = fam.example_input
    yield "depth", groups.depth(fam.model, 2, example_input=x)
    yield "depth-head", groups.depth(fam.model, 2, head=True, example_input=x)
    yield "layers", groups.layers(fam.model, example_input=x)
    yield "layers-head-definition", groups.layers(fam.model, head=True, order="definition", example_input=x)
    yield "layers-skip", groups.layers(fam.model, order="definition", nonleaf="skip")
    yield "kind", groups.kind(fam.model, example_input=x)


def test_every_parameter_is_in_exactly_one_group_or_unmanaged(fam):
    names = [n for n, _ in fam.model.named_parameters()]
    for label, gs in _builds(fam):
        grouped = [p for g in gs for p in g.param_names]
        assert len(grouped) == len(set(grouped)), label
        assert not set(grouped) & set(gs.unmanaged), label
        assert sorted(grouped + list(gs.unmanaged)) == sorted(names), label


def test_parameters_frozen_before_grouping_stay_unmanaged(fam):
    frozen = {n for n, p in fam.model.named_parameters() if not p.requires_grad}
    assert frozen == set(fam.frozen)
    for label, gs in _builds(fam):
        assert frozen <= set(gs.unmanaged), label
        assert not any(g.explicit for g in gs), label


def test_include_frozen_manages_frozen_parameters_in_explicit_groups():
    fam = load("prefrozen")
    gs = groups.layers(fam.model, include_frozen=True, example_input=fam.example_input)
    assert gs.names == ("0", *fam.forward_units) and gs.unmanaged == ()
    assert all(g.explicit for g in gs)
    assert groups.layers(fam.model, example_input=fam.example_input).names == fam.forward_units


def test_units_follow_the_forward_pass_in_train_and_eval_mode(fam):
    for training in (True, False):
        fam.model.train(training)
        names = tuple(u.name for u in groups.units(fam.model, example_input=fam.example_input))
        assert names == fam.forward_units, f"training={training}"


def test_tracing_leaves_parameters_buffers_modes_and_rng_unchanged(fam):
    for training in (True, False):
        fam.model.train(training)
        state = {k: v.clone() for k, v in fam.model.state_dict().items()}
        modes = [m.training for m in fam.model.modules()]
        rng = torch.get_rng_state()
        groups.layers(fam.model, head=True, example_input=fam.example_input)
        assert torch.equal(torch.get_rng_state(), rng)
        assert [m.training for m in fam.model.modules()] == modes
        after = fam.model.state_dict()
        assert state.keys() == after.keys()
        assert all(torch.equal(state[k], after[k]) for k in state), [k for k in state if not torch.equal(state[k], after[k])]


def test_an_untraced_forward_would_have_changed_state():
    """The state test above is not vacuous: a plain train-mode forward moves BN stats and draws RNG."""
    net = load("resnet18").model
    before = net.bn1.running_mean.clone()
    net(load("resnet18").example_input)
    assert not torch.equal(net.bn1.running_mean, before)
    lm = load("tied_lm")
    rng = torch.get_rng_state()
    lm.model(lm.example_input)  # GPT-2 dropout in train mode
    assert not torch.equal(torch.get_rng_state(), rng)


def test_head_true_picks_the_module_whose_output_is_the_models_output(fam):
    assert groups.find_head(fam.model, fam.example_input) == fam.head
    assert groups.find_head(fam.model) == fam.head  # without a trace: last real module in definition order
    module = fam.model.get_submodule(fam.head)
    canonical = {id(p): n for n, p in fam.model.named_parameters()}
    own = tuple(canonical[id(p)] for p in module.parameters(recurse=False))
    for label, gs in _builds(fam):
        if label in ("depth-head", "layers-head-definition", "kind"):
            assert gs["head"].param_names == own and gs["head"].always_trainable, label


def test_definition_order_skip_is_composers_layer_list(fam):
    """Composer's _get_layers: depth-first over children(), leaf modules with parameters."""

    def composer_layers(module, prefix=""):
        children = list(module.named_children())
        if not children:
            return [prefix] if any(True for _ in module.parameters()) else []
        return [n for name, child in children for n in composer_layers(child, f"{prefix}.{name}".lstrip("."))]

    seen, expected = set(), []
    for name in composer_layers(fam.model):
        params = [p for p in fam.model.get_submodule(name).parameters() if id(p) not in seen]
        seen |= {id(p) for p in params}
        if any(p.requires_grad for p in params):  # frozen layers stay unmanaged, tied ones count once
            expected.append(name)
    gs = groups.layers(fam.model, order="definition", nonleaf="skip", example_input=fam.example_input)
    assert list(gs.names) == expected


def test_tied_weights_are_managed_once_under_their_canonical_name():
    fam = load("tied_lm")
    (canonical, alias), = fam.tied
    assert fam.model.get_parameter(canonical) is fam.model.get_parameter(alias)
    gs = groups.layers(fam.model, example_input=fam.example_input)
    grouped = [p for g in gs for p in g.param_names]
    assert grouped.count(canonical) == 1 and alias not in grouped
    assert gs["transformer.wte"].param_names == (canonical,)
    assert gs.names[0] == "transformer.wte" and "lm_head" not in gs.names
    # With head=True the head keeps its (tied) weight: the embedding trains always, as the head.
    with_head = groups.layers(fam.model, head=True, example_input=fam.example_input)
    assert with_head["head"].param_names == (canonical,) and "transformer.wte" not in with_head.names


def test_tied_weight_goes_to_the_module_that_uses_it_first():
    class HeadFirst(nn.Module):
        """Declares the output head before the embedding it shares a weight with."""

        def __init__(self):
            super().__init__()
            self.out = nn.Linear(4, 10, bias=False)
            self.mid = nn.Linear(4, 4)
            self.emb = nn.Embedding(10, 4)
            self.emb.weight = self.out.weight

        def forward(self, ids):
            return self.out(torch.tanh(self.mid(self.emb(ids))))

    model, ids = HeadFirst(), torch.tensor([[1, 2, 3]])
    forward = groups.layers(model, example_input=ids)
    assert forward.names == ("emb", "mid") and forward["emb"].param_names == ("out.weight",)
    assert groups.layers(model, order="definition").names == ("out", "mid")


def test_tv_vit_attention_projection_is_ordered_before_the_mlp_and_the_classifier_last():
    fam = load("tv_vit")
    names = [u.name for u in groups.units(fam.model, example_input=fam.example_input)]
    layer = "encoder.layers.encoder_layer_0"
    assert names.index(f"{layer}.self_attention") < names.index(f"{layer}.self_attention.out_proj")
    assert names.index(f"{layer}.self_attention.out_proj") < names.index(f"{layer}.mlp.0")
    assert names[-1] == "heads.head"
    gs = groups.depth(fam.model, 2, head=True, example_input=fam.example_input)
    assert gs["head"].param_names == ("heads.head.weight", "heads.head.bias")
    assert gs["first"].param_names[0] == "conv_proj.weight"


def test_nonleaf_parameters_form_their_own_unit_or_stay_unmanaged():
    fam = load("tv_vit")
    own = groups.layers(fam.model, example_input=fam.example_input)
    assert own.names[:3] == ("conv_proj", "root", "encoder")
    assert own["root"].param_names == ("class_token",) and own["encoder"].param_names == ("encoder.pos_embedding",)
    attn = "encoder.layers.encoder_layer_0.self_attention"
    assert own[attn].param_names == (f"{attn}.in_proj_weight", f"{attn}.in_proj_bias")
    skip = groups.layers(fam.model, nonleaf="skip", example_input=fam.example_input)
    assert {"class_token", "encoder.pos_embedding", f"{attn}.in_proj_weight"} <= set(skip.unmanaged)
    assert "root" not in skip.names and attn not in skip.names


def test_forward_and_definition_order_differ_where_the_model_says_so():
    fam = load("timm_vit")
    forward = [u.name for u in groups.units(fam.model, example_input=fam.example_input)]
    definition = [u.name for u in groups.units(fam.model, order="definition", example_input=fam.example_input)]
    assert forward[:2] == ["patch_embed.proj", ""] and definition[:2] == ["", "patch_embed.proj"]
    assert sorted(forward) == sorted(definition)
    assert [u.name for u in groups.units(fam.model)] == definition  # no example_input: definition order


def test_kind_on_peft_keeps_the_base_frozen_and_finds_the_real_head():
    fam = load("peft_lora")
    trainable = {n for n, p in fam.model.named_parameters() if p.requires_grad}
    for x in (None, fam.example_input):
        gs = groups.kind(fam.model, example_input=x)
        assert gs.names == ("lora", "head")
        assert set(gs["lora"].param_names) == {n for n in trainable if "lora_" in n}
        assert gs["head"].param_names == tuple(f"{fam.head}.{p}" for p in ("weight", "bias"))
        assert set(gs.unmanaged) == set(fam.frozen)
        assert not any(g.explicit for g in gs)
    with pytest.raises(GroupError, match=r"kind 'norm' matches only frozen.*include_frozen=True"):
        groups.kind(fam.model, ("lora", "norm", "head"))


def test_kind_head_of_a_peft_model_without_modules_to_save_explains_the_fix():
    pytest.importorskip("peft")
    pytest.importorskip("timm")
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load("timm_vit").model, LoraConfig(r=4, target_modules=LORA_TARGETS))
    with pytest.raises(GroupError, match=r"'head' matches only frozen.*modules_to_save"):
        groups.kind(model, ("lora", "head"))
    with pytest.raises(GroupError, match="no trainable parameter.*modules_to_save"):
        groups.layers(model, head=True)
    assert groups.kind(model).names == ("lora",)


def test_untraced_copy_is_never_the_head():
    class ModulesToSaveWrapper(nn.Module):  # PEFT's shape, copy registered last
        def __init__(self, module):
            super().__init__()
            self.modules_to_save = nn.ModuleDict({"default": module})
            self.original_module = nn.Linear(4, 2).requires_grad_(False)

        def forward(self, x):
            return self.modules_to_save["default"](x)

    model = nn.Sequential(nn.Linear(3, 4), ModulesToSaveWrapper(nn.Linear(4, 2)))
    assert groups.find_head(model) == "1.modules_to_save.default"
    assert groups.find_head(model, torch.randn(2, 3)) == "1.modules_to_save.default"


def test_head_falls_back_to_the_last_unit_to_run_when_no_module_gives_the_output():
    class Softmaxed(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 3)
            self.body = nn.Linear(3, 4)

        def forward(self, x):
            return self.head(self.body(x)).softmax(-1)

    assert groups.find_head(Softmaxed(), torch.randn(2, 3)) == "head"


def test_mha_used_functionally_is_traced_in_eval_mode_too():
    """In eval + no_grad MHA takes a fused fast path; the trace must still see its projections."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.out = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.attn(x, x, x, need_weights=False)[0])

    net, x = Net().eval(), torch.randn(2, 3, 8)
    with torch.no_grad():
        names = [u.name for u in groups.units(net, example_input=x)]
    assert names == ["attn", "attn.out_proj", "out"]
    assert not net.training


def test_a_model_that_cannot_run_in_train_mode_on_the_input_is_traced_in_eval_mode():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    gs = groups.layers(model, head=True, example_input=torch.randn(1, 3))  # BatchNorm refuses a batch of 1 in train mode
    assert gs.names == ("0", "1", "head") and model.training


def test_pattern_groups_are_explicit_and_rest_keeps_frozen_parameters_out():
    fam = load("prefrozen")
    gs = groups.pattern(fam.model, {"first": "0.*"}, rest="rest")
    assert gs["first"].explicit and gs["first"].param_names == ("0.weight", "0.bias")
    assert not gs["rest"].explicit
    assert gs["rest"].param_names == tuple(f"{u}.{p}" for u in fam.forward_units for p in ("weight", "bias"))
    model = AdapterNet()
    gs = groups.pattern(model, {"lora": "*lora_*"}, rest="rest")
    assert not any("base" in p for p in gs["rest"].param_names)
    everything = groups.pattern(model, {"lora": "*lora_*"}, rest="rest", include_frozen=True)
    assert everything["rest"].explicit and any("base" in p for p in everything["rest"].param_names)


def test_from_spec_passes_order_and_nonleaf():
    fam = load("timm_vit")
    spec = {"by": "layers", "order": "definition", "nonleaf": "skip"}
    gs = groups.from_spec(fam.model, spec, example_input=fam.example_input)
    assert gs.names == groups.layers(fam.model, order="definition", nonleaf="skip").names
    assert "root" not in gs.names
    assert groups.from_spec(fam.model, {"by": "layers"}, example_input=fam.example_input).names[:2] == ("patch_embed.proj", "root")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: groups.depth(m, blocks="2"), r"blocks must be a whole number >= 1, got '2'"),
        (lambda m: groups.depth(m, blocks=0), r"blocks must be a whole number >= 1"),
        (lambda m: groups.depth(m, blocks=True), r"blocks must be a whole number"),
        (lambda m: groups.depth(m, 2, names="ab"), r"names must be a list"),
        (lambda m: groups.layers(m, order="depth"), r"order='depth' is not an option; choose 'forward' or 'definition'"),
        (lambda m: groups.depth(m, nonleaf="keep"), r"nonleaf='keep' is not an option"),
        (lambda m: groups.layers(m, include_frozen="yes"), r"include_frozen must be true or false"),
        (lambda m: groups.layers(m, head="1"), r"head module '1' owns no parameters"),
        (lambda m: groups.layers(m, head="nope"), r"head module 'nope' owns no parameters"),
        (lambda m: groups.layers(m, head=3), r"head must be true, false or a module name"),
        (lambda m: groups.kind(m, "attention"), r"unknown kind"),
        (lambda m: groups.kind(m, ("norm",)), r"'norm' matches no parameter"),
        (lambda m: groups.pattern(m, "0.*"), r"patterns must map group names"),
        (lambda m: groups.from_spec(m, "depth"), r"groups must be a mapping"),
        (lambda m: groups.from_spec(m, {"by": "pattern"}), r"needs \['patterns'\]"),
        (lambda m: groups.from_spec(m, {"by": "layers", "ordre": "definition"}), r"bad option\(s\) \['ordre'\]"),
        (lambda m: groups.layers(m, example_input=torch.randn(2, 5)), r"cannot trace Sequential on example_input"),
    ],
)
def test_bad_options_are_one_clear_group_error(call, message):
    with pytest.raises(GroupError, match=message):
        call(mlp())


def test_families_are_deterministic_and_train(fam):
    again = FAMILIES[fam.name](seed=0)
    a, b = fam.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x1, y1 = fam.make_batch(3)
    x2, y2 = fam.make_batch(3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    rng = torch.get_rng_state()
    FAMILIES[fam.name](seed=1)
    assert torch.equal(torch.get_rng_state(), rng)
    loss = fam.loss_fn(fam.model, (x1, y1))
    assert loss.dim() == 0
    loss.backward()
    assert all(p.grad is None for n, p in fam.model.named_parameters() if n in fam.frozen)
