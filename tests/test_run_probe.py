"""The timing probe: each trainable set of a run timed alone, and the report reading it.

Runs are tiny (digits, 16-unit MLP, 2 epochs on the CPU), so the probe's few steps take
milliseconds; the lockstep group a GPU sweep would record is faked in the summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freezelab.report import collect_all, format_table, summary_table
from freezelab.run import record, train
from freezelab.run.build import build_run
from freezelab.run.probe import read_timing_probe, trainable_set_shares, write_timing_probe

TINY = {"dataset": "digits", "epochs": 2, "batch_size": 64, "model_args": {"hidden": [16]}, "device": "cpu",
        "experiment": "probe", "grad_stats": False}


def test_trainable_set_shares_follow_the_schedule() -> None:
    run = build_run({**TINY, "schedule": {"name": "alternate", "unit": "epoch"}})
    shares = trainable_set_shares(run)
    spe = run.steps_per_epoch
    assert {tuple(sorted(k)): v for k, v in shares.items()} == {("first",): (0, 0.5), ("second",): (spe, 0.5)}


def test_probe_times_each_set_and_the_report_labels_it(tmp_path: Path) -> None:
    runs = {}
    for variant, schedule in (("standard", {"name": "standard"}), ("alternate-epoch", {"name": "alternate", "unit": "epoch"})):
        run_dir = tmp_path / "probe" / variant / "seed0"
        train({**TINY, "variant": variant, "schedule": schedule}, run_dir, progress=False)
        summary = record.read_summary(run_dir)  # as the lockstep driver records a group on a GPU
        record.write_summary(run_dir, summary | {"timed_alone": False, "lockstep_group": ["standard/seed0", "alternate-epoch/seed0"]})
        runs[variant] = run_dir
    probe = write_timing_probe(runs["alternate-epoch"], steps=3, warmup=1)
    assert read_timing_probe(runs["alternate-epoch"]) == json.loads(json.dumps(probe))
    assert [s["trainable"] for s in probe["sets"]] == ["first", "second"]
    assert sum(s["share"] for s in probe["sets"]) == pytest.approx(1.0)
    assert all(s["step_ms"] > 0 and s["peak_mem_bytes"] is None for s in probe["sets"])  # CPU: no peak memory
    assert probe["step_ms"] == pytest.approx(sum(s["share"] * s["step_ms"] for s in probe["sets"]))
    assert "perf_counter" in probe["method"] and probe["steps"] == 3

    c = collect_all(tmp_path)
    shown = format_table(summary_table(c.summaries, probes=c.probes))
    assert shown.loc["alternate-epoch", "timing"] == "probe"
    assert shown.loc["alternate-epoch", "step time (ms)"] == f"{probe['step_ms']:.3f}"
    assert shown.loc["standard", "timing"] == "shared, not probed" and shown.loc["standard", "step time (ms)"] == "—"

    # `freezelab report --probe` times the variants still without a probe, then reports
    from typer.testing import CliRunner

    from freezelab.cli import app

    before = read_timing_probe(runs["alternate-epoch"])
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--probe", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"probe: {runs['standard']}" in result.output and "alternate-epoch" not in result.output.split("report:")[0]
    assert read_timing_probe(runs["alternate-epoch"]) == before  # already probed: left alone
    cost = (tmp_path / "out" / "report.md").read_text().split("### Cost")[1].split("Comparison first")[0]
    assert "shared, not probed" not in cost and cost.count("| probe |") == 2


def test_probe_refuses_a_folder_without_a_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has no config.yaml"):
        write_timing_probe(tmp_path)


def test_a_lockstep_group_is_recorded_and_each_variant_probed(tmp_path: Path) -> None:
    """The lockstep driver's bookkeeping, on CPU (the group's shared stepper itself needs CUDA)."""
    from freezelab.run import Training, run_training
    from freezelab.run.build import SharedData
    from freezelab.study.lockstep import _probe_variants

    data = SharedData()
    trainings = [Training({**TINY, "variant": v, "seed": s}, tmp_path / v / f"seed{s}", data=data, progress=False)
                 for v, s in (("a", 0), ("a", 1), ("b", 0))]
    for t in trainings:
        t.lockstep_group = ["a/seed0", "a/seed1", "b/seed0"]
        run_training(t)
    summary = record.read_summary(tmp_path / "a" / "seed1")
    assert summary["timed_alone"] is False and summary["lockstep_group"] == ["a/seed0", "a/seed1", "b/seed0"]
    _probe_variants(trainings, data)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("timing_probe.json")) == [
        "a/seed0/timing_probe.json", "b/seed0/timing_probe.json"]  # one per variant


@pytest.mark.gpu
def test_a_gpu_lockstep_group_records_itself_and_probes_each_variant(tmp_path: Path) -> None:
    """On CUDA, runs that share a GraphStepper say so in their summaries and get a probe per variant."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from freezelab.config import RunConfig
    from freezelab.study import train_together

    gpu = {**TINY, "device": "cuda"}
    jobs = [(RunConfig.from_dict({**gpu, "variant": v, "seed": s, "schedule": sched}), tmp_path / v / f"seed{s}")
            for v, sched in (("standard", {"name": "standard"}), ("alternate-epoch", {"name": "alternate", "unit": "epoch"}))
            for s in (0, 1)]
    outcomes = train_together(jobs)
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    for _, run_dir in jobs:
        summary = record.read_summary(run_dir)
        assert summary["timed_alone"] is False and len(summary["lockstep_group"]) == 4
    probed = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("timing_probe.json"))
    assert probed == ["alternate-epoch/seed0", "standard/seed0"]
    probe = read_timing_probe(tmp_path / "alternate-epoch" / "seed0")
    assert "CUDA events" in probe["method"] and all(s["peak_mem_bytes"] > 0 for s in probe["sets"])
