"""One training run: the run folder, identical starts, resume, divergence, and the seeds' accuracies."""

import dataclasses
import math

import pandas as pd
import pytest
import torch

from freezelab.config import ConfigError, RunConfig
from freezelab.run import TrainingDiverged, build_run, build_schedule, check_config, train
from freezelab.run import record as run_folder
from freezelab.run.steppers import EagerStepper

from conftest import data_root

# The eager loop on the CPU (also on a GPU machine): the graph path has its own tests (test_run_steppers.py).
TINY = {"dataset": "digits", "epochs": 3, "batch_size": 64, "lr": 1e-2, "model_args": {"hidden": [32, 32]}, "device": "cpu"}


def test_run_folder_has_everything_the_notebooks_log(tmp_path):
    train({**TINY, "schedule": {"name": "alternate", "unit": "epoch"}}, tmp_path, progress=False)
    for name in ("config.yaml", "epochs.parquet", "steps.parquet", "summary.json", "checkpoint.pt"):
        assert (tmp_path / name).exists(), name
    epochs = pd.read_parquet(tmp_path / "epochs.parquet")
    for col in ("epoch", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "epoch_time_s",
                "trainable", "trainable_fraction", "opt_state_bytes", "val_ece", "grad_cosine",
                "grad_mean_abs:fc1.weight", "grad_std:fc1.weight", "grad_pct_zero:fc1.weight", "dead_pct:act1"):
        assert col in epochs.columns, col
    assert epochs["trainable"].tolist() == ["first", "second", "first"]
    assert epochs["epoch"].tolist() == [1, 2, 3]
    assert ((epochs["val_acc"] >= 0) & (epochs["val_acc"] <= 1)).all()
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    assert set(steps.columns) >= {"step", "epoch", "loss", "trainable", "trainable_fraction", "step_time_s"}
    assert steps["step"].tolist() == list(range(len(steps)))
    summary = run_folder.read_summary(tmp_path)
    for key in ("final_val_acc", "best_val_acc", "best_epoch", "epoch_to_90pct_best", "final_test_acc", "stability",
                "mean_early_grad", "avg_epoch_time_s", "time_to_target_s", "peak_mem_bytes", "test_ece", "reliability",
                "throughput_samples_per_s", "step_time_ms", "device", "torch_version"):
        assert key in summary, key
    assert summary["final_val_acc"] > 0.5
    assert 0 < summary["stability"] <= 1
    assert summary["switches"] == 2


def test_identical_starts_whatever_the_schedule():
    runs = [build_run({**TINY, "schedule": s}) for s in (
        {"name": "standard"}, {"name": "alternate", "unit": "batch"}, {"name": "random_layers", "k": 1, "every": 2})]
    states = [r.model.state_dict() for r in runs]
    for other in states[1:]:
        assert all(torch.equal(states[0][k], other[k]) for k in states[0])
    for epoch in range(3):
        perms = [r.batches.epoch(epoch) for r in runs]
        assert all(torch.equal(perms[0], p) for p in perms[1:])
    assert all(torch.equal(runs[0].data.train.x, r.data.train.x) for r in runs[1:])
    other_seed = build_run({**TINY, "seed": 1})
    assert not torch.equal(other_seed.model.state_dict()["fc1.weight"], states[0]["fc1.weight"])


def test_same_seed_same_curve_and_schedule_changes_it():
    a = train(TINY, progress=False).epochs
    b = train(TINY, progress=False).epochs
    c = train({**TINY, "schedule": {"name": "alternate", "unit": "batch"}}, progress=False).epochs
    assert a["train_loss"].tolist() == b["train_loss"].tolist()
    assert a["train_loss"].tolist() != c["train_loss"].tolist()


def test_frozen_half_really_does_not_move_during_training():
    cfg = {**TINY, "schedule": {"name": "freeze", "groups": ["first"]}, "optimizer": "adamw", "weight_decay": 0.1}
    start = {k: v.clone() for k, v in build_run(cfg).model.state_dict().items()}
    model = train(cfg, progress=False).model
    end = model.state_dict()
    assert torch.equal(start["fc1.weight"], end["fc1.weight"]) and torch.equal(start["fc1.bias"], end["fc1.bias"])
    assert not torch.equal(start["fc3.weight"], end["fc3.weight"])


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = {**TINY, "epochs": 4, "schedule": {"name": "alternate", "unit": "batch", "every": 3}, "policy": "remove",
           "model_args": {"hidden": [32, 32], "dropout": 0.2},  # dropout: the RNG stream must resume too
           "save_every_s": 0.0}  # a checkpoint after every epoch
    full = train(cfg, tmp_path / "full", progress=False)

    real = run_folder.save_progress
    calls = []

    def crash_after_two(run, run_dir, rows, step_rows, epoch):
        real(run, run_dir, rows, step_rows, epoch)
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "save_progress", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(run_folder, "save_progress", real)
    assert not run_folder.is_finished(tmp_path / "cut")
    resumed = train(cfg, tmp_path / "cut", progress=False)
    assert resumed.epochs["train_loss"].tolist() == full.epochs["train_loss"].tolist()
    assert resumed.epochs["val_acc"].tolist() == full.epochs["val_acc"].tolist()
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_checkpoints_are_written_at_most_every_save_interval_and_at_the_end(tmp_path, monkeypatch):
    real, saved = run_folder.save_progress, []

    def count(run, run_dir, rows, step_rows, epoch):
        real(run, run_dir, rows, step_rows, epoch)
        saved.append(epoch)

    monkeypatch.setattr(run_folder, "save_progress", count)
    train({**TINY, "epochs": 4}, tmp_path / "run", progress=False)
    assert saved == [3]  # a tiny run takes far less than save_every_s (20 s): only its last epoch
    assert run_folder.is_finished(tmp_path / "run")


def test_a_stop_between_checkpoints_keeps_the_epochs_and_a_resume_redoes_them(tmp_path, monkeypatch):
    """Epochs logged after the last checkpoint are on disk after a crash, then trained again on resume."""
    cfg = {**TINY, "epochs": 4, "model_args": {"hidden": [32, 32], "dropout": 0.2}, "save_every_s": 0.0}
    full = train(cfg, tmp_path / "full", progress=False)
    real_save, real_epoch = run_folder.save_progress, EagerStepper.run_epoch

    def save_once(run, *args):
        real_save(run, *args)
        run.config.save_every_s = 1e9  # epoch 1 is checkpointed, no later one

    def crash_in_epoch_3(self, epoch, perm, bar=None):
        if epoch == 2:
            raise RuntimeError("power cut")
        return real_epoch(self, epoch, perm, bar)

    monkeypatch.setattr(run_folder, "save_progress", save_once)
    monkeypatch.setattr(EagerStepper, "run_epoch", crash_in_epoch_3)
    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg, tmp_path / "cut", progress=False)
    assert run_folder.read_table(tmp_path / "cut" / run_folder.EPOCHS)["epoch"].tolist() == [1, 2]
    assert run_folder.load_checkpoint(tmp_path / "cut")["epoch"] == 1

    monkeypatch.setattr(EagerStepper, "run_epoch", real_epoch)
    resumed = train(cfg, tmp_path / "cut", progress=False)
    assert resumed.epochs["epoch"].tolist() == [1, 2, 3, 4]
    assert resumed.epochs["train_loss"].tolist() == full.epochs["train_loss"].tolist()
    steps = run_folder.read_table(tmp_path / "cut" / run_folder.STEPS)
    assert steps["step"].tolist() == list(range(len(steps)))  # no step logged twice


def test_nan_loss_is_a_clear_error_and_keeps_finished_epochs(tmp_path, monkeypatch):
    real = EagerStepper.run_epoch

    def poisoned(self, epoch, perm, bar=None):
        record = real(self, epoch, perm, bar)
        return dataclasses.replace(record, losses=record.losses * float("nan")) if epoch == 1 else record

    monkeypatch.setattr(EagerStepper, "run_epoch", poisoned)
    with pytest.raises(TrainingDiverged, match="epoch 2.*lower lr.*1 finished epochs are kept"):
        train({**TINY, "save_every_s": 0.0}, tmp_path, progress=False)  # a checkpoint after every finished epoch
    kept = pd.read_parquet(tmp_path / "epochs.parquet")
    assert kept["epoch"].tolist() == [1] and math.isfinite(kept["train_loss"][0])
    assert not run_folder.is_finished(tmp_path)
    assert run_folder.load_checkpoint(tmp_path)["epoch"] == 1  # the diverged state is never checkpointed


def test_bad_config_is_one_clear_line():
    with pytest.raises(ConfigError, match="unknown run option 'epoch'.*did you mean 'epochs'"):
        RunConfig.from_dict({"epoch": 3})
    # Names in the registries are checked where a run is built (the config is plain data).
    with pytest.raises(ConfigError, match="unknown schedule 'alternating'"):
        check_config(RunConfig.from_dict({"schedule": {"name": "alternating"}}))
    with pytest.raises(ConfigError, match="optimizer 'adagrad' is unknown"):
        check_config(RunConfig.from_dict({"optimizer": "adagrad"}))
    with pytest.raises(ConfigError, match="dataset 'imagenet' is unknown"):
        build_run({"dataset": "imagenet"})
    with pytest.raises(ConfigError, match="policy 'freeze' is unknown"):
        check_config(RunConfig.from_dict({"policy": "freeze"}))


def test_lr_schedule_is_logged_as_applied():
    epochs = train({**TINY, "epochs": 4, "optimizer": "sgd", "lr": 0.1, "lr_schedule": "step"}, progress=False).epochs
    # step: step_size = max(1, 4 // 3) = 1 epoch, gamma 0.1
    assert epochs["lr"].tolist() == pytest.approx([0.1, 0.01, 0.001, 0.0001])


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe,threshold",
    [
        # seed 004: Fashion-MNIST 90/10, FashionMLP, Adam 1e-3, batch 128; a few epochs reach 85%
        ({"dataset": "fashion_mnist", "recipe": "fmnist_90_10", "model": "fashion_mlp", "epochs": 3}, 0.85),
        # seed 001: MNIST 10k subset 80/20, 784-256-256-256-10, Adam 1e-3, batch 128; 95%
        ({"dataset": "mnist", "recipe": "mnist10k_80_20", "model": "seed001_mlp", "epochs": 8}, 0.95),
    ],
    ids=["seed004_fashion_mnist", "seed001_mnist"],
)
def test_seed_recipes_reach_their_accuracy_on_real_data(recipe, threshold):
    root = data_root()
    if root is None:
        pytest.skip("FREEZELAB_DATA is not set to a folder with MNIST/ and FashionMNIST/ (make test sets it)")
    result = train({**recipe, "data_root": root, "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "seed": 42},
                   progress=False)
    assert result.summary["best_val_acc"] >= threshold, result.epochs[["epoch", "val_acc"]]


def test_tensorboard_scalars_are_written(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train({**TINY, "epochs": 2, "tensorboard": True}, tmp_path, progress=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "val_acc" in tags and "grad_mean_abs/fc1.weight" in tags
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2]
    with pytest.raises(ConfigError, match="needs a run folder"):
        train({**TINY, "tensorboard": True}, progress=False)


def test_random_schedules_draw_from_the_run_seed_unless_given_one():
    lisa = {"name": "random_layers", "k": 1, "every": 2}
    a = build_schedule(RunConfig.from_dict({**TINY, "schedule": lisa, "seed": 0}))
    b = build_schedule(RunConfig.from_dict({**TINY, "schedule": lisa, "seed": 1}))
    assert (a.seed, b.seed) == (0, 1)
    pinned = build_schedule(RunConfig.from_dict({**TINY, "schedule": {**lisa, "seed": 7}, "seed": 1}))
    assert pinned.seed == 7
    nested = {"name": "warmup", "groups": ["first"], "steps": 3, "then": {"name": "block_cycle", "order": "random"}}
    assert build_schedule(RunConfig.from_dict({**TINY, "schedule": nested, "seed": 5})).then.seed == 5


def test_outside_a_terminal_progress_is_one_log_line_per_epoch(caplog, capsys):
    import logging

    with caplog.at_level(logging.INFO, logger="freezelab.progress"):
        train({**TINY, "variant": "alt"}, progress=None)  # pytest's stderr is no terminal
    lines = [r.getMessage() for r in caplog.records if r.name == "freezelab.progress"]
    assert [line.split(" loss ")[0] for line in lines] == ["alt epoch 1/3", "alt epoch 2/3", "alt epoch 3/3"]
    assert all(" val " in line and line.endswith(" s)") for line in lines)
    # No progress bar drawn into the pipe (stderr holds at most these lines, if the CLI's handler is installed).
    assert set(capsys.readouterr().err.splitlines()) <= set(lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="freezelab.progress"):
        train(TINY, progress=False)
    assert [r for r in caplog.records if r.name == "freezelab.progress"] == []
