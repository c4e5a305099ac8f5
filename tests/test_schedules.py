"""Schedules match their definitions at the boundaries, round-trip through dicts, and reject bad input."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freezelab.schedules import (
    AutoFreeze,
    Alternate,
    BlockCycle,
    Chain,
    Clock,
    Freeze,
    FreezeOut,
    Intersect,
    Progressive,
    RandomLayers,
    ScheduleError,
    Standard,
    Warmup,
    composer_freeze_fraction,
    freezeout_times,
    list_schedules,
    parse_schedule,
    schedule_from_dict,
)

HALVES = ("first", "second")
LAYERS = ("l0", "l1", "l2", "l3", "l4")
SPE, EPOCHS = 10, 6


def at(step, spe=SPE, epochs=EPOCHS):
    return Clock.at(step, spe, epochs)


def train(s, step, groups=HALVES, **kw):
    return s.trainable(at(step, **kw), groups)


# -- alternation ------------------------------------------------------------------
def test_alternate_per_epoch_flips_at_epoch_boundaries():
    s = Alternate(unit="epoch")
    assert train(s, 0) == train(s, SPE - 1) == {"first"}
    assert train(s, SPE) == train(s, 2 * SPE - 1) == {"second"}
    assert train(s, 2 * SPE) == {"first"}


def test_alternate_every_k_batches_switches_exactly_at_k():
    s = Alternate(unit="batch", every=3)
    assert [next(iter(train(s, i))) for i in range(7)] == ["first"] * 3 + ["second"] * 3 + ["first"]


def test_alternate_either_half_first():
    s = Alternate(unit="batch", every=50, first="second")
    assert train(s, 0) == {"second"} and train(s, 50) == {"first"}
    lora_first = Alternate(("norm", "lora"), every=50, unit="batch")  # seed 002: LoRA frozen first
    assert lora_first.trainable(at(49), ("rest", "norm", "lora")) == {"rest", "norm"}
    assert lora_first.trainable(at(50), ("rest", "norm", "lora")) == {"rest", "lora"}


def test_alternate_validation():
    with pytest.raises(ScheduleError, match="at least 2"):
        Alternate().validate(("only",))
    with pytest.raises(ScheduleError, match="not schedulable"):
        Alternate(("a", "zzz")).validate(("a", "b"))
    with pytest.raises(ScheduleError, match="first="):
        Alternate(first="nope").validate(HALVES)
    with pytest.raises(ScheduleError, match="positive integer"):
        Alternate(every=0)
    with pytest.raises(ScheduleError, match="unit"):
        Alternate(unit="minute")


# -- warm-up and chains --------------------------------------------------------------
def test_warmup_ends_exactly_after_n_steps():
    s = Warmup(("lora",), steps=200)
    g = ("norm", "lora")
    assert s.trainable(at(199, spe=1000), g) == {"norm"}
    assert s.trainable(at(200, spe=1000), g) == {"norm", "lora"}


def test_warmup_then_alternation_starts_its_own_clock():
    s = Warmup(("lora",), steps=200, then=Alternate(("norm", "lora"), every=25, unit="batch"))
    g = ("norm", "lora")
    assert s.trainable(at(200, spe=1000), g) == {"norm"}
    assert s.trainable(at(224, spe=1000), g) == {"norm"}
    assert s.trainable(at(225, spe=1000), g) == {"lora"}


def test_warmup_keeps_the_runs_epoch_boundaries():
    s = Warmup(("first",), steps=3, then=Alternate(unit="epoch"))
    assert train(s, SPE - 1) == {"first"}  # epoch 0 of the run: first trains
    assert train(s, SPE) == {"second"}  # flips at the real epoch end, not 3 steps later


def test_chain_phases():
    s = Chain(((Freeze(("first",)), 2, "epoch"), (Alternate(unit="batch", every=5), 7, "batch"), (Standard(), None, "batch")))
    assert train(s, 2 * SPE - 1) == {"second"}
    assert train(s, 2 * SPE) == {"first"} and train(s, 2 * SPE + 5) == {"second"}
    assert train(s, 2 * SPE + 7) == {"first", "second"}
    with pytest.raises(ScheduleError, match="only the last phase"):
        Chain(((Standard(), None, "batch"), (Standard(), 3, "batch")))


def test_intersect_needs_both():
    s = Intersect((Freeze(("l0",)), BlockCycle(every=1)))
    assert s.trainable(at(0), LAYERS) == set()
    assert s.trainable(at(1), LAYERS) == {"l1"}


# -- progressive (Composer) ------------------------------------------------------------
def composer_reference(epoch, epochs, n_layers, freeze_start, freeze_level):
    """Composer's freeze_layers, transcribed: frozen count among the first n-1 layers."""
    current = epoch / epochs
    if current <= freeze_start:
        pct = 0.0
    else:
        pct = freeze_level * ((current - freeze_start) / (1.0 - freeze_start))
    return int(pct * len(list(range(n_layers))[0:-1]))


@pytest.mark.parametrize("start,level", [(0.5, 1.0), (0.1, 0.8), (0.0, 1.0), (0.3, 0.5)])
def test_progressive_matches_composer_every_epoch(start, level):
    s = Progressive(freeze_start=start, freeze_level=level)
    epochs = 10
    for epoch in range(epochs):
        clock = Clock.at(epoch * SPE + 3, SPE, epochs)
        frozen = s.frozen(clock, LAYERS)
        depth = composer_reference(epoch, epochs, len(LAYERS), start, level)
        assert frozen == set(LAYERS[:depth])
        assert "l4" not in frozen  # last module never frozen


def test_progressive_nothing_frozen_until_freeze_start_and_monotone():
    s = Progressive(freeze_start=0.5, unit="batch")
    total = SPE * EPOCHS
    prev = set()
    for step in range(total):
        frozen = s.frozen(at(step), LAYERS)
        if step / total <= 0.5:
            assert frozen == set()
        assert prev <= frozen
        prev = frozen
    assert prev == set(LAYERS[:3])  # int(59/60 * ... ) of 4 freezable


def test_composer_fraction_boundaries():
    assert composer_freeze_fraction(0.5, 0.5, 1.0) == 0.0
    assert composer_freeze_fraction(1.0, 0.5, 1.0) == 1.0
    assert composer_freeze_fraction(0.75, 0.5, 0.8) == pytest.approx(0.4)


# -- FreezeOut ---------------------------------------------------------------------------
def test_freezeout_times_and_boundaries():
    assert freezeout_times(5, 0.5, "linear") == [0.5, 0.625, 0.75, 0.875, 1.0]
    assert freezeout_times(3, 0.5, "cubic") == pytest.approx([0.125, 0.421875, 1.0])
    total = SPE * EPOCHS

    def first_frozen(s):
        return next(i for i in range(total) if "l0" in s.frozen(at(i), LAYERS))

    # Without annealing: frozen from the first step at or past t_0. With it (the reference's
    # rule): the step at exactly t_0 * total is still taken, with learning rate 0.
    assert first_frozen(FreezeOut(t0=0.5, anneal=False)) == math.ceil(0.5 * total)
    assert first_frozen(FreezeOut(t0=0.5)) == 0.5 * total + 1  # annealing is the default (the paper's method)
    for s in (FreezeOut(t0=0.5, anneal=False), FreezeOut(t0=0.5)):
        assert all("l4" not in s.frozen(at(i), LAYERS) for i in range(total))
    with pytest.raises(ScheduleError, match="scaling"):
        FreezeOut(scaling="quartic")
    with pytest.raises(ScheduleError, match="needs anneal"):
        FreezeOut(scale_lr=True, anneal=False)


def test_freezeout_lr_factors_are_a_cosine_to_zero_at_each_stop_time():
    total = SPE * EPOCHS
    s = FreezeOut(t0=0.5, anneal=True)
    assert s.scales_lr and not FreezeOut(anneal=False).scales_lr
    assert FreezeOut(anneal=False).lr_factors(at(5), LAYERS) == {}
    assert s.lr_factors(at(0), LAYERS) == {g: 1.0 for g in LAYERS}
    half = s.lr_factors(at(15), LAYERS)["l0"]  # a quarter of the way to l0's stop at step 30
    assert half == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    assert s.lr_factors(at(30), LAYERS)["l0"] == 0.0 and "l0" in s.trainable(at(30), LAYERS)
    assert s.lr_factors(at(31), LAYERS)["l0"] == 0.0 and "l0" not in s.trainable(at(31), LAYERS)
    last = [s.lr_factors(at(i), LAYERS)["l4"] for i in range(total)]
    assert last == sorted(last, reverse=True) and 0 < last[-1] < 0.01  # the last layer anneals too
    scaled = FreezeOut(t0=0.5, anneal=True, scale_lr=True).lr_factors(at(0), LAYERS)
    assert scaled == pytest.approx({g: 1 / t for g, t in zip(LAYERS, freezeout_times(5, 0.5, "linear"))})


def test_composites_pass_lr_factors_through_on_their_own_clocks():
    fo = FreezeOut(t0=0.5, anneal=True)
    warm = Warmup(("l4",), 6, fo)
    assert warm.scales_lr and not Warmup(("l4",), 6).scales_lr
    assert warm.lr_factors(at(3), LAYERS) == {}
    shifted = at(20).shifted(6)
    assert warm.lr_factors(at(20), LAYERS) == fo.lr_factors(shifted, LAYERS)
    chain = Chain(((Standard(), 1, "epoch"), (fo, None, "batch")))
    assert chain.scales_lr and chain.lr_factors(at(5), LAYERS) == {}
    assert chain.lr_factors(at(25), LAYERS) == fo.lr_factors(at(25).shifted(SPE), LAYERS)
    other = FreezeOut(t0=0.2, groups=("l0", "l1"), anneal=True)
    both = Intersect((fo, other))
    assert both.scales_lr and not Intersect((Standard(), Alternate())).scales_lr
    a, b = fo.lr_factors(at(7), LAYERS), other.lr_factors(at(7), LAYERS)
    assert both.lr_factors(at(7), LAYERS) == {g: a[g] * b.get(g, 1.0) for g in LAYERS}


def test_shared_checks_reject_bad_counts_and_units_everywhere():
    for build in (
        lambda v: Alternate(every=v),
        lambda v: Warmup(("first",), v),
        lambda v: BlockCycle(every=v),
        lambda v: BlockCycle(first_every=v),
        lambda v: RandomLayers(k=v),
        lambda v: RandomLayers(every=v),
    ):
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(ScheduleError, match="must be a positive integer"):
                build(bad)
    for build in (lambda u: Alternate(unit=u), lambda u: Progressive(unit=u)):
        with pytest.raises(ScheduleError, match=r"unit must be one of \['batch', 'epoch'\]"):
            build("step")


# -- BAdam and LISA -----------------------------------------------------------------------
def test_block_cycle_orders():
    asc = [next(iter(BlockCycle(every=2).trainable(at(i), LAYERS))) for i in range(0, 20, 2)]
    assert asc == list(LAYERS) * 2
    desc = [next(iter(BlockCycle(every=1, order="descending").trainable(at(i), LAYERS))) for i in range(5)]
    assert desc == list(reversed(LAYERS))


def test_block_cycle_random_visits_each_block_once_per_cycle():
    s = BlockCycle(every=1, order="random", seed=3)
    cycles = [[next(iter(s.trainable(at(c * 5 + i), LAYERS))) for i in range(5)] for c in range(4)]
    assert all(sorted(c) == sorted(LAYERS) for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1  # reshuffled between cycles


def test_block_cycle_start_fixed_first_period_and_others():
    def active(s, step):
        return sorted(s.trainable(at(step), LAYERS) & set(LAYERS))

    asc = BlockCycle(every=2, start=3)
    assert [active(asc, i) for i in range(0, 10, 2)] == [["l3"], ["l4"], ["l0"], ["l1"], ["l2"]]
    desc = BlockCycle(every=1, order="descending", start=1)
    assert [active(desc, i)[0] for i in range(5)] == ["l1", "l0", "l4", "l3", "l2"]
    assert {tuple(active(BlockCycle(every=3, order="fixed", start=2), i)) for i in range(30)} == {("l2",)}
    short = BlockCycle(every=3, first_every=2)  # BAdam: the first block trains every - 1 steps
    assert [active(short, i)[0] for i in range(8)] == ["l0", "l0", "l1", "l1", "l1", "l2", "l2", "l2"]
    named = BlockCycle(groups=("l1", "l2"), every=1)
    assert named.trainable(at(0), LAYERS) == {"l0", "l1", "l3", "l4"}
    assert BlockCycle(groups=("l1", "l2"), every=1, others="freeze").trainable(at(0), LAYERS) == {"l1"}
    with pytest.raises(ScheduleError, match="fixed.*start"):
        BlockCycle(order="fixed")
    with pytest.raises(ScheduleError, match="start does not apply"):
        BlockCycle(order="random", start=0)
    with pytest.raises(ScheduleError, match="only 5 blocks"):
        BlockCycle(start=5).validate(LAYERS)
    for bad in ({"order": "shuffled"}, {"rng": "python"}, {"others": "keep"}, {"start": -1}):
        with pytest.raises(ScheduleError):
            BlockCycle(**bad)


def test_block_cycle_torch_rng_pops_torch_randperm_from_the_end():
    import torch

    s = BlockCycle(every=1, order="random", rng="torch", seed=11)
    gen = torch.Generator().manual_seed(11)
    expected = [f"l{i}" for _ in range(3) for i in reversed(torch.randperm(5, generator=gen).tolist())]
    assert [active for i in range(15) for active in s.trainable(at(i), LAYERS)] == expected


def test_random_layers_numpy_legacy_replays_the_global_numpy_sequence():
    import numpy as np

    s = RandomLayers(k=2, every=3, seed=5, rng="numpy_legacy")
    state = np.random.RandomState(5)
    expected = [{f"l{i}" for i in state.choice(range(5), 2, replace=False)} for _ in range(6)]
    assert [s.trainable(at(i), LAYERS) for i in range(0, 18, 3)] == expected
    assert [s.trainable(at(i), LAYERS) for i in (17, 4, 0)] == [expected[5], expected[1], expected[0]]  # any order
    with pytest.raises(ScheduleError, match="rng"):
        RandomLayers(rng="torch")


def test_random_layers_constant_within_period_and_seeded():
    s = RandomLayers(k=2, every=4, seed=1)
    sets = [s.trainable(at(i), LAYERS) for i in range(40)]
    assert all(len(x) == 2 for x in sets)
    assert all(sets[i] == sets[i - i % 4] for i in range(40))
    assert len(set(map(frozenset, sets))) > 2
    assert sets == [RandomLayers(k=2, every=4, seed=1).trainable(at(i), LAYERS) for i in range(40)]
    with pytest.raises(ScheduleError, match="exceeds"):
        RandomLayers(k=9).validate(LAYERS)


# -- serialisation and the registry ---------------------------------------------------------
ALL = [
    Standard(),
    Freeze(("first",)),
    Alternate(unit="batch", every=7, first="second"),
    Warmup(("first",), 3, Alternate(unit="epoch")),
    Progressive(0.2, 0.9, unit="batch"),
    FreezeOut(0.3, "squared", anneal=True, scale_lr=True),
    BlockCycle(every=5, order="random", seed=2, first_every=4, rng="torch", others="freeze"),
    BlockCycle(every=3, order="fixed", start=1),
    RandomLayers(k=1, every=3, seed=4, rng="numpy_legacy"),
    Chain(((Freeze(("first",)), 1, "epoch"), (Standard(), None, "batch"))),
    Intersect((Progressive(), Alternate())),
    AutoFreeze(threshold=0.05, window=2, start=0.2, decisions=(("first", 3),)),
]


@pytest.mark.parametrize("s", ALL, ids=lambda s: s.name)
def test_round_trip_and_describe(s):
    import yaml

    d = yaml.safe_load(yaml.safe_dump(s.to_dict()))
    assert schedule_from_dict(d) == s
    assert "\n" not in s.describe() and s.describe()


def test_every_registered_schedule_is_covered():
    assert {s.name for s in ALL} == set(list_schedules())


def test_unknown_names_and_keys_are_clear_errors():
    with pytest.raises(ScheduleError, match="unknown schedule 'alternating'"):
        schedule_from_dict({"name": "alternating"})
    with pytest.raises(ScheduleError, match="no option 'evry'"):
        schedule_from_dict({"name": "alternate", "evry": 2})
    with pytest.raises(ScheduleError, match="key=value"):
        parse_schedule("alternate:every")


def test_cli_shorthand():
    assert parse_schedule("alternate:unit=batch,every=50,groups=[norm,lora]") == Alternate(("norm", "lora"), 50, "batch")
    assert parse_schedule("standard") == Standard()


@settings(max_examples=60, deadline=None)
@given(
    every=st.integers(1, 20),
    unit=st.sampled_from(["batch", "epoch"]),
    first=st.sampled_from([None, "first", "second"]),
    step=st.integers(0, SPE * EPOCHS - 1),
)
def test_alternate_property_exactly_one_half(every, unit, first, step):
    s = Alternate(every=every, unit=unit, first=first)
    assert schedule_from_dict(s.to_dict()) == s
    assert len(train(s, step)) == 1


@settings(max_examples=60, deadline=None)
@given(
    start=st.floats(0, 0.95),
    level=st.floats(0, 1),
    t0=st.floats(0.01, 1),
    k=st.integers(1, 5),
    every=st.integers(1, 9),
    step=st.integers(0, SPE * EPOCHS - 1),
)
def test_layer_schedules_property(start, level, t0, k, every, step):
    layer_schedules = (
        Progressive(start, level, unit="batch"),
        FreezeOut(t0),
        FreezeOut(t0, anneal=True, scale_lr=True),
        BlockCycle(every=every),
        BlockCycle(every=every, first_every=max(every - 1, 1), order="random", rng="torch"),
        RandomLayers(k, every),
        RandomLayers(k, every, rng="numpy_legacy"),
    )
    for s in layer_schedules:
        got = s.trainable(at(step), LAYERS)
        assert got <= set(LAYERS) and got  # never freezes everything
        assert schedule_from_dict(s.to_dict()) == s
        factors = s.lr_factors(at(step), LAYERS)
        assert bool(factors) == s.scales_lr
        if s.scales_lr:
            assert all(factors[g] == 0.0 for g in set(LAYERS) - got)  # a frozen group has no rate
        assert all(0.0 <= f <= 1 / t0**3 + 1e-9 for f in factors.values())
