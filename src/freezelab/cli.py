"""The ``freezelab`` command line: train one run, run an experiment grid, report, list, demo.

    freezelab demo                                  # a real comparison on the embedded data, with report
    freezelab train --dataset fashion_mnist --recipe fmnist_90_10 --model fashion_mlp --epochs 30
    freezelab train --schedule alternate:unit=batch,every=50 --policy remove
    freezelab run configs/seed001_mnist.yaml --jobs 4
    freezelab report runs/seed001_mnist
    freezelab list schedules
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Layer-freezing schedules for PyTorch: split a model into parameter groups, freeze them on a "
    "schedule, and compare schedules fairly (same weights, same batches, several seeds, paired tests).",
)

#: The demo comparison: standard vs alternating halves per epoch and per batch, 3 seeds.
DEMO = {
    "experiment": "demo",
    "seeds": 3,
    # ~0.3 s a run on 2 CPU cores; standard training reaches ~97% val accuracy on digits.
    "base": {"dataset": "digits", "model": "mlp", "model_args": {"hidden": [128, 128]}, "epochs": 20, "batch_size": 64, "lr": 3e-3},
    "schedules": {
        "standard": {"name": "standard"},
        "alternate-epoch": {"name": "alternate", "unit": "epoch"},
        "alternate-batch": {"name": "alternate", "unit": "batch"},
    },
}


@app.callback()
def main() -> None:
    """freezelab: split a model into parameter groups, freeze them on a schedule, compare fairly."""


def _fail(message: str) -> None:
    """One clear line on stderr and exit status 2: bad input is the user's to fix, not a traceback."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _parse_sets(sets: list[str]) -> dict[str, Any]:
    from .config import load_yaml

    out = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            _fail(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = load_yaml(value)
        except yaml.YAMLError:
            _fail(f"--set {key.strip()}: cannot read {value!r} as a YAML value; quote it or fix the brackets")
    return out


def _read_run_options(path: Path) -> dict[str, Any]:
    """A YAML file of RunConfig fields, or one clear error line."""
    from .config import ConfigError, read_yaml_file

    if not path.is_file():
        _fail(f"config file {path} does not exist")
    try:
        data = read_yaml_file(path)
    except ConfigError as e:
        _fail(str(e))
    if data is not None and not isinstance(data, dict):
        _fail(f"{path} must be a mapping of run options (e.g. epochs: 5), got {type(data).__name__}")
    if data and {"base", "schedules", "seeds"} & set(data):
        _fail(f"{path} is an experiment file; run it with `freezelab run {path}`")
    return data or {}


def _errors():
    from .config import ConfigError
    from .data import DatasetNotFoundError
    from .groups import GroupError
    from .run import TrainingDiverged
    from .schedules import ScheduleError

    return (ConfigError, DatasetNotFoundError, GroupError, ScheduleError, TrainingDiverged, ValueError)


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file of run options (any RunConfig field)."),
    out: Path = typer.Option(Path("runs/train"), help="Run folder to write (resumes if it holds an unfinished run)."),
    dataset: Optional[str] = typer.Option(None, help="digits (embedded), mnist, fashion_mnist, cifar10, cifar100."),
    recipe: Optional[str] = typer.Option(None, help="Split recipe, e.g. fmnist_90_10 (seed 004), mnist10k_80_20 (seed 001)."),
    data_root: Optional[str] = typer.Option(None, help="Dataset folder; default $FREEZELAB_DATA, else the user cache."),
    model: Optional[str] = typer.Option(None, help="Model name (freezelab list models)."),
    activation: Optional[str] = typer.Option(None, help="relu, sigmoid, tanh, leaky_relu, gelu, elu."),
    schedule: Optional[str] = typer.Option(None, help="Schedule, e.g. standard, alternate:unit=batch,every=50."),
    policy: Optional[str] = typer.Option(None, help="Optimizer policy: keep, recreate, remove, release."),
    optimizer: Optional[str] = typer.Option(None, help="sgd, sgd_momentum, adam, adamw, rmsprop."),
    lr: Optional[float] = typer.Option(None, help="Learning rate."),
    lr_schedule: Optional[str] = typer.Option(None, help="none, step, cosine, exponential, onecycle, warmup_cosine."),
    epochs: Optional[int] = typer.Option(None, help="Epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size."),
    seed: Optional[int] = typer.Option(None, help="Seed for weights, split and batch order."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N."),
    set_: list[str] = typer.Option([], "--set", help="Any other run option as key=value (repeatable)."),
) -> None:
    """Train ONE run and write its folder (config, per-epoch log, per-step log, summary, checkpoint)."""
    from .config import RunConfig
    from .run import check_config
    from .run import train as train_run
    from .schedules import parse_schedule
    from .study import check_run_dir

    fields: dict[str, Any] = {}
    if config is not None:
        fields.update(_read_run_options(config))
    given = dict(dataset=dataset, recipe=recipe, data_root=data_root, model=model, activation=activation, policy=policy,
                 optimizer=optimizer, lr=lr, lr_schedule=lr_schedule, epochs=epochs, batch_size=batch_size, seed=seed,
                 device=device)
    fields.update({k: v for k, v in given.items() if v is not None})
    fields.update(_parse_sets(set_))
    try:
        if schedule is not None:
            fields["schedule"] = parse_schedule(schedule).to_dict()
        cfg = RunConfig.from_dict(fields)
        check_config(cfg)
        check_run_dir(out, cfg)  # a folder holding a different run is refused, never overwritten
        result = train_run(cfg, out)
    except _errors() as e:
        _fail(str(e))
    s = result.summary
    typer.echo(
        f"{s['schedule']}\n"
        f"final val acc {s['final_val_acc']:.2%} (best {s['best_val_acc']:.2%} at epoch {s['best_epoch']}), "
        f"test acc {s['final_test_acc']:.2%}, {s['avg_epoch_time_s']:.3f} s/epoch on {s['device']}\n"
        f"wrote {out}"
    )


@app.command()
def run(
    config: Path = typer.Argument(..., help="Experiment YAML file (see configs/)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where run folders go: RUNS_DIR/<experiment>/<variant>/seed<k>."),
    jobs: int = typer.Option(1, help="Runs trained at once in worker processes (CPU cores; on a GPU only for runs that cannot share it in lockstep)."),
    lockstep: int = typer.Option(32, help="On a GPU, up to N runs train together on parallel CUDA streams, each with the result it gets alone; 1 turns this off."),
    seeds: Optional[int] = typer.Option(None, help="Run only the file's first N seeds (quick checks)."),
    epochs: Optional[int] = typer.Option(None, help="Override epochs for every run (quick checks)."),
    set_: list[str] = typer.Option([], "--set", help="Override any run option for every run, key=value; on a grid key it keeps only that value."),
    report: bool = typer.Option(True, help="Write the report when the runs are done."),
) -> None:
    """Run an experiment grid (schedules x grid x seeds); skips finished runs, resumes unfinished ones."""
    from .study import load_experiment

    overrides = _parse_sets(set_)
    if epochs is not None:
        overrides["epochs"] = epochs
    if seeds is not None:
        overrides["seeds"] = seeds
    try:
        exp = load_experiment(config, overrides)
    except _errors() as e:
        _fail(str(e))
    _run_and_report(exp, runs_dir, jobs, report, lockstep)


def _run_and_report(exp, runs_dir: Path, jobs: int, report: bool, lockstep: int = 32) -> None:
    from .study import run_experiment

    n = len(exp.configs())
    typer.echo(f"experiment {exp.name}: {len(exp.schedules)} schedules x {n // len(exp.seeds) // len(exp.schedules)} "
               f"cells x {len(exp.seeds)} seeds = {n} runs -> {runs_dir / exp.name}")
    done = [0]

    def show(o) -> None:
        done[0] += 1
        what = {"done": f"{o.seconds:.1f} s", "skipped": "finished earlier", "failed": o.error}[o.status]
        typer.echo(f"[{done[0]}/{n}] {o.status:7s} {o.run_dir}  {what}")

    try:
        outcomes = run_experiment(exp, runs_dir, jobs=jobs, lockstep=lockstep, on_result=show)
    except _errors() as e:
        _fail(str(e))
    failed = [o for o in outcomes if o.status == "failed"]
    if report and len(failed) < len(outcomes):
        try:
            _write_report(runs_dir / exp.name)
        except (FileNotFoundError, ValueError) as e:
            _fail(f"the runs are saved, but the report failed: {e}")
    if failed:
        _fail(f"{len(failed)} of {n} runs failed (the others are saved); first: {failed[0].run_dir}: {failed[0].error}")


def _write_report(folder: Path) -> None:
    from .report import write_report

    path = write_report(folder)
    typer.echo(f"report: {path}")


@app.command()
def report(
    runs_dir: Path = typer.Argument(..., help="Folder of run folders (an experiment folder or a whole runs dir)."),
    out: Optional[Path] = typer.Option(None, help="Where to write report.html/report.md/PNGs (default RUNS_DIR/report)."),
) -> None:
    """Write the comparison report: curves with 95% CI over seeds, gradient flow, timeline, Pareto, reliability, table."""
    from .report import write_report

    if not runs_dir.exists():
        _fail(f"{runs_dir} does not exist; run `freezelab run CONFIG` first")
    try:
        path = write_report(runs_dir, out)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"report: {path}")


@app.command()
def demo(
    runs_dir: Path = typer.Option(Path("runs"), help="Where the demo's runs and report go."),
    seeds: int = typer.Option(3, help="Seeds per schedule."),
) -> None:
    """Compare standard vs alternating halves (per epoch, per batch) on the embedded digits data, 3 seeds, with a report."""
    from .study import Experiment

    try:
        exp = Experiment.from_dict({**DEMO, "seeds": seeds}, source="demo")
    except _errors() as e:
        _fail(str(e))
    _run_and_report(exp, runs_dir, 1, True)


@app.command("list")
def list_(what: str = typer.Argument("all", help="schedules, models, datasets, optimizers, lr-schedules, policies or all.")) -> None:
    """List what can be named in a config: schedules, models, datasets, optimizers, LR schedules, policies."""
    from .data import list_datasets
    from .freezer import POLICIES
    from .models import list_models, model_info
    from .optim import list_lr_schedules, list_optimizers
    from .schedules import list_schedules

    def models() -> dict[str, str]:
        """Each model's description, what it takes and how its default groups split it."""
        out = {}
        for name, text in list_models().items():
            info = model_info(name)
            takes = f"images at {info.input_size} px" if info.input_size else "images" if info.images else "flat inputs"
            out[name] = f"{text} [{takes}; groups by {info.groups['by']}]"
        return out

    tables = {
        "schedules": list_schedules,
        "models": models,
        "datasets": list_datasets,
        "optimizers": list_optimizers,
        "lr-schedules": list_lr_schedules,
        "policies": lambda: {p: "" for p in POLICIES},
    }
    if what != "all" and what not in tables:
        _fail(f"cannot list {what!r}; choose from {['all', *tables]}")
    for name, fn in tables.items():
        if what in ("all", name):
            typer.secho(name, bold=True)
            for key, text in fn().items():
                typer.echo(f"  {key:18s} {text}")


if __name__ == "__main__":
    app(sys.argv[1:])
