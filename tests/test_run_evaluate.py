"""What a run records for seed 002's comparisons: per-epoch NLL/accuracy/ECE, the two groups'
interference, and per trainable set its steps, trainable parameters, step time and memory."""

from __future__ import annotations

import math

import pytest

from freezelab.config import ConfigError, RunConfig
from freezelab.run import build_run, train

TINY = {"dataset": "digits", "epochs": 2, "batch_size": 64, "lr": 1e-2, "model_args": {"hidden": [16, 16]},
        "device": "cpu", "schedule": {"name": "alternate", "unit": "batch", "every": 5}}


@pytest.fixture(scope="module")
def measured():
    return train({**TINY, "interference": ["second", "first"]}, progress=False)


def test_every_epoch_has_nll_accuracy_ece_and_the_interference_of_the_named_groups(measured):
    epochs = measured.epochs
    for col in ("val_loss", "val_acc", "val_ece", "test_loss", "test_acc", "test_ece", "grad_cosine",
                "delta_loss:second", "delta_loss:first", "interference_loss", "interference_ratio"):
        assert col in epochs and epochs[col].map(math.isfinite).all(), col
    assert ((epochs["test_ece"] >= 0) & (epochs["test_ece"] <= 1)).all()
    # Each group's own step lowers the held-out loss to first order on this easy task.
    assert (epochs["delta_loss:first"] < 0).all() and (epochs["delta_loss:second"] < 0).all()
    gain = -(epochs["delta_loss:first"] + epochs["delta_loss:second"])
    assert (epochs["interference_ratio"] - epochs["interference_loss"] / gain).abs().max() < 1e-9


def test_steps_count_trainable_parameters_exactly_and_the_summary_has_each_set(measured):
    steps, summary = measured.steps, measured.summary
    run = build_run(TINY)
    numel = {g.name: sum(p.numel() for p in run.groups.params(run.model, g.name)) for g in run.groups}
    want = {"first": numel["first"], "second": numel["second"]}
    assert {t: int(n) for t, n in zip(steps["trainable"], steps["trainable_params"])} == want
    sets = summary["trainable_sets"]
    assert set(sets) == {"first", "second"}
    assert sum(s["steps"] for s in sets.values()) == len(steps)
    for label, s in sets.items():
        assert s["trainable_params"] == want[label]
        assert s["step_time_ms"] > 0 and s["step_time_ms_median"] > 0
        assert s["peak_mem_bytes"] is None  # a CPU has no allocator peak: nothing is made up
    assert summary["peak_mem_bytes"] is None and summary["peak_mem_bytes_evaluation"] is None
    assert summary["test_nll"] == pytest.approx(measured.epochs["test_loss"].iloc[-1], rel=1e-6)
    assert summary["mean_interference_loss"] == pytest.approx(measured.epochs["interference_loss"].mean())
    assert math.isfinite(summary["mean_grad_cosine"]) and math.isfinite(summary["mean_interference_ratio"])


def test_without_interference_nothing_more_is_measured():
    result = train({**TINY, "epochs": 1}, progress=False)
    assert not [c for c in result.epochs if c.startswith(("delta_loss:", "interference"))]
    assert result.summary["mean_interference_loss"] is None and "grad_cosine" in result.epochs


@pytest.mark.parametrize("pair, message", [
    (["first"], r"interference names two different groups, e.g. \[lora, norm\], or is null; got \['first'\]"),
    (["first", "first"], r"interference names two different groups"),
    ("first,second", r"interference must be a list of names or null, got 'first,second'"),
])
def test_a_bad_interference_pair_is_one_line(pair, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({**TINY, "interference": pair})


def test_interference_needs_the_probe_and_groups_the_model_has():
    with pytest.raises(ConfigError, match=r"set grad_stats: true or interference: null"):
        RunConfig.from_dict({**TINY, "interference": ["first", "second"], "grad_stats": False})
    with pytest.raises(ConfigError, match=r"interference names group 'lora', which the model's groups do not have; "
                                          r"choose two of \['first', 'second'\]"):
        build_run({**TINY, "interference": ["lora", "first"]})


gpu = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA (run on the device machine)")


@gpu
@pytest.mark.gpu
def test_graphed_interference_equals_eager_and_follows_the_lr():
    """The graph path replays the probe (double backward included); the LR is applied on the host per epoch."""
    import torch

    cfg = {**TINY, "device": "cuda", "epochs": 3, "lr_schedule": "cosine", "interference": ["first", "second"]}
    ref = train({**cfg, "fast": "off"}, progress=False)
    fast = train({**cfg, "fast": "graph", "compile": "off"}, progress=False)
    assert fast.summary["peak_mem_bytes"] > 0
    for col in ("grad_cosine", "delta_loss:first", "delta_loss:second", "interference_loss"):
        torch.testing.assert_close(torch.tensor(fast.epochs[col].tolist()), torch.tensor(ref.epochs[col].tolist()),
                                   rtol=1e-2, atol=1e-6, msg=col)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("fast", ["off", "graph"])
def test_every_trainable_set_has_its_own_cuda_peak(fast):
    """Needs the steppers to call ``run.memory.track(fz.trainable)`` after each ``fz.step`` (issue 14)."""
    result = train({**TINY, "device": "cuda", "fast": fast, "compile": "off"}, progress=False)
    sets, summary = result.summary["trainable_sets"], result.summary
    assert all(isinstance(s["peak_mem_bytes"], int) and s["peak_mem_bytes"] > 0 for s in sets.values()), sets
    peaks = [s["peak_mem_bytes"] for s in sets.values()] + [summary["peak_mem_bytes_evaluation"]]
    assert summary["peak_mem_bytes"] >= max(peaks)  # the overall peak also covers the moments before the first step
