"""The ``freezelab`` command line: train one run, run an experiment grid, report, list, demo.

    freezelab demo                                  # a real comparison on the embedded data, with report
    freezelab train --dataset fashion_mnist --recipe fmnist_90_10 --model fashion_mlp --epochs 30
    freezelab train --schedule alternate:unit=batch,every=50 --policy remove
    freezelab run configs/seed001_mnist.yaml --jobs 4
    freezelab run configs/seed001_mnist.yaml --launcher ray --address HOST:6379 --gpus-per-run 0.25
    torchrun --nproc_per_node 4 -m freezelab train --dataset mnist --batch-size 512   # DDP, global batch 512
    freezelab report runs/seed001_mnist
    freezelab list schedules
"""

from __future__ import annotations

import logging
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


class _WarningLines(logging.Handler):
    """freezelab's warnings (a damaged checkpoint, an exploded run) as plain lines on stderr.

    It looks up stderr at each line, so it follows whoever redirected it (a test's runner).
    """

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(record.getMessage(), err=True)


@app.callback()
def main() -> None:
    """freezelab: split a model into parameter groups, freeze them on a schedule, compare fairly."""
    log = logging.getLogger("freezelab")
    if not any(isinstance(h, _WarningLines) for h in log.handlers):
        log.addHandler(_WarningLines(logging.WARNING))


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
        _fail(f"config file {path} does not exist; pass the path of a YAML file of run options")
    try:
        data = read_yaml_file(path)
    except ConfigError as e:
        _fail(str(e))
    if data is not None and not isinstance(data, dict):
        _fail(f"{path} must be a mapping of run options (e.g. epochs: 5), got {type(data).__name__}")
    if data and {"base", "schedules", "seeds"} & set(data):
        _fail(f"{path} is an experiment file; run it with `freezelab run {path}`")
    return data or {}


def _errors() -> tuple[type[Exception], ...]:
    """The errors that mean "bad input": each is one line for the user, exit status 2.

    Only these classes: any other exception (a plain ValueError or TypeError included) is a bug
    in freezelab and keeps its traceback, so it gets reported rather than read as the user's fault.
    """
    from .config import ConfigError
    from .data import DatasetNotFoundError
    from .freezer import FreezerError
    from .groups import GroupError
    from .run import TrainingDiverged
    from .run.record import RunFolderError
    from .schedules import ScheduleError

    return (ConfigError, DatasetNotFoundError, FreezerError, GroupError, RunFolderError, ScheduleError, TrainingDiverged)


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
    """Train ONE run and write its folder (config, per-epoch log, per-step log, summary, checkpoint).

    Under torchrun it trains with DDP over all ranks (--batch-size is the global batch); rank 0 writes.
    """
    from .config import RunConfig
    from .run import check_config, ddp
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
        with ddp.process_group():  # under torchrun: every rank trains, rank 0 writes
            if ddp.is_lead():
                _show_progress()
            result = train_run(cfg, out)
            lead, world = ddp.is_lead(), ddp.world_size()
    except _errors() as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _interrupted(f"the same command resumes the run from its last checkpoint in {out}")
    if not lead:
        return
    s = result.summary
    typer.echo(
        f"{s['schedule']}\n"
        f"final val acc {s['final_val_acc']:.2%} (best {s['best_val_acc']:.2%} at epoch {s['best_epoch']}), "
        f"test acc {s['final_test_acc']:.2%}, {s['avg_epoch_time_s']:.3f} s/epoch on {s['device']}"
        f"{f' x {world} processes (DDP)' if world > 1 else ''}\n"
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
    launcher: str = typer.Option("local", help="local: this machine (--jobs, --lockstep); ray: one Ray task per run."),
    address: Optional[str] = typer.Option(None, help="With --launcher ray: the cluster (ray start --head prints it); default a local Ray."),
    cpus_per_run: float = typer.Option(1.0, help="With --launcher ray: CPUs each run asks for."),
    gpus_per_run: float = typer.Option(0.0, help="With --launcher ray: GPUs each run asks for; fractions share one (0.25: four runs a GPU); 0: CPU."),
    max_retries: int = typer.Option(3, help="With --launcher ray: retries of a run whose worker died (the retry resumes from its checkpoint)."),
) -> None:
    """Run an experiment grid (schedules x grid x seeds); skips finished runs, resumes unfinished ones.

    Under torchrun the runs train one after another, each with DDP over all ranks; rank 0 writes.
    """
    from .study import load_experiment

    overrides = _parse_sets(set_)
    if epochs is not None:
        overrides["epochs"] = epochs
    if seeds is not None:
        overrides["seeds"] = seeds
    if launcher not in ("local", "ray"):
        _fail(f"--launcher {launcher!r} is unknown; choose local or ray")
    if launcher == "local" and address is not None:
        _fail("--address names a Ray cluster; add --launcher ray")
    from .run import ddp

    try:
        exp = load_experiment(config, overrides)
        chosen = None
        if launcher == "ray":
            from .study.ray_launcher import ray_launcher

            chosen = ray_launcher(address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, max_retries=max_retries)
    except _errors() as e:
        _fail(str(e))
    with ddp.process_group():  # under torchrun: each run over all ranks, rank 0 writes and reports
        _run_and_report(exp, runs_dir, jobs, report, lockstep, chosen)


def _run_and_report(exp, runs_dir: Path, jobs: int, report: bool, lockstep: int = 32, launcher=None) -> None:
    from .run import ddp
    from .study import run_experiment

    lead = ddp.is_lead()
    say = typer.echo if lead else (lambda _: None)
    n = len(exp.configs())
    say(f"experiment {exp.name}: {len(exp.schedules)} schedules x {n // len(exp.seeds) // len(exp.schedules)} "
        f"cells x {len(exp.seeds)} seeds = {n} runs -> {runs_dir / exp.name}"
        f"{f' (DDP over {ddp.world_size()} processes)' if ddp.world_size() > 1 else ''}")
    done = [0]

    def show(o) -> None:
        done[0] += 1
        what = {"done": f"{o.seconds:.1f} s", "skipped": "finished earlier", "failed": o.error}[o.status]
        say(f"[{done[0]}/{n}] {o.status:7s} {o.run_dir}  {what}")

    try:
        outcomes = run_experiment(exp, runs_dir, jobs=jobs, lockstep=lockstep, on_result=show, launcher=launcher)
    except _errors() as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _interrupted(f"{done[0]} of {n} runs were finished or skipped and are saved; run the same command again to resume the rest")
    failed = [o for o in outcomes if o.status == "failed"]
    if report and lead and len(failed) < len(outcomes):
        try:
            _write_report(runs_dir / exp.name)
        except (FileNotFoundError, ValueError) as e:
            _fail(f"the runs are saved, but the report failed: {e}")
    if failed:
        saved = len(outcomes) - len(failed)
        kept = f"the {saved} others are saved" if saved else "no run finished, nothing was saved"
        _fail(f"{len(failed)} of {n} runs failed ({kept}); first: {failed[0].run_dir}: {failed[0].error}")


def _interrupted(saved: str) -> None:
    """Ctrl-C: one line saying what is kept, and the shell's exit status for SIGINT (130)."""
    typer.secho(f"interrupted: {saved}", fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(130)


def _show_progress() -> None:
    """Send the per-epoch progress lines (logger ``freezelab.progress``) to stderr, once per process.

    Outside a terminal a run has no progress bar; these lines are what a log file or CI shows.
    """
    import logging

    class Stderr(logging.StreamHandler):
        """Writes to whatever ``sys.stderr`` is when a line is logged (a test runner swaps it)."""

        @property
        def stream(self):  # type: ignore[override]
            return sys.stderr

        @stream.setter
        def stream(self, _value) -> None:
            pass

    logger = logging.getLogger("freezelab.progress")
    if not any(getattr(h, "freezelab_cli", False) for h in logger.handlers):
        handler = Stderr()
        handler.freezelab_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _write_report(folder: Path) -> None:
    from .report import write_report

    path = write_report(folder)
    typer.echo(f"report: {path}")


def _probe_shared_variants(runs_dir: Path) -> None:
    """Write ``timing_probe.json`` for the lowest seed of each variant not timed alone and not yet probed."""
    from .report import collect_all
    from .run.build import SharedData
    from .run.probe import write_timing_probe

    c = collect_all(runs_dir)
    data = SharedData()
    shared = c.summaries[~c.summaries["timed_alone"].astype(bool)].sort_values("seed")
    for variant, rows in shared.groupby("variant"):
        if variant not in c.probes:
            run_dir = runs_dir / rows["run"].iloc[0]
            step_ms = write_timing_probe(run_dir, data=data)["step_ms"]
            typer.echo(f"probe: {run_dir}  {step_ms:.3f} ms per step")


@app.command()
def report(
    runs_dir: Path = typer.Argument(..., help="Folder of run folders (an experiment folder or a whole runs dir)."),
    out: Optional[Path] = typer.Option(None, help="Where to write report.html/report.md/PNGs (default RUNS_DIR/report)."),
    baseline: Optional[str] = typer.Option(
        None, help="Variant (or schedule of one variant) to pair the others with; default: the experiment file's "
        "`baseline`, else `standard`."),
    probe: bool = typer.Option(
        False, help="First time each variant whose runs shared a lockstep group and have no timing probe "
        "(a few steps per trainable set, alone, on the run's device: run it on the machine that trained them)."),
) -> None:
    """Write the comparison report: paired tests vs a baseline, curves with 95% CI over seeds, timeline, per-run pages."""
    from .report import write_report

    from .run.record import check_writable

    if not runs_dir.exists():
        _fail(f"{runs_dir} does not exist; run `freezelab run CONFIG` first")
    try:
        check_writable(out if out is not None else runs_dir / "report")  # before reading every run
        if probe:
            _probe_shared_variants(runs_dir)
        path = write_report(runs_dir, out, baseline=baseline)
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
