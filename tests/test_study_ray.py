"""Sweeps on Ray: a local 2-CPU Ray trains a grid into the same run folders as the local launcher, bit for bit,
even when one run's worker is killed mid-way (the retried task resumes from the run's checkpoint).

One Ray instance for the file (starting one costs seconds); the kill is ``FREEZELAB_CRASH_AT_CHECKPOINT``,
set before Ray starts so that its workers inherit it: the first run to write its checkpoint of epoch 2
SIGKILLs its own worker process, once (a marker file).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from freezelab.cli import app
from freezelab.config import ConfigError
from freezelab.run import record as run_folder
from freezelab.run.loop import CRASH_ENV
from freezelab.study import Experiment, run_experiment

GRID = {
    "experiment": "raytest",
    "seeds": 1,
    "base": {"dataset": "digits", "subset": 256, "epochs": 3, "batch_size": 32, "lr": 1e-2,
             "model_args": {"hidden": [32, 32]}, "save_every_s": 0, "grad_stats": False},
    "schedules": {"standard": {"name": "standard"}, "alternate": {"name": "alternate", "unit": "batch"},
                  "warmup": {"name": "warmup", "groups": ["first"], "steps": 10}},
}
#: Summary fields that measure time: they differ between any two runs.
TIMES = {"avg_epoch_time_s", "total_time_s", "train_time_s", "time_to_target_s", "throughput_samples_per_s",
         "step_time_ms", "trainable_sets"}  # per-set step times are timing


def test_ray_sweep_equals_the_local_one_and_survives_a_killed_worker(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from freezelab.study.ray_launcher import ray_launcher

    exp = Experiment.from_dict(GRID)
    local = run_experiment(exp, tmp_path / "local", lockstep=1)  # in this process, 1 thread (conftest)
    marker = tmp_path / "killed"
    monkeypatch.setenv(CRASH_ENV, f"2:{marker}")
    launcher = ray_launcher(cpus_per_run=1, max_retries=2, num_cpus=2)
    outcomes = run_experiment(exp, tmp_path / "ray", launcher=launcher)
    assert not ray.is_initialized()  # the launcher started Ray and stopped it
    assert marker.exists() and "epoch 2" in marker.read_text()  # one worker really was killed
    assert sorted(o.status for o in outcomes) == ["done"] * 3 and [o.status for o in local] == ["done"] * 3
    for variant in GRID["schedules"]:
        a, b = tmp_path / "local" / "raytest" / variant / "seed0", tmp_path / "ray" / "raytest" / variant / "seed0"
        wa, wb = run_folder.load_checkpoint(a)["model"], run_folder.load_checkpoint(b)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), variant
        sa, sb = run_folder.read_summary(a), run_folder.read_summary(b)
        assert {k: v for k, v in sa.items() if k not in TIMES} == {k: v for k, v in sb.items() if k not in TIMES}
        ea, eb = run_folder.read_table(a / run_folder.EPOCHS), run_folder.read_table(b / run_folder.EPOCHS)
        assert ea["train_loss"].tolist() == eb["train_loss"].tolist() and ea["epoch"].tolist() == [1, 2, 3]
    # finished runs are skipped before any task is scheduled (Ray is not even started)
    again = run_experiment(exp, tmp_path / "ray", launcher=launcher)
    assert [o.status for o in again] == ["skipped"] * 3 and not ray.is_initialized()


def test_ray_launcher_refuses_bad_resources():
    pytest.importorskip("ray")
    from freezelab.study.ray_launcher import ray_launcher

    with pytest.raises(ConfigError, match="cpus_per_run > 0"):
        ray_launcher(cpus_per_run=0)
    with pytest.raises(ConfigError, match="fractions of one GPU"):
        ray_launcher(gpus_per_run=1.5)


def test_without_ray_the_cli_says_how_to_install_it_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as when it is not installed
    grid = tmp_path / "grid.yaml"
    grid.write_text(json.dumps(GRID))
    result = CliRunner().invoke(app, ["run", str(grid), "--runs-dir", str(tmp_path), "--launcher", "ray"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'freezelab[ray]'" in lines[0], result.stderr
    assert not (tmp_path / "raytest").exists()
    bad = CliRunner().invoke(app, ["run", str(grid), "--runs-dir", str(tmp_path), "--launcher", "slurm"])
    assert bad.exit_code == 2 and "choose local or ray" in bad.stderr
