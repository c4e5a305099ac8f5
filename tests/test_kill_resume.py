"""Kill anywhere, lose nothing: runs SIGKILLed at many points resume to the uninterrupted result, bit for bit.

Nine tiny runs (digits subset, 3 epochs, a checkpoint after every epoch) cover every schedule
and every optimizer policy at least once, in four experiments (one per policy). They are
killed with ``$FREEZELAB_TEST_KILL_AT`` (:func:`freezelab.files.kill_point`): the process
SIGKILLs itself half-way through writing a named file, or right after it lands. Most kills
hit the runner in forked children (a fork costs milliseconds, a fresh interpreter five seconds
of importing torch); three go through ``freezelab run CONFIG`` as a subprocess, including a
kill during the report. After every interrupted process the next one resumes; at the end each
run's final weights and optimizer state (checkpoint), its epochs and steps tables and its
summary, less the timing fields, equal an uninterrupted run's exactly, and no temporary file
of an interrupted write is left anywhere.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from freezelab.files import KILL_AT
from freezelab.run import record
from freezelab.study import Experiment, run_experiment

BASE = {"dataset": "digits", "subset": 320, "epochs": 3, "batch_size": 64, "lr": 1e-2, "save_every_s": 0.0,
        "model_args": {"hidden": [16, 16]}, "device": "cpu"}
#: policy -> the schedules trained under it: every schedule and every policy at least once.
MATRIX: dict[str, dict[str, Any]] = {
    "keep": {
        "standard": {"name": "standard"},
        "freeze": {"name": "freeze", "groups": ["first"]},
        "progressive": {"name": "progressive", "freeze_start": 0.3},
    },
    "recreate": {
        "alternate-epoch": {"name": "alternate", "unit": "epoch"},
        "warmup": {"name": "warmup", "groups": ["first"], "steps": 5},
    },
    "remove": {
        "alternate-batch": {"name": "alternate", "unit": "batch", "every": 3},
        "freezeout": {"name": "freezeout", "t0": 0.5},
    },
    "release": {
        "block_cycle": {"name": "block_cycle", "every": 3},
        "random_layers": {"name": "random_layers", "k": 1, "every": 2},
    },
}
#: One more thing each experiment varies, so resume is checked with dropout's random stream too.
EXTRA = {"keep": {}, "recreate": {"model_args": {"hidden": [16, 16], "dropout": 0.2}},
         "remove": {"optimizer": "adamw"}, "release": {"optimizer": "sgd_momentum"}}
#: The forked runner's kill points, in order; each is reached (the process dies there) and the next resumes.
FORK_KILLS = ["config.yaml:1", "checkpoint.pt:1", "epochs.parquet:2", "checkpoint.pt:2:after", "steps.parquet:2",
              "plan.json:3", "summary.json:1", "checkpoint.pt:3", "summary.json:2:after", "epochs.parquet:4",
              "checkpoint.pt:5", "epochs.parquet:1:after"]
TIMING_COLUMNS = {"epoch_time_s", "train_time_s", "step_time_s"}
TIMING_SUMMARY = {"avg_epoch_time_s", "total_time_s", "train_time_s", "time_to_target_s",
                  "throughput_samples_per_s", "step_time_ms", "trainable_sets"}  # per-set step times: compared below


def experiment_data(policy: str) -> dict[str, Any]:
    return {"experiment": f"kill-{policy}", "seeds": 1, "base": {**BASE, "policy": policy, **EXTRA[policy]},
            "schedules": MATRIX[policy]}


def experiments() -> list[Experiment]:
    return [Experiment.from_dict(experiment_data(policy)) for policy in MATRIX]


def run_dirs(root: Path) -> list[Path]:
    return sorted(e.run_dir(root, cfg) for e in experiments() for cfg in e.configs())


def _run_all(root: str, kill_at: str | None) -> None:
    """A child process: the runner over every experiment, with a kill point set."""
    if kill_at:
        os.environ[KILL_AT] = kill_at
    for exp in experiments():
        outcomes = run_experiment(exp, root)
        failed = [o for o in outcomes if o.status == "failed"]
        if failed:
            raise SystemExit(f"{failed[0].run_dir}: {failed[0].error}")


def fork_run(root: Path, kill_at: str | None) -> int:
    child = mp.get_context("fork").Process(target=_run_all, args=(str(root), kill_at))
    child.start()
    child.join(timeout=120)
    assert child.exitcode is not None, "the child hung"
    return child.exitcode


def cli_run(config: Path, root: Path, kill_at: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop(KILL_AT, None)
    if kill_at:
        env[KILL_AT] = kill_at
    return subprocess.run([sys.executable, "-m", "freezelab.cli", "run", str(config), "--runs-dir", str(root)],
                          env=env, capture_output=True, text=True, timeout=180)


def same(a: Any, b: Any) -> bool:
    """Exact equality of nested checkpoint state (tensors bit for bit, NaN equal to NaN)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(
            torch.nan_to_num(a, nan=0.0) if a.is_floating_point() else a,
            torch.nan_to_num(b, nan=0.0) if b.is_floating_point() else b) and torch.equal(a.isnan(), b.isnan()) \
            if a.is_floating_point() else isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def assert_same_run(got: Path, want: Path) -> None:
    assert record.is_finished(got), got
    for name in (record.EPOCHS, record.STEPS):
        a, b = pd.read_parquet(got / name), pd.read_parquet(want / name)
        pd.testing.assert_frame_equal(a.drop(columns=TIMING_COLUMNS & set(a.columns)),
                                      b.drop(columns=TIMING_COLUMNS & set(b.columns)), check_exact=True, obj=f"{got}/{name}")
    a, b = record.read_summary(got), record.read_summary(want)
    assert same({k: v for k, v in a.items() if k not in TIMING_SUMMARY}, {k: v for k, v in b.items() if k not in TIMING_SUMMARY}), got
    untimed = lambda sets: {name: (s["steps"], s["trainable_params"]) for name, s in (sets or {}).items()}  # noqa: E731
    assert untimed(a.get("trainable_sets")) == untimed(b.get("trainable_sets")), got
    ca, cb = record.load_checkpoint(got), record.load_checkpoint(want)
    assert ca["epoch"] == cb["epoch"] == BASE["epochs"]
    assert same(ca["model"], cb["model"]), f"{got}: final weights differ"
    assert same(ca["freezer"], cb["freezer"]), f"{got}: final optimizer state differs"


def temporaries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*") if p.name.endswith(".tmp"))


@pytest.mark.slow
def test_runs_killed_anywhere_resume_to_the_uninterrupted_result(tmp_path):
    torch.set_num_threads(1)  # the forked children inherit one intra-op thread (their config's, too)
    reference = tmp_path / "reference"
    for exp in experiments():
        assert {o.status for o in run_experiment(exp, reference)} == {"done"}

    killed = tmp_path / "killed"
    # 1. `freezelab run` as a subprocess, killed while writing its second checkpoint.
    config = tmp_path / "kill-keep.yaml"
    config.write_text(yaml.safe_dump(experiment_data("keep")))
    cut = cli_run(config, killed, "checkpoint.pt:2")
    assert cut.returncode == -signal.SIGKILL, cut.stderr
    assert temporaries(killed), "a kill during a write leaves its temporary (cleaned up below)"

    # 2. The runner in forked children, killed at each point in turn; each resumes where the last died.
    for point in FORK_KILLS:
        assert fork_run(killed, point) == -signal.SIGKILL, f"kill point {point} was never reached"
    assert fork_run(killed, None) == 0

    # 3. `freezelab run` again: every run of the grid is finished, the kill hits the report's second PNG.
    cut = cli_run(config, killed, "*.png:2")
    assert cut.returncode == -signal.SIGKILL, cut.stderr
    report = killed / "kill-keep" / "report"
    assert temporaries(report), "the report write was interrupted half-way"
    done = cli_run(config, killed, None)
    assert done.returncode == 0, done.stderr
    assert "skipped" in done.stdout and (report / "report.html").is_file()

    for got, want in zip(run_dirs(killed), run_dirs(reference)):
        assert_same_run(got, want)
    assert temporaries(killed) == []  # every interrupted write's temporary was removed by a later one
