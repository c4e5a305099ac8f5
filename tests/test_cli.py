"""The ``freezelab`` command: every subcommand once, help texts, and bad input as one ``error:`` line.

Commands run in-process through typer's CliRunner (fast, and the demo budget can be shrunk);
one subprocess call checks the installed entry point and its exit status.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from freezelab import cli
from freezelab.run import record as run_folder
from freezelab.cli import app

from conftest import data_root
from fake_runs import make_fake_runs

TINY_SET = ["--set", "model_args={hidden: [32, 32]}", "--set", "lr=1e-2", "--set", "batch_size=64"]
EXPERIMENT = """\
# freezelab run exp.yaml
experiment: clitest
seeds: 2
base: {dataset: digits, epochs: 2, batch_size: 64, lr: 1e-2, model_args: {hidden: [32, 32]}}
schedules:
  standard: {name: standard}
  alternate-batch: alternate:unit=batch
"""


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})


def assert_error(result, *fragments: str) -> str:
    """Exit status 2 and exactly one line on stderr, starting with ``error:``."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def exp_file(tmp_path: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(EXPERIMENT)
    return path


# --- help and list ------------------------------------------------------------------------------


def test_help_texts_name_every_command_and_their_main_options():
    top = invoke("--help")
    assert top.exit_code == 0
    for command in ("train", "run", "report", "demo", "list"):
        assert command in top.output
    for command, options in {
        "train": ["--out", "--schedule", "--policy", "--set", "--config"],
        "run": ["--runs-dir", "--jobs", "--seeds", "--epochs", "--set", "--no-report"],
        "report": ["--out"],
        "demo": ["--runs-dir", "--seeds"],
        "list": ["schedules"],
    }.items():
        result = invoke(command, "--help")
        assert result.exit_code == 0, result.output
        for option in options:
            assert option in result.output, (command, option)


def test_list_shows_the_registries():
    everything = invoke("list")
    assert everything.exit_code == 0
    for heading in ("schedules", "models", "datasets", "optimizers", "lr-schedules", "policies"):
        assert heading in everything.output
    schedules = invoke("list", "schedules").output
    assert "alternate" in schedules and "standard" in schedules and "seed001_mlp" not in schedules
    models = invoke("list", "models").output
    assert "seed001_mlp" in models and "[images at 224 px; groups by kind]" in models
    assert "digits" in invoke("list", "datasets").output
    assert_error(invoke("list", "widgets"), "cannot list 'widgets'", "schedules")


# --- train --------------------------------------------------------------------------------------


def test_train_writes_a_run_folder_and_refuses_a_changed_config(tmp_path):
    out = tmp_path / "one"
    args = ["train", "--out", str(out), "--dataset", "digits", "--epochs", "2", "--schedule", "alternate:unit=epoch", *TINY_SET]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "alternate first/second every epoch" in result.output and "final val acc" in result.output
    # Not a terminal: no bar, but one progress line per epoch on stderr.
    progress = [line for line in result.stderr.splitlines() if " epoch " in line]
    assert len(progress) == 2 and progress[0].startswith("run epoch 1/2 loss ") and "val " in progress[0], result.stderr
    assert "epoch" not in result.stdout.split("alternate first/second")[0]
    assert run_folder.is_finished(out) and run_folder.read_config(out)["lr"] == 0.01
    assert invoke(*args).exit_code == 0  # the same run again: already finished, nothing changes
    line = assert_error(invoke(*args[:-2], "--set", "batch_size=32"), "holds a run with batch_size=64", "batch_size=32")
    assert str(out) in line
    assert run_folder.read_config(out)["batch_size"] == 64


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--schedule", "alternating"], ["unknown schedule 'alternating'"]),
        (["--set", "epochs=0"], ["epochs must be a positive integer"]),
        (["--set", "epoch=2"], ["unknown run option 'epoch'", "did you mean 'epochs'"]),
        (["--set", "nokeyvalue"], ["--set expects key=value"]),
        (["--set", "model_args={hidden: [32"], ["--set model_args: cannot read"]),
        (["--optimizer", "adagrad"], ["optimizer 'adagrad' is unknown"]),
        (["--dataset", "imagenet"], ["dataset 'imagenet' is unknown"]),
        (["--device", "gpu"], ["device must be auto, cpu, cuda or cuda:N"]),
    ],
)
def test_train_bad_input_is_one_error_line(tmp_path, args, fragments):
    assert_error(invoke("train", "--out", str(tmp_path / "x"), *args), *fragments)
    assert not (tmp_path / "x").exists()


def test_train_config_file_mistakes(tmp_path, exp_file):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: digits\nepochs: [2\n")
    assert_error(invoke("train", "--config", str(bad)), "bad.yaml is not valid YAML at line")
    assert_error(invoke("train", "--config", str(tmp_path / "none.yaml")), "none.yaml does not exist")
    assert_error(invoke("train", "--config", str(exp_file)), "is an experiment file", "freezelab run")


# --- run and report ---------------------------------------------------------------------------


def test_run_trains_the_grid_reports_and_skips_on_rerun(tmp_path, exp_file):
    runs = tmp_path / "runs"
    result = invoke("run", str(exp_file), "--runs-dir", str(runs))
    assert result.exit_code == 0, result.output
    assert "2 schedules x 1 cells x 2 seeds = 4 runs" in result.output
    for folder in ("standard/seed0", "standard/seed1", "alternate-batch/seed0", "alternate-batch/seed1"):
        assert run_folder.is_finished(runs / "clitest" / folder), folder
    assert (runs / "clitest/report/report.html").is_file() and "report:" in result.output

    again = invoke("run", str(exp_file), "--runs-dir", str(runs), "--no-report")
    assert again.exit_code == 0 and again.output.count("finished earlier") == 4

    changed = invoke("run", str(exp_file), "--runs-dir", str(runs), "--epochs", "3", "--no-report")
    assert_error(changed, "holds a run with epochs=2", "epochs=3")

    out = tmp_path / "elsewhere"
    report = invoke("report", str(runs / "clitest"), "--out", str(out))
    assert report.exit_code == 0, report.output
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert "alternate-batch vs standard" in (out / "report.md").read_text()


def test_run_overrides_shrink_a_grid(tmp_path, exp_file):
    runs = tmp_path / "runs"
    result = invoke("run", str(exp_file), "--runs-dir", str(runs), "--seeds", "1", "--epochs", "1", "--set", "subset=200", "--no-report")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (runs / "clitest").glob("*/*")) == ["seed0", "seed0"]
    assert run_folder.read_config(runs / "clitest/standard/seed0")["subset"] == 200
    assert not (runs / "clitest/report").exists()


def test_run_with_a_failing_run_saves_the_others_and_exits_2(tmp_path, exp_file):
    exp_file.write_text(EXPERIMENT.replace("seeds: 2", "seeds: 1") + "  bad: {name: freeze, groups: [nope]}\n")
    runs = tmp_path / "runs"
    line = assert_error(invoke("run", str(exp_file), "--runs-dir", str(runs)), "1 of 3 runs failed", "ScheduleError")
    assert "bad/seed0" in line
    assert run_folder.is_finished(runs / "clitest/standard/seed0") and run_folder.is_finished(runs / "clitest/alternate-batch/seed0")
    assert (runs / "clitest/report/report.html").is_file()


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("experiment: x\nbase: {dataset: digits\n", ["is not valid YAML at line"]),
        ("experiment: x\nbsae: {dataset: digits}\n", ["unknown key 'bsae'"]),
        ("experiment: x\nbase: {dataset: digits, lr: -1}\n", ["x/standard: lr must be a positive number, got -1"]),
        ("experiment: x\nbase: {dataset: digits}\ngrid: {optimizer: adam}\n", ["grid.optimizer must be a non-empty list"]),
    ],
)
def test_run_bad_experiment_file_is_one_error_line(tmp_path, text, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert_error(invoke("run", str(path), "--runs-dir", str(tmp_path / "runs")), *fragments)
    assert not (tmp_path / "runs").exists()


def test_run_missing_file_and_report_without_runs(tmp_path):
    assert_error(invoke("run", str(tmp_path / "nope.yaml")), "nope.yaml does not exist")
    assert_error(invoke("report", str(tmp_path / "nowhere")), "nowhere does not exist")
    (tmp_path / "empty").mkdir()
    assert_error(invoke("report", str(tmp_path / "empty")), "no finished runs under")


def test_report_baseline_option_pairs_with_the_named_variant(tmp_path):
    make_fake_runs(tmp_path, variants=("standard", "warmup"), seeds=(0, 1), epochs=1, with_optional=False)
    result = invoke("report", str(tmp_path), "--baseline", "warmup", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "standard vs warmup" in (tmp_path / "out" / "report.md").read_text()
    assert_error(invoke("report", str(tmp_path), "--baseline", "lisa"), "--baseline 'lisa' names no single variant")


@pytest.mark.slow
def test_shipped_seed001_config_runs_on_a_sliver_of_mnist(tmp_path):
    root = data_root()
    if root is None:
        pytest.skip("FREEZELAB_DATA is not set to a folder with MNIST/raw (make test sets it)")
    config = Path(__file__).parents[1] / "configs" / "seed001_mnist.yaml"
    result = invoke("run", str(config), "--runs-dir", str(tmp_path), "--seeds", "1", "--epochs", "1",
                    "--set", "subset=500", "--set", f"data_root={root}", "--no-report")
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*/*")) == [
        "seed001_mnist/alternate-epoch/seed42", "seed001_mnist/standard/seed42"]


# --- demo and the installed command -------------------------------------------------------------


def test_demo_runs_the_comparison_and_writes_the_report(tmp_path, monkeypatch):
    # The real budget is timed in the final report; here only the wiring is tested.
    monkeypatch.setitem(cli.DEMO, "base", {**cli.DEMO["base"], "epochs": 2, "model_args": {"hidden": [32]}})
    result = invoke("demo", "--runs-dir", str(tmp_path), "--seeds", "2")
    assert result.exit_code == 0, result.output
    assert "3 schedules x 1 cells x 2 seeds = 6 runs" in result.output
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["alternate-batch", "alternate-epoch", "experiment.json", "report", "standard"]
    assert (tmp_path / "demo/report/report.html").is_file()
    assert_error(invoke("demo", "--runs-dir", str(tmp_path), "--seeds", "0"), "seeds must be a positive count")


def test_demo_budget_is_the_documented_comparison():
    base = cli.DEMO["base"]
    assert base["dataset"] == "digits" and cli.DEMO["seeds"] == 3
    assert set(cli.DEMO["schedules"]) == {"standard", "alternate-epoch", "alternate-batch"}


def test_installed_entry_point_exit_status_and_stderr():
    exe = Path(sys.executable).with_name("freezelab")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "freezelab.cli"]
    bad = subprocess.run([*command, "list", "widgets"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [bad.stderr.strip()] and bad.stderr.startswith("error: cannot list 'widgets'")


# --- Ctrl-C -------------------------------------------------------------------------------------


def test_ctrl_c_in_a_sequential_sweep_is_one_line_exit_130_and_keeps_the_finished_runs(tmp_path, exp_file, monkeypatch):
    from freezelab.study import runner

    real, calls = runner.train_one, []

    def interrupted_second_run(config, run_dir):
        calls.append(run_dir)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(config, run_dir)

    monkeypatch.setattr(runner, "train_one", interrupted_second_run)
    result = invoke("run", str(exp_file), "--runs-dir", str(tmp_path))
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == [
        "interrupted: 1 of 4 runs were finished or skipped and are saved; run the same command again to resume the rest"]
    assert len(calls) == 2 and run_folder.is_finished(Path(calls[0])) and not run_folder.is_finished(Path(calls[1]))


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_in_worker_processes_within_seconds(tmp_path):
    """SIGINT to the process group, as a terminal's Ctrl-C sends it: workers stop, finished runs stay."""
    import os
    import signal
    import time

    exp = tmp_path / "long.yaml"
    exp.write_text(EXPERIMENT.replace("seeds: 2", "seeds: 4").replace("epochs: 2", "epochs: 60"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    sweep = subprocess.Popen([sys.executable, "-m", "freezelab.cli", "run", str(exp), "--runs-dir", str(tmp_path), "--jobs", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        lines = []
        while not any(" done " in line for line in lines):  # the first run finished
            line = sweep.stdout.readline()
            assert line, f"the sweep ended early: {lines} {sweep.stderr.read()}"
            lines.append(line)
        os.killpg(sweep.pid, signal.SIGINT)
        t0 = time.monotonic()
        code = sweep.wait(timeout=30)
        stopped_after = time.monotonic() - t0
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert code == 130 and stopped_after < 10, (code, stopped_after)
    assert sweep.stderr.read().strip().splitlines()[-1].startswith("interrupted: ")
    folders = sorted(p.parent for p in tmp_path.rglob("config.yaml"))
    finished = [p for p in folders if run_folder.is_finished(p)]
    assert 1 <= len(finished) < 8  # what finished is kept; the queued runs did not train on
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    time.sleep(2)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == files  # no worker left writing
