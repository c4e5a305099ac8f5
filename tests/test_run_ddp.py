"""``freezelab run``/``train`` under torchrun: 2 CPU processes (gloo) on a digits subset, against one process.

The engine (FreezingDDP, shards) is tested in ``test_distributed.py``; this file tests the run
layer and the CLI on top of it. One module fixture runs a grid of every schedule once with
``torchrun --nproc_per_node 2 -m freezelab run`` (a torchrun start costs seconds: two Python
processes import torch and DDP imports Dynamo), with ``FREEZELAB_DDP_CHECK=1``, so every rank
compares its weights with the other's before every step and at every epoch's end, and the
launch fails if they ever differ. The same grid then trains in this process without DDP for
the comparison. The rest runs the CLI in two forked processes (:func:`freezelab.distributed.launch`,
milliseconds to start): a run killed after a checkpoint (``FREEZELAB_CRASH_AT_CHECKPOINT``) and
resumed, rank 1 writing nothing, bad setups.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from typer.testing import CliRunner

from freezelab.cli import app
from freezelab.config import ConfigError
from freezelab.distributed import DistributedFreezingError, ShardingError, launch
from freezelab.run import build_run, ddp
from freezelab.run import record as run_folder
from freezelab.run.loop import CRASH_ENV
from freezelab.study import Experiment, run_experiment

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

SRC = Path(__file__).resolve().parents[1] / "src"
# 249 examples, batches of 32: 7 full batches and a last one of 25, split 13 + 12 (an uneven share).
BASE = {"dataset": "digits", "subset": 249, "epochs": 3, "batch_size": 32, "lr": 1e-2,
        "model_args": {"hidden": [32, 32]}, "save_every_s": 0, "grad_stats": False}
SCHEDULES = {
    "warmup": {"name": "warmup", "groups": ["first"], "steps": 10},
    "standard": {"name": "standard"},
    "alternate": {"name": "alternate", "unit": "batch", "every": 3},
    "freeze": {"name": "freeze", "groups": ["first"]},
    "progressive": {"name": "progressive"},
    "freezeout": {"name": "freezeout"},
    "block_cycle": {"name": "block_cycle", "every": 4},
    "random_layers": {"name": "random_layers", "k": 1, "every": 5},
}
GRID = {"experiment": "ddp", "seeds": 1, "base": BASE, "schedules": SCHEDULES}
# float32, 24 steps of Adam on 2 ranks vs 1 process: DDP averages two half-batch gradients where one process
# takes one batch mean. Measured on this grid: at most 1.2e-6 in a weight (block_cycle), mostly 1e-7; losses
# within 2.4e-7, accuracies equal.
TOLERANCE = 1e-5


def _torchrun(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "freezelab", *args]
    full_env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                "OMP_NUM_THREADS": "1", "CI": "true", **env}
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=300)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp")
    grid = tmp / "grid.yaml"
    grid.write_text(json.dumps(GRID))  # JSON is YAML
    done = _torchrun("run", str(grid), "--runs-dir", str(tmp / "ddp"), "--no-report", env={ddp.CHECK_ENV: "1"})
    run_experiment(Experiment.from_dict(GRID), tmp / "single", lockstep=1)
    return {"tmp": tmp, "done": done}


def _folder(sweep: dict, where: str, variant: str) -> Path:
    return sweep["tmp"] / where / "ddp" / variant / "seed0"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return run_folder.load_checkpoint(folder)["model"]


def _config(variant: str) -> dict:
    return {**BASE, "experiment": "ddp", "variant": variant, "schedule": SCHEDULES[variant]}


def test_every_schedule_trains_under_torchrun_with_the_ranks_in_sync_at_every_step(sweep):
    assert sweep["done"].returncode == 0, sweep["done"].stdout[-3000:] + sweep["done"].stderr[-3000:]
    assert sweep["done"].stdout.count(" done ") == len(SCHEDULES)  # rank 0 reports, rank 1 says nothing
    for variant in SCHEDULES:
        folder = _folder(sweep, "ddp", variant)
        assert run_folder.is_finished(folder), variant
        epochs = run_folder.read_table(folder / run_folder.EPOCHS)
        assert epochs["epoch"].tolist() == [1, 2, 3]
        assert epochs["train_loss"].iloc[-1] < epochs["train_loss"].iloc[0], variant
        plan = run_folder.read_plan(folder)
        assert plan["world_size"] == 2 and plan["stepper"] == "eager" and "DDP" in plan["stepper_reason"]


def test_result_matches_a_single_process_run_with_the_same_global_batch(sweep):
    worst = {}
    for variant in SCHEDULES:
        a, b = _weights(_folder(sweep, "ddp", variant)), _weights(_folder(sweep, "single", variant))
        worst[variant] = max((a[k] - b[k]).abs().max().item() for k in a)
        single = run_folder.read_table(_folder(sweep, "single", variant) / run_folder.EPOCHS)
        distributed = run_folder.read_table(_folder(sweep, "ddp", variant) / run_folder.EPOCHS)
        # the logged loss is the global batch's mean over both ranks, not rank 0's share
        assert (distributed["train_loss"] - single["train_loss"]).abs().max() < TOLERANCE, variant
        assert run_folder.read_plan(_folder(sweep, "single", variant))["world_size"] == 1
    assert max(worst.values()) < TOLERANCE, worst


def test_frozen_weights_stay_bit_identical_and_a_thawed_group_trains_from_its_first_step(sweep):
    initial = {k: v.clone() for k, v in build_run(_config("freeze")).model.state_dict().items()}
    frozen = _weights(_folder(sweep, "ddp", "freeze"))
    first = [k for k in initial if k.startswith("fc1.")]  # group "first" of the default halves
    assert first and all(torch.equal(frozen[k], initial[k]) for k in first)
    assert not all(torch.equal(frozen[k], initial[k]) for k in initial)
    # warm-up: "first" frozen for 10 steps, then all-reduced (the ranks stayed in sync, the result is one
    # process's): it moved, and exactly from step 10 on
    steps = run_folder.read_table(_folder(sweep, "ddp", "warmup") / run_folder.STEPS)
    assert ["first" in t for t in steps["trainable"]] == [s >= 10 for s in steps["step"]]
    thawed = _weights(_folder(sweep, "ddp", "warmup"))
    assert all(not torch.equal(thawed[k], initial[k]) for k in first)


# --- cheaper checks in two forked processes --------------------------------------------------------------
def _train_into_own_folder(rank: int, world: int, tmp: Path) -> None:
    """Each rank runs the CLI with its own --out: only rank 0's may be written to."""
    result = CliRunner().invoke(app, ["train", "--dataset", "digits", "--epochs", "2", "--batch-size", "32",
                                      "--set", "subset=128", "--set", "model_args={hidden: [16]}",
                                      "--out", str(tmp / f"rank{rank}")])
    assert result.exit_code == 0, result.output
    (tmp / f"output{rank}.txt").write_text(result.output)


def test_only_rank_0_writes_the_run_folder_and_prints_the_result(tmp_path):
    launch(_train_into_own_folder, 2, tmp_path, timeout_s=120)
    assert {p.name for p in (tmp_path / "rank0").iterdir()} >= {run_folder.CONFIG, run_folder.PLAN, run_folder.EPOCHS,
                                                                 run_folder.SUMMARY, run_folder.CHECKPOINT}
    assert not (tmp_path / "rank1").exists()
    assert "x 2 processes (DDP)" in (tmp_path / "output0.txt").read_text()
    assert (tmp_path / "output1.txt").read_text() == ""


def _train_warmup(rank: int, world: int, config: Path, out: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output


def test_a_killed_ddp_run_resumes_on_every_rank_and_continues_identically(sweep, tmp_path, monkeypatch):
    """Rank 0 is killed after its checkpoint of epoch 2; the rerun loads it on both ranks and ends bit for bit
    where the uninterrupted torchrun run of the same config ended."""
    config = tmp_path / "warmup.yaml"
    config.write_text(json.dumps(_config("warmup")))
    marker = tmp_path / "killed"
    monkeypatch.setenv(CRASH_ENV, f"2:{marker}")
    with pytest.raises(Exception, match="signal|SIGKILL|exit"):
        launch(_train_warmup, 2, config, tmp_path / "cut", timeout_s=120)
    assert "epoch 2" in marker.read_text()
    assert run_folder.load_checkpoint(tmp_path / "cut")["epoch"] == 2 and not run_folder.is_finished(tmp_path / "cut")
    launch(_train_warmup, 2, config, tmp_path / "cut", timeout_s=120)
    whole = _folder(sweep, "ddp", "warmup")
    a, b = _weights(tmp_path / "cut"), _weights(whole)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for table in (run_folder.EPOCHS, run_folder.STEPS):
        x, y = run_folder.read_table(tmp_path / "cut" / table), run_folder.read_table(whole / table)
        for column in ("train_loss", "val_acc", "loss", "trainable"):
            if column in x:
                assert x[column].tolist() == y[column].tolist(), (table, column)


def _bad_setups(rank: int, world: int, tmp: Path) -> None:
    with pytest.raises(ShardingError, match="does not split over 2 processes"):
        build_run({**BASE, "batch_size": 33})
    with pytest.raises(ShardingError, match="fewer than the 2"):
        build_run({**BASE, "subset": 129, "batch_size": 32})  # a last batch of 1 example
    with pytest.raises(ConfigError, match="one after another"):
        run_experiment(Experiment.from_dict(GRID), tmp / "runs", jobs=2)
    run = build_run(BASE)
    run.ddp.check = True
    run.ddp.check_in_sync("at the start")  # identical builds: in sync
    if rank == 1:
        with torch.no_grad():
            next(run.model.parameters()).view(-1)[0] += 1e-7
    with pytest.raises(DistributedFreezingError, match="the ranks hold different weights"):
        run.ddp.check_in_sync("after a nudge")
    (tmp / f"ok{rank}").touch()


def test_bad_ddp_setups_fail_on_every_rank_with_the_fix(tmp_path):
    launch(_bad_setups, 2, tmp_path, timeout_s=120)
    assert (tmp_path / "ok0").exists() and (tmp_path / "ok1").exists()


def test_torchrun_environment_is_read_and_a_plain_process_is_rank_0(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert ddp.torchrun_env() is None and ddp.world_size() == 1 and ddp.is_lead()
    with ddp.process_group() as env:  # outside torchrun: nothing to join
        assert env is None and not dist.is_initialized()
    assert ddp.torchrun_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == ddp.Torchrun(3, 1, 4)
    with pytest.raises(ConfigError, match="not integers"):
        ddp.torchrun_env({"WORLD_SIZE": "four", "RANK": "0", "LOCAL_RANK": "0"})


# small_cnn has BatchNorm, whose per-rank statistics make the weights differ by construction (docs/scaling.md):
# what must match one process here is what the model is fed, example for example.
AUGMENTED = {"dataset": "digits", "subset": 249, "epochs": 1, "batch_size": 48, "model": "small_cnn",
             "augment": "crop_flip", "grad_stats": False}  # a last batch of 9: 5 + 4


def _training_inputs(out: Path | None = None) -> list[torch.Tensor]:
    """Train AUGMENTED, recording every training batch the model is fed (after augmentation)."""
    from freezelab.run.loop import Training, run_training

    training = Training(AUGMENTED, progress=False)
    fed: list[torch.Tensor] = []
    training.run.model.register_forward_pre_hook(
        lambda module, args: fed.append(args[0].detach().clone()) if module.training else None)
    run_training(training)
    if out is not None:
        torch.save(fed, out)
    return fed


def _record_inputs(rank: int, world: int, out: Path) -> None:
    _training_inputs(out / f"fed{rank}.pt")


def test_ranks_are_fed_their_share_of_the_single_process_augmented_batches(tmp_path):
    """Crop-and-flip draws are laid out per position of the epoch, and each rank takes its positions' draws."""
    launch(_record_inputs, 2, tmp_path, timeout_s=120)
    ranks = [torch.load(tmp_path / f"fed{r}.pt") for r in range(2)]
    single = _training_inputs()
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 6
    assert [len(b) for b in ranks[0]][-1] == 5 and [len(b) for b in ranks[1]][-1] == 4
    for step, whole in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][step], ranks[1][step]]), whole), step


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (run on the device machine)")
def test_torchrun_on_two_gpus_trains_over_nccl_and_matches_one_gpu(tmp_path):
    """Each rank on cuda:LOCAL_RANK, NCCL for the all-reduces; the eager single-GPU run is the reference."""
    from freezelab.run import train

    config = {**BASE, "subset": None, "epochs": 2, "batch_size": 64, "device": "cuda", "fast": "off",
              "schedule": {"name": "alternate", "unit": "batch", "every": 3}}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(config))
    done = _torchrun("train", "--config", str(path), "--out", str(tmp_path / "two"), env={ddp.CHECK_ENV: "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plan = run_folder.read_plan(tmp_path / "two")
    assert plan["device"] == "cuda:0" and plan["world_size"] == 2 and plan["stepper"] == "eager"
    single = train(config, tmp_path / "one", progress=False).model.state_dict()
    two = run_folder.load_checkpoint(tmp_path / "two")["model"]
    worst = max((two[k].cpu() - single[k].cpu()).abs().max().item() for k in single)
    assert worst < 1e-4, worst
