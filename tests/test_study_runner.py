"""The runner: one folder per run, skip what is finished, resume what is not, refuse a changed config.

Runs are tiny (digits, 32-unit MLP, 3 epochs, about 0.2 s each) so the whole file stays a few
seconds apart from the two-worker test, which pays for starting two Python processes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from freezelab.run import record as run_folder
from freezelab.run import train
from freezelab.study import ConfigChanged, Experiment, RunOutcome, check_run_dir, run_experiment

BASE = {"dataset": "digits", "epochs": 3, "batch_size": 64, "lr": 1e-2, "model_args": {"hidden": [32, 32]}}
SCHEDULES = {"standard": {"name": "standard"}, "alternate-epoch": {"name": "alternate", "unit": "epoch"}}


def tiny(**changes) -> Experiment:
    data = {"experiment": "tiny", "seeds": 2, "base": BASE, "schedules": SCHEDULES}
    return Experiment.from_dict({**data, **changes})


def statuses(outcomes: list[RunOutcome], root: Path) -> dict[str, str]:
    return {o.run_dir.relative_to(root).as_posix(): o.status for o in outcomes}


def epochs_of(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / run_folder.EPOCHS)


CURVE = ["epoch", "train_loss", "val_loss", "val_acc", "test_acc", "trainable"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The tiny experiment, run once; tests that change nothing on disk share it."""
    root = tmp_path_factory.mktemp("runs")
    run_experiment(tiny(), root)
    return root


def test_one_folder_per_run_in_the_documented_layout(finished):
    folders = sorted(p.relative_to(finished).as_posix() for p in finished.glob("*/*/*") if p.is_dir())
    assert folders == ["tiny/alternate-epoch/seed0", "tiny/alternate-epoch/seed1", "tiny/standard/seed0", "tiny/standard/seed1"]
    for folder in folders:
        run_dir = finished / folder
        assert run_folder.is_finished(run_dir)
        saved = run_folder.read_config(run_dir)
        assert saved["experiment"] == "tiny" and saved["variant"] == folder.split("/")[1]
        assert saved["seed"] == int(folder[-1])
        assert epochs_of(run_dir)["epoch"].tolist() == [1, 2, 3]
    assert epochs_of(finished / "tiny/alternate-epoch/seed0")["trainable"].tolist() == ["first", "second", "first"]


def test_rerun_skips_finished_runs_and_touches_nothing(finished):
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    seen = []
    outcomes = run_experiment(tiny(), finished, on_result=seen.append)
    assert set(statuses(outcomes, finished).values()) == {"skipped"} and len(outcomes) == 4
    assert seen == outcomes
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()} == before


def test_a_runner_run_is_the_plain_train_run(finished):
    std = epochs_of(finished / "tiny/standard/seed0")
    again = train({**BASE, "seed": 0}, progress=False).epochs
    assert std["train_loss"].tolist() == again["train_loss"].tolist()


def test_a_changed_config_is_refused_before_anything_trains(finished):
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    with pytest.raises(ConfigChanged) as info:
        run_experiment(tiny(base={**BASE, "lr": 0.02}), finished)
    message = str(info.value)
    assert "\n" not in message
    assert "lr=0.01" in message and "lr=0.02" in message and "tiny/standard/seed0 holds a run" in message
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()} == before


def test_the_same_schedule_spelled_out_is_not_a_change(finished):
    spelled = {**SCHEDULES, "alternate-epoch": {"name": "alternate", "unit": "epoch", "every": 1, "groups": None}}
    outcomes = run_experiment(tiny(schedules=spelled), finished)
    assert {o.status for o in outcomes} == {"skipped"}


def test_groups_left_unset_and_the_models_default_spelled_out_are_one_run(finished, tmp_path):
    assert run_folder.read_config(finished / "tiny/standard/seed0")["groups"] == {"by": "depth", "blocks": 2}
    spelled = tiny(base={**BASE, "groups": {"by": "depth", "blocks": 2}})
    assert {o.status for o in run_experiment(spelled, finished)} == {"skipped"}
    cfg = tiny().configs()[0]
    run_folder.write_config(tmp_path, {**cfg.to_dict(), "groups": None})  # a folder that kept "unset"
    assert check_run_dir(tmp_path, cfg) is False  # unfinished, and no ConfigChanged
    with pytest.raises(ConfigChanged, match="groups="):
        check_run_dir(tmp_path, tiny(base={**BASE, "groups": {"by": "layers"}}).configs()[0])


def test_check_run_dir_on_an_empty_folder(tmp_path):
    cfg = tiny().configs()[0]
    assert check_run_dir(tmp_path / "nothing-here", cfg) is False


def test_failing_run_is_reported_the_others_finish_and_a_rerun_resumes_it(tmp_path, monkeypatch):
    real = run_folder.save_progress
    trained: list[tuple[str, int]] = []

    def record(run, run_dir, rows, step_rows, epoch):
        real(run, run_dir, rows, step_rows, epoch)
        if run_dir is not None:
            trained.append((Path(run_dir).relative_to(tmp_path).as_posix(), epoch))

    def power_cut(run, run_dir, rows, step_rows, epoch):
        record(run, run_dir, rows, step_rows, epoch)
        if run.config.variant == "alternate-epoch" and run.config.seed == 0 and epoch == 0:
            raise RuntimeError("power cut")  # after epoch 1 and its checkpoint are on disk

    every_epoch = {**BASE, "save_every_s": 0.0}  # a checkpoint after every epoch (no new run: an execution knob)
    monkeypatch.setattr(run_folder, "save_progress", power_cut)
    first = run_experiment(tiny(base=every_epoch), tmp_path)
    assert statuses(first, tmp_path) == {
        "tiny/standard/seed0": "done",
        "tiny/standard/seed1": "done",
        "tiny/alternate-epoch/seed0": "failed",
        "tiny/alternate-epoch/seed1": "done",
    }
    failed = next(o for o in first if o.status == "failed")
    assert failed.error == "RuntimeError: power cut"
    cut = tmp_path / "tiny/alternate-epoch/seed0"
    assert not run_folder.is_finished(cut) and epochs_of(cut)["epoch"].tolist() == [1]

    trained.clear()
    monkeypatch.setattr(run_folder, "save_progress", record)
    second = run_experiment(tiny(base=every_epoch), tmp_path)
    assert statuses(second, tmp_path)["tiny/alternate-epoch/seed0"] == "done"
    assert sorted(s for s in statuses(second, tmp_path).values()) == ["done", "skipped", "skipped", "skipped"]
    assert trained == [("tiny/alternate-epoch/seed0", 1), ("tiny/alternate-epoch/seed0", 2)]  # epochs 2 and 3 only
    uninterrupted = train({**BASE, "seed": 0, "schedule": SCHEDULES["alternate-epoch"]}, progress=False).epochs
    pd.testing.assert_frame_equal(epochs_of(cut)[CURVE], uninterrupted[CURVE], check_dtype=False)


def test_a_run_that_cannot_start_fails_alone(tmp_path):
    # The schedule names a group the model does not have: only building the model can tell.
    exp = tiny(seeds=1, schedules={**SCHEDULES, "bad": {"name": "freeze", "groups": ["nope"]}})
    outcomes = run_experiment(exp, tmp_path)
    by_variant = {o.run_dir.parent.name: o for o in outcomes}
    assert [by_variant[v].status for v in ("standard", "alternate-epoch", "bad")] == ["done", "done", "failed"]
    assert "ScheduleError" in by_variant["bad"].error and "'nope'" in by_variant["bad"].error


def test_two_worker_processes_give_the_same_results_as_one(tmp_path, finished):
    exp = tiny(schedules={**SCHEDULES, "bad": {"name": "freeze", "groups": ["nope"]}})
    outcomes = run_experiment(exp, tmp_path, jobs=2)
    status = statuses(outcomes, tmp_path)
    assert len(status) == 6 and [v for k, v in status.items() if "/bad/" in k] == ["failed", "failed"]
    assert all(v == "done" for k, v in status.items() if "/bad/" not in k)
    assert all("ScheduleError" in o.error for o in outcomes if o.status == "failed")
    for run in ("standard/seed0", "standard/seed1", "alternate-epoch/seed0", "alternate-epoch/seed1"):
        one, two = epochs_of(finished / "tiny" / run), epochs_of(tmp_path / "tiny" / run)
        pd.testing.assert_frame_equal(one[CURVE], two[CURVE])
        s1, s2 = run_folder.read_summary(finished / "tiny" / run), run_folder.read_summary(tmp_path / "tiny" / run)
        assert (s1["final_val_acc"], s1["final_test_acc"], s1["switches"]) == (s2["final_val_acc"], s2["final_test_acc"], s2["switches"])
