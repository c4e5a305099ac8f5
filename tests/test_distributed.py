"""Freezing under DDP: 2 CPU processes (gloo) train every schedule, checked against one process.

All distributed scenarios run in ONE launch of two forked processes (a module-scoped fixture), so
the file costs one process-group start-up; each rank saves every step's weights and the tests
compare them: across ranks (bit for bit), against the step before (frozen weights), and against a
single-process run with the same global batch (float tolerance). Probes with a deliberately
broken contrast (no rebuild, no hook removal, a broadcasting re-wrap) show each test can fail.

On 2 GPUs: ``FREEZELAB_DDP_BACKEND=nccl pytest tests/test_distributed.py`` (one GPU per rank,
spawned processes; the single-process reference stays on the CPU).
"""

from __future__ import annotations

import contextlib
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import freezelab.distributed
from freezelab import Freezer, groups
from freezelab.data import IndexBatches
from freezelab.distributed import (
    DistributedFreezingError,
    FreezingDDP,
    ShardedBatches,
    ShardingError,
    launch,
    rank_slice,
)
from freezelab.optim import param_groups_by_group
from freezelab.schedules import (
    Alternate,
    BlockCycle,
    Clock,
    FreezeOut,
    Progressive,
    RandomLayers,
    Schedule,
    Standard,
    Warmup,
)

WORLD = 2
# CI runs gloo on CPUs; FREEZELAB_DDP_BACKEND=nccl runs the same scenarios with one GPU per rank.
BACKEND = os.environ.get("FREEZELAB_DDP_BACKEND", "gloo")
N, BATCH, EPOCHS = 48, 8, 2  # 6 steps per epoch, 12 steps
STEPS = EPOCHS * (N // BATCH)
THAW_AT = 3  # the warm-up scenarios thaw layer "0" at this step
# float32, 12 steps of AdamW/SGD: DDP sums the two half-batch gradients in another order than one
# process sums the whole batch; measured: at most 3e-6 (AdamW, where a gradient is near zero), mostly 1e-7.
TOLERANCE = 1e-5


@dataclass(frozen=True)
class Scenario:
    name: str
    schedule: Schedule
    policy: str = "keep"
    groups: str = "layers"  # "layers": one group per Linear ("0", "2", "4", "6"); "halves": first/second
    optimizer: str = "adamw"
    accumulate: int = 1  # micro-batches per optimizer step (no_sync on all but the last)
    cache_size: int = 1
    rebuild: bool = True  # False: plain DDP wrapped once at step 0, never rebuilt (the broken way)


WARMUP = Warmup(("0",), steps=THAW_AT)
SCENARIOS = [
    Scenario("standard", Standard()),
    Scenario("alternate-batch", Alternate(unit="batch"), groups="halves"),
    Scenario("alternate-batch-remove-sgd", Alternate(unit="batch", every=2), "remove", "halves", "sgd"),
    Scenario("alternate-epoch-release", Alternate(unit="epoch"), "release", "halves"),
    Scenario("alternate-batch-recreate", Alternate(unit="batch", every=3), "recreate", "halves"),
    Scenario("warmup-thaw", WARMUP),
    Scenario("warmup-thaw-remove", WARMUP, "remove"),
    Scenario("progressive", Progressive(freeze_start=0.2, unit="batch")),
    Scenario("progressive-release", Progressive(freeze_start=0.2, unit="batch"), "release"),
    Scenario("freezeout", FreezeOut(t0=0.3)),
    Scenario("block-cycle-release", BlockCycle(every=2), "release"),
    Scenario("random-layers-remove", RandomLayers(k=2, every=3), "remove"),
    Scenario("accumulate-no-sync", Alternate(unit="batch", every=2), groups="halves", accumulate=2),
    Scenario("alternate-batch-cached", Alternate(unit="batch"), groups="halves", cache_size=2),
]
NEGATIVE = Scenario("warmup-thaw-no-rebuild", WARMUP, rebuild=False)
BY_NAME = {s.name: s for s in [*SCENARIOS, NEGATIVE]}


def _device(rank: int, world: int = WORLD) -> torch.device:
    return torch.device("cuda", rank) if BACKEND == "nccl" and world > 1 else torch.device("cpu")


def _data(device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 6, generator=g).to(device), torch.randint(0, 3, (N,), generator=g).to(device)


def _model(device: torch.device = torch.device("cpu")) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers).to(device)


def train(s: Scenario, rank: int = 0, world: int = 1) -> dict:
    """Run one scenario; ``world=1`` is the single-process reference (no DDP, whole batches).

    Returns every step's trainable mask and the weights after it.
    """
    device = _device(rank, world)
    x, y = _data(device)
    model = _model(device)
    group_set = groups.depth(model, 2) if s.groups == "halves" else groups.layers(model)
    # FreezeOut anneals each group's learning rate: that needs a param group per freezelab group.
    params = param_groups_by_group(model, group_set) if s.schedule.scales_lr else model.parameters()
    if s.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=0.02)
    else:
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    freezer = Freezer(model, group_set, s.schedule, opt, policy=s.policy)
    shards = ShardedBatches(IndexBatches(N, BATCH, seed=0), rank, world)
    engine = FreezingDDP(model, freezer, cache_size=s.cache_size) if world > 1 and s.rebuild else None
    forward, masks, weights = model, [], []
    for epoch in range(EPOCHS):
        for i, idx in enumerate(shards.epoch_batches(epoch)):
            clock = Clock.at(epoch * shards.steps_per_epoch + i, shards.steps_per_epoch, EPOCHS)
            if engine is not None:
                engine.step(clock)
                forward = engine
            else:
                freezer.step(clock)
                if world > 1 and forward is model:
                    forward = DistributedDataParallel(model)  # wrapped once: what the issue tried
            micro = idx.chunk(s.accumulate)
            for j, part in enumerate(micro):
                quiet = engine.no_sync() if engine is not None and j < len(micro) - 1 else contextlib.nullcontext()
                with quiet:
                    (F.cross_entropy(forward(x[part]), y[part]) / len(micro)).backward()
            masks.append(tuple(p.requires_grad for p in model.parameters()))
            opt.step()
            opt.zero_grad()
            weights.append([p.detach().cpu().clone() for p in model.parameters()])
    return {"masks": masks, "weights": weights, "builds": engine.builds if engine else None}


def _probe_old_wrapper_is_freed(rank: int) -> dict:
    """After a switch, the previous wrapper and its Reducer are gone (so are the Reducer's hooks)."""
    model = _model(_device(rank))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = FreezingDDP(model, Freezer(model, groups.depth(model, 2), Alternate(unit="batch"), opt))
    x, y = _data(_device(rank))
    engine.step(Clock.at(0, 6, 1))
    old, old_reducer = weakref.ref(engine.ddp), weakref.ref(engine.ddp.reducer)
    F.cross_entropy(engine(x[:4]), y[:4]).backward()
    engine.step(Clock.at(1, 6, 1))
    return {"wrapper_freed": old() is None, "reducer_freed": old_reducer() is None, "builds": engine.builds}


class _FailOnce(torch.autograd.Function):
    """Identity whose first backward raises: a step that dies inside backward (say, out of memory)."""

    armed = True

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        if _FailOnce.armed:
            _FailOnce.armed = False
            raise RuntimeError("simulated failure in backward")
        return grad


def _probe_switch_after_failed_backward(rank: int, remove_hooks: bool = True) -> str:
    """A switch after a backward that died midway, with the old wrapper still referenced.

    Its Reducer was left expecting gradients, so if its hooks stayed on the parameters they
    would fire in the next backward ("marked as ready twice"). FreezingDDP removes them at the
    switch; ``remove_hooks=False`` leaves them to garbage collection (the contrast). Returns the
    error, or "" when training went on.
    """
    saved, _FailOnce.armed = freezelab.distributed._remove_hooks, True
    if not remove_hooks:
        freezelab.distributed._remove_hooks = lambda wrapper: None
    try:
        model = _model(_device(rank))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        engine = FreezingDDP(model, Freezer(model, groups.layers(model), Warmup(("0",), steps=1), opt))
        x, y = _data(_device(rank))
        engine.step(Clock.at(0, 6, 1))
        kept = engine.ddp  # noqa: F841 - what a traceback held by the caller would do
        with contextlib.suppress(RuntimeError):
            F.cross_entropy(engine(_FailOnce.apply(x[:4].clone().requires_grad_())), y[:4]).backward()
        opt.zero_grad()
        for step in (1, 2):
            engine.step(Clock.at(step, 6, 1))
            F.cross_entropy(engine(x[:4]), y[:4]).backward()
            opt.step()
            opt.zero_grad()
        return ""
    except RuntimeError as err:
        return str(err)
    finally:
        freezelab.distributed._remove_hooks = saved


def _probe_disagreeing_ranks(rank: int) -> str:
    """Ranks whose schedules answer different sets of identical shapes must fail, not train apart."""
    model = _model(_device(rank))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    halves = groups.depth(model, 2, names=("a", "b"))
    schedule = Alternate(unit="batch", first="a" if rank == 0 else "b")
    engine = FreezingDDP(model, Freezer(model, halves, schedule, opt))
    try:
        engine.step(Clock.at(0, 6, 1))
    except DistributedFreezingError as err:
        return str(err)
    return ""


def _probe_broadcasts(rank: int) -> dict:
    """The first wrapper starts every rank from rank 0's weights; a rebuild broadcasts nothing.

    A rank-local buffer (``forward_sync_buffers=False``) set after the first build must survive
    the rebuild; a plain re-wrap (``init_sync=True``) would reset it to rank 0's (the contrast).
    """
    model = _model(_device(rank))
    model.register_buffer("tag", torch.tensor(0.0, device=_device(rank)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(rank)  # ranks start apart: the first build must fix that
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = FreezingDDP(model, Freezer(model, groups.depth(model, 2), Alternate(unit="batch"), opt),
                         forward_sync_buffers=False)
    engine.step(Clock.at(0, 6, 1))
    start = [p.detach().cpu().clone() for p in model.parameters()]
    model.tag.fill_(rank)
    engine.step(Clock.at(1, 6, 1))
    kept = model.tag.item()
    DistributedDataParallel(model, forward_sync_buffers=False)  # what a broadcasting rebuild would do
    return {"start": start, "tag_after_rebuild": kept, "tag_after_rewrap": model.tag.item()}


def _worker(rank: int, world: int, out: Path) -> None:
    torch.set_num_threads(1)
    results = {s.name: train(s, rank, world) for s in [*SCENARIOS, NEGATIVE]}
    results["probe_freed"] = _probe_old_wrapper_is_freed(rank)
    results["probe_disagree"] = _probe_disagreeing_ranks(rank)
    results["probe_broadcasts"] = _probe_broadcasts(rank)
    results["probe_failed_backward"] = _probe_switch_after_failed_backward(rank)
    results["probe_failed_backward_gc_only"] = _probe_switch_after_failed_backward(rank, remove_hooks=False)
    dist.barrier()
    torch.save(results, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp")
    launch(_worker, WORLD, out, backend=BACKEND, start_method="spawn" if BACKEND == "nccl" else "fork", timeout_s=120)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    reference = {s.name: train(s) for s in SCENARIOS}
    return {"ranks": ranks, "reference": reference}


def _initial() -> list[torch.Tensor]:
    return [p.detach().clone() for p in _model().parameters()]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((u - v).abs().max().item() for u, v in zip(a, b))


NAMES = [s.name for s in SCENARIOS]


@pytest.mark.parametrize("name", NAMES)
def test_schedule_trains_with_the_single_process_trainable_sets(runs, name):
    ref = runs["reference"][name]
    for rank in runs["ranks"]:
        assert rank[name]["masks"] == ref["masks"]
        assert _max_diff(rank[name]["weights"][-1], _initial()) > 1e-3
    if BY_NAME[name].schedule != Standard():
        assert len(set(ref["masks"])) > 1, "the scenario never switches: it tests nothing about freezing"


@pytest.mark.parametrize("name", NAMES)
def test_ranks_hold_identical_weights_after_every_step(runs, name):
    r0, r1 = (rank[name]["weights"] for rank in runs["ranks"])
    for step, (a, b) in enumerate(zip(r0, r1)):
        assert all(torch.equal(u, v) for u, v in zip(a, b)), f"ranks differ after step {step}"


@pytest.mark.parametrize("name", NAMES)
def test_frozen_weights_stay_bit_identical_on_every_rank(runs, name):
    initial = _initial()
    for rank in runs["ranks"]:
        run = rank[name]
        before = initial
        for step, (mask, after) in enumerate(zip(run["masks"], run["weights"])):
            for i, trainable in enumerate(mask):
                if not trainable:
                    assert torch.equal(before[i], after[i]), f"frozen parameter {i} moved at step {step}"
            before = after


@pytest.mark.parametrize("name", NAMES)
def test_result_matches_a_single_process_run_with_the_same_global_batch(runs, name):
    ref = runs["reference"][name]["weights"]
    got = runs["ranks"][0][name]["weights"]
    worst = max(_max_diff(a, b) for a, b in zip(got, ref))
    assert worst < TOLERANCE, f"{name}: max |DDP - single process| = {worst:.2e} over {STEPS} steps"


def test_thawed_group_is_all_reduced_from_its_first_trainable_step(runs):
    """Layer "0" is frozen when the first wrapper is built and thaws at step THAW_AT."""
    layer0 = [0, 1]  # its weight and bias, first in model.parameters()
    good = [rank["warmup-thaw"] for rank in runs["ranks"]]
    ref = runs["reference"]["warmup-thaw"]
    assert not good[0]["masks"][THAW_AT - 1][0] and good[0]["masks"][THAW_AT][0]
    after_thaw = [run["weights"][THAW_AT] for run in good]
    assert not torch.equal(after_thaw[0][0], good[0]["weights"][THAW_AT - 1][0]), "the thawed layer did not train"
    for i in layer0:
        assert torch.equal(after_thaw[0][i], after_thaw[1][i])
        assert (after_thaw[0][i] - ref["weights"][THAW_AT][i]).abs().max() < TOLERANCE
    assert good[0]["builds"] == 2  # the set changed once


def test_without_the_rebuild_the_thawed_group_diverges_across_ranks(runs):
    """The same run with DDP wrapped once: the test above would fail without FreezingDDP's rebuild."""
    r0, r1 = (rank[NEGATIVE.name]["weights"] for rank in runs["ranks"])
    for step in range(THAW_AT):
        assert all(torch.equal(u, v) for u, v in zip(r0[step], r1[step]))
    assert not torch.equal(r0[THAW_AT][0], r1[THAW_AT][0]), "ranks agree without the rebuild: the thaw test is blind"
    assert (r0[-1][0] - r1[-1][0]).abs().max() > 1e-3


def test_cached_wrappers_give_the_rebuilt_result_with_fewer_builds(runs):
    for rank in runs["ranks"]:
        rebuilt, cached = rank["alternate-batch"], rank["alternate-batch-cached"]
        assert all(torch.equal(u, v) for a, b in zip(rebuilt["weights"], cached["weights"]) for u, v in zip(a, b))
        assert (rebuilt["builds"], cached["builds"]) == (STEPS, 2)


def test_a_switch_frees_the_previous_wrapper_and_its_reducer(runs):
    for rank in runs["ranks"]:
        assert rank["probe_freed"] == {"wrapper_freed": True, "reducer_freed": True, "builds": 2}


def test_a_switch_removes_the_old_wrappers_hooks_even_while_it_is_referenced(runs):
    for rank in runs["ranks"]:
        assert rank["probe_failed_backward"] == ""
        assert "marked as ready twice" in rank["probe_failed_backward_gc_only"], "the contrast did not fail: blind probe"


def test_first_wrapper_broadcasts_rank0_and_rebuilds_overwrite_nothing(runs):
    probes = [rank["probe_broadcasts"] for rank in runs["ranks"]]
    initial = _initial()
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(probes[0]["start"], probes[1]["start"], initial))
    assert [p["tag_after_rebuild"] for p in probes] == [0.0, 1.0], "a rebuild reset a rank-local buffer"
    assert [p["tag_after_rewrap"] for p in probes] == [0.0, 0.0], "the contrast did not broadcast: the probe is blind"


def test_ranks_that_disagree_on_the_trainable_set_fail_loudly(runs):
    for r, rank in enumerate(runs["ranks"]):
        message = rank["probe_disagree"]
        assert f"rank {r} trains" in message and "same groups and schedule" in message


# -- in-process checks (no process group) ---------------------------------------------
def test_union_of_rank_shards_is_the_single_process_batch_in_order():
    order = IndexBatches(n=50, batch_size=10, seed=3)
    shards = [list(ShardedBatches(order, r, 5).epoch_batches(1)) for r in range(5)]
    for step, batch in enumerate(order.epoch_batches(1)):
        assert torch.equal(torch.cat([shards[r][step] for r in range(5)]), batch)
    assert ShardedBatches(order, 0, 5).local_batch_size == 2


def test_indivisible_batches_fail_with_the_fix():
    with pytest.raises(ShardingError, match="not divisible by the world size 4; use a multiple of 4"):
        ShardedBatches(IndexBatches(n=40, batch_size=10, seed=0), 0, 4)
    with pytest.raises(ShardingError, match="last batch of each epoch holds 5 examples.*drop_last=True"):
        ShardedBatches(IndexBatches(n=45, batch_size=10, seed=0), 0, 2)
    ShardedBatches(IndexBatches(n=45, batch_size=10, seed=0, drop_last=True), 0, 2)
    with pytest.raises(ShardingError, match="rank must be in"):
        ShardedBatches(IndexBatches(n=40, batch_size=10, seed=0), 2, 2)
    with pytest.raises(ShardingError, match="cannot be split evenly over 3 ranks"):
        rank_slice(torch.arange(8), 0, 3)


def test_freezing_ddp_refuses_bad_setups():
    model = _model()
    freezer = Freezer(model, groups.depth(model, 2), Standard())
    with pytest.raises(DistributedFreezingError, match="another model"):
        FreezingDDP(_model(), freezer)
    with pytest.raises(DistributedFreezingError, match="not initialized; call torch.distributed.init_process_group"):
        FreezingDDP(model, freezer)
