"""A run's input pipeline: augmentation seeded by (seed, epoch, step), resize, layout and precision.

The eager loop is the reference: on the CPU it must equal the obvious hand-written loop that
calls ``augment_crop_flip(x[idx], seed, epoch, step)`` per batch, bit for bit; on a GPU the
graph path (augmentation inside the captured graphs, bf16 autocast, channels-last) must equal
the eager loop within the tolerances stated in each test.
"""

from __future__ import annotations

import pytest
import torch

from freezelab.config import ConfigError
from freezelab.data import augment_crop_flip
from freezelab.run import build_run, train
from freezelab.run.compiled import model_loss
from freezelab.run.inputs import Inputs
from freezelab.run.steppers import batch_sizes
from freezelab.schedules import Clock

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA (run on the device machine)")

IMAGES = {"dataset": "digits", "model": "small_cnn", "epochs": 2, "batch_size": 100, "augment": "crop_flip",
          "grad_stats": False, "device": "cpu"}


def test_eager_augmented_training_equals_the_hand_written_loop():
    result = train(IMAGES, progress=False)
    run = build_run(IMAGES)  # same seed: same weights, data and batch order
    model, opt, x, y = run.model, run.freezer.optimizer, run.data.train.x, run.data.train.y
    losses = []
    for epoch in range(IMAGES["epochs"]):
        model.train()
        for step, idx in enumerate(run.batches.epoch_batches(epoch)):
            run.freezer.step(Clock.at(epoch * run.steps_per_epoch + step, run.steps_per_epoch, IMAGES["epochs"]))
            loss = model_loss(model, augment_crop_flip(x[idx], seed=0, epoch=epoch, step=step), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    assert result.steps["loss"].tolist() == pytest.approx(losses, rel=0, abs=0)
    for k, v in run.model.state_dict().items():
        assert torch.equal(result.model.state_dict()[k], v), k


def test_every_schedule_of_a_seed_sees_the_same_augmented_batches(monkeypatch):
    seen: dict[str, list[torch.Tensor]] = {}
    current: list[torch.Tensor] = []
    original = Inputs.train

    def recording(self, x, draws):
        out = original(self, x, draws)
        current.append(out.clone())
        return out

    monkeypatch.setattr(Inputs, "train", recording)
    for name in ("standard", "alternate"):
        current = seen.setdefault(name, [])
        train({**IMAGES, "epochs": 1, "schedule": {"name": name, "unit": "batch"} if name == "alternate" else {"name": name}},
              progress=False)
    assert len(seen["standard"]) == len(seen["alternate"]) > 1
    assert all(torch.equal(a, b) for a, b in zip(seen["standard"], seen["alternate"]))
    assert not torch.equal(seen["standard"][0], build_run(IMAGES).data.train.x[:100])  # it did augment


def test_epoch_draws_are_the_per_step_draws():
    inputs = Inputs(augment="crop_flip", seed=3, size=None, channels_last=False, bf16=False, device_type="cpu")
    sizes = batch_sizes(250, 100)
    assert sizes == [100, 100, 50]
    whole = inputs.epoch_draws(epoch=2, batch_sizes=sizes, device=torch.device("cpu"))
    start = 0
    for step, n in enumerate(sizes):
        one = inputs.step_draws(epoch=2, step=step, n=n, device=torch.device("cpu"))
        assert all(torch.equal(w[start : start + n], o) for w, o in zip(whole, one))
        start += n


def test_augmentation_and_channels_last_need_an_image_model():
    with pytest.raises(ConfigError, match="augment: crop_flip needs a model that takes images"):
        build_run({"dataset": "digits", "augment": "crop_flip"})
    with pytest.raises(ConfigError, match="channels_last: on needs a model that takes images"):
        build_run({"dataset": "digits", "channels_last": "on"})
    with pytest.raises(ConfigError, match="precision must be auto, fp32 or bf16"):
        build_run({"dataset": "digits", "precision": "fp16"})


def test_cpu_plan_is_float32_nchw_and_bf16_when_asked():
    plan = build_run(IMAGES).plan
    assert (plan.precision, plan.channels_last) == ("fp32", False)
    assert "bf16 pays off on CUDA only" in plan.precision_reason
    bf16 = train({**IMAGES, "precision": "bf16", "channels_last": "on"}, progress=False)
    fp32 = train(IMAGES, progress=False)
    assert bf16.summary["precision"] == "bf16" and fp32.summary["precision"] == "fp32"
    # bf16 autocast on the CPU: the same training within bf16 rounding (8 bits of mantissa).
    torch.testing.assert_close(torch.tensor(bf16.epochs["train_loss"].tolist()),
                               torch.tensor(fp32.epochs["train_loss"].tolist()), rtol=0.05, atol=0.02)
    assert next(bf16.model.parameters()).dtype == torch.float32  # parameters stay float32


def test_the_summary_names_the_data_copy_and_the_pipeline():
    summary = train({**IMAGES, "epochs": 1}, progress=False).summary
    assert summary["augment"] == "crop_flip" and summary["data_source"] != "unspecified"


# -- GPU: the graph path against the eager reference --------------------------------------------------
GPU_IMAGES = {**IMAGES, "device": "cuda", "epochs": 3, "grad_stats": True}


def _close(fast, ref, *, rtol: float, atol: float) -> None:
    torch.testing.assert_close(torch.tensor(fast.epochs["train_loss"].tolist()),
                               torch.tensor(ref.epochs["train_loss"].tolist()), rtol=rtol, atol=atol)
    for k, v in ref.model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(fast.model.state_dict()[k], v, rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@gpu
@pytest.mark.gpu
def test_graph_path_with_augmentation_bf16_and_channels_last_matches_eager():
    """Uncompiled: the graph replays the eager kernels, so the runs agree to float rounding (1e-3)."""
    ref = train({**GPU_IMAGES, "fast": "off"}, progress=False)
    fast = train({**GPU_IMAGES, "fast": "graph", "compile": "off"}, progress=False)
    assert fast.summary["precision"] == ref.summary["precision"] == "bf16"
    assert build_run(GPU_IMAGES).plan.channels_last
    _close(fast, ref, rtol=1e-3, atol=1e-4)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("schedule", [{"name": "standard"}, {"name": "alternate", "unit": "batch", "every": 3}])
def test_compiled_graph_path_with_augmentation_matches_eager(schedule):
    """Compiled: Inductor fuses and rounds bf16 work differently from the eager kernels.

    One step from the same start must agree to bf16 rounding (a wrong gradient would not);
    over 3 epochs the rounding differences grow as training amplifies them, so the trajectory
    is compared instead: per-epoch training loss within 5%, final accuracy within 3 points.
    """
    cfg = {**GPU_IMAGES, "schedule": schedule}
    run = build_run(cfg)
    assert run.plan.stepper == "graph" and run.plan.compiled, run.plan
    # SGD for the one-step check: its update is proportional to the gradient (Adam's first step is
    # lr * sign(g), which turns rounding noise in a near-zero gradient into a full lr-sized step).
    one = {**cfg, "subset": 100, "epochs": 1, "optimizer": "sgd_momentum", "lr": 0.05}  # one step of 100
    _close(train(one, progress=False), train({**one, "fast": "off"}, progress=False), rtol=1e-2, atol=1e-3)
    ref = train({**cfg, "fast": "off"}, progress=False)
    fast = train(cfg, progress=False)
    torch.testing.assert_close(torch.tensor(fast.epochs["train_loss"].tolist()),
                               torch.tensor(ref.epochs["train_loss"].tolist()), rtol=0.05, atol=0.01)
    assert abs(fast.summary["final_val_acc"] - ref.summary["final_val_acc"]) < 0.03


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("policy", ["keep", "remove"])
def test_dropout_masks_on_the_graph_path_are_the_eager_ones(policy):
    """seed000_mlp has dropout: with the warm-up's draws undone, graph replays draw the eager masks.

    Different masks would move the losses by about 1e-2 within an epoch; equal masks leave only
    the rounding of cuBLASLt's kernels (the graph path's) against cuBLAS's.
    """
    cfg = {"dataset": "digits", "model": "seed000_mlp", "epochs": 3, "batch_size": 64, "device": "cuda",
           "schedule": {"name": "alternate", "unit": "batch", "every": 5}, "policy": policy,
           "optimizer": "sgd_momentum", "lr": 0.01}  # SGD: see the compiled test on Adam's first step
    assert build_run(cfg).plan.stepper == "graph"
    ref = train({**cfg, "fast": "off"}, progress=False)
    fast = train(cfg, progress=False)
    torch.testing.assert_close(torch.tensor(fast.steps["loss"].tolist()), torch.tensor(ref.steps["loss"].tolist()),
                               rtol=1e-3, atol=1e-4)  # every step's loss: the masks are the same
    _close(fast, ref, rtol=1e-3, atol=1e-4)
