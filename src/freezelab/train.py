"""One training run: a :class:`~freezelab.config.RunConfig` in, a run folder out.

The loop is built for speed on small models, where the Python and launch overhead dominates:

* the dataset lives on the training device and batches are index slices of it;
* losses, accuracies and statistics stay on the device during an epoch and are copied to the
  host at the end of each epoch, never per step or per parameter;
* the schedule is pure, so the trainable set of every step is known in advance; on a GPU the
  whole step is replayed from a CUDA graph captured once per trainable set
  (:mod:`freezelab.fast`), so alternation never replays a stale graph.

Fair comparisons come from the seed alone: the model's initial weights, the data split and
the batch order depend only on ``config.seed``, never on the schedule.

Example::

    >>> from freezelab.train import train
    >>> result = train({"dataset": "digits", "epochs": 2, "schedule": {"name": "alternate"}})
    >>> round(result.summary["final_val_acc"], 2) > 0.5
    True
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from . import groups as groups_mod
from . import metrics, runlog
from .config import ConfigError, RunConfig
from .data import DatasetSplits, IndexBatches, load_dataset
from .fast import graphed, lockstep_key, make_stepper
from .freezer import Freezer
from .models import build_model, model_options
from .optim import build_optimizer, lr_schedule, optimizer_state_bytes

__all__ = ["train", "Training", "run_training", "RunResult", "TrainingDiverged", "resolve_device", "build_run", "Run"]

#: Seconds between two checkpoints of a run; the epochs tables are written with each, after
#: the last epoch, and when a run stops early. Saving after every epoch costs about 10 ms a
#: run-epoch (parquet tables and ``torch.save``): 10 s of seed 004's 60-run GPU sweep, 78 s
#: against 68 s (``benchmarks/results/sweep_seed004_*``). A resume redoes at most this much
#: training, with the same result.
SAVE_EVERY_S = 20.0

#: Models that take images as NCHW tensors (everything else gets flattened inputs).
IMAGE_MODELS = {"small_cnn", "resnet18", "vit_s16"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the epochs finished before it are kept on disk."""


@dataclass
class RunResult:
    config: RunConfig
    epochs: pd.DataFrame
    steps: pd.DataFrame | None
    summary: dict[str, Any]
    run_dir: Path | None
    model: nn.Module


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use device: auto or cpu")
    return device


# ---------------------------------------------------------------------------------------
# Building a run
# ---------------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything a run is made of, built deterministically from the config."""

    config: RunConfig
    device: torch.device
    data: DatasetSplits
    model: nn.Module
    groups: groups_mod.GroupSet
    freezer: Freezer
    batches: IndexBatches
    lr_at: Any

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch


def build_run(config: RunConfig | dict[str, Any], data: DatasetSplits | None = None) -> Run:
    """Data, model, groups, optimizer and freezer for ``config``: identical for identical seeds."""
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    device = resolve_device(cfg.device)
    if data is None:
        data = load_dataset(**data_request(cfg))
    model = _build_model(cfg, data).to(device)
    example = data.train.x[:2]
    gs = groups_mod.from_spec(model, cfg.groups, example_input=example)
    fused = device.type == "cuda" and cfg.optimizer in ("adam", "adamw", "sgd", "sgd_momentum")
    optimizer = build_optimizer(
        cfg.optimizer, model.parameters(), cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, fused=fused or None
    )
    freezer = Freezer(model, gs, cfg.schedule_obj(), optimizer, policy=cfg.policy, bn_stats=cfg.bn_stats)
    batches = IndexBatches(len(data.train.y), cfg.batch_size, seed=cfg.seed, device=device)
    lr_at = lr_schedule(cfg.lr_schedule, cfg.lr, epochs=cfg.epochs, steps_per_epoch=batches.steps_per_epoch)
    return Run(cfg, device, data, model, gs, freezer, batches, lr_at)


def data_request(cfg: RunConfig) -> dict[str, Any]:
    """The :func:`~freezelab.data.load_dataset` arguments of a run: runs with equal ones can share the data."""
    return {"name": cfg.dataset, "root": cfg.data_root, "recipe": cfg.recipe, "seed": cfg.seed,
            "flatten": cfg.model not in IMAGE_MODELS, "subset": cfg.subset, "download": cfg.download,
            "device": resolve_device(cfg.device)}


def _build_model(cfg: RunConfig, data: DatasetSplits) -> nn.Module:
    """Build the model under a generator seeded only by ``cfg.seed``: identical starts."""
    shape = tuple(data.input_shape)
    kwargs: dict[str, Any] = {"num_classes": data.num_classes, **cfg.model_args}
    if cfg.model in IMAGE_MODELS:
        kwargs.setdefault("in_channels", shape[0])
    else:
        kwargs.setdefault("in_features", math.prod(shape))
        if "activation" in model_options(cfg.model):
            kwargs.setdefault("activation", cfg.activation)
        elif cfg.activation != "relu":
            raise ConfigError(f"model {cfg.model!r} has a fixed activation; use model 'mlp' to choose {cfg.activation!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model, **kwargs)


# ---------------------------------------------------------------------------------------
# Evaluation and per-epoch statistics (all on the device; the caller copies them out together)
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, ...]:
    """Mean NLL, accuracy and ECE of ``model`` on ``(x, y)``, plus the logits (for reliability bins)."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(x[i : i + chunk]) for i in range(0, len(y), chunk)])
    model.train(was_training)
    loss = nn.functional.cross_entropy(logits.float(), y)
    acc = (logits.argmax(1) == y).float().mean()
    ece, _ = metrics.expected_calibration_error(logits.float(), y)
    return loss, acc, ece, logits


def probe_statistics(run: Run) -> dict[str, Any]:
    """Per-layer gradient statistics, dead units and the two-group cosine on a fixed probe batch.

    Gradients are taken for every managed parameter (frozen ones included) so the gradient
    flow plot shows what would reach each layer; the model's parameters, buffers, gradients
    and trainable set are left exactly as they were.
    """
    model, fz = run.model, run.freezer
    x, y = run.data.train.x[: run.config.batch_size], run.data.train.y[: run.config.batch_size]
    managed = [p for g in run.groups for p in run.groups.params(model, g.name)]
    saved_flags = [p.requires_grad for p in managed]
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    out: dict[str, Any] = {}
    try:
        for p in managed:
            p.requires_grad_(True)
            p.grad = None
        act_names = list(getattr(model, "hidden_activation_names", []))
        with metrics.capture_activations(model, act_names) as acts:
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        names, stats = metrics.grad_stats([(n, p) for n, p in model.named_parameters() if p.grad is not None])
        out["grad_names"], out["grad_stats"] = names, stats
        out["dead"] = {n: metrics.dead_units(a) for n, a in acts.items()}
        sched = run.groups.schedulable
        if len(sched) >= 2:
            a, b = run.groups[sched[0]].param_names, run.groups[sched[1]].param_names
            out["cosine"] = metrics.function_space_cosine(model, a, b, x)
    finally:
        for p, flag in zip(managed, saved_flags):
            p.requires_grad_(flag)
            p.grad = None
        for b, saved in zip(model.buffers(), saved_buffers):
            b.copy_(saved)
        fz.optimizer.zero_grad(set_to_none=True)
    return out


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------
def _quiet() -> bool:
    return bool(os.environ.get("CI")) or not sys.stderr.isatty()


class _Progress:
    """A rich progress bar for epochs and batches that says nothing in CI or a pipe."""

    def __init__(self, enabled: bool, epochs: int, steps: int, label: str) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self.bar.start()
            self.epochs = self.bar.add_task(f"{label} epochs", total=epochs)
            self.steps = self.bar.add_task("batches", total=steps)

    def step(self, n: int = 1) -> None:
        if self.bar:
            self.bar.advance(self.steps, n)

    def epoch(self, text: str) -> None:
        if self.bar:
            self.bar.advance(self.epochs)
            self.bar.reset(self.steps)
            self.bar.update(self.epochs, description=text)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


class Training:
    """One run being trained: built, resumed from its folder, then advanced an epoch at a time.

    :func:`train` drives one ``Training`` with its own stepper; :func:`freezelab.lockstep.train_together`
    drives several through one shared stepper. Either way each finished epoch is evaluated,
    logged and checkpointed here, so a run's folder does not depend on who drove it.
    """

    def __init__(self, config: RunConfig | dict[str, Any], run_dir: str | Path | None = None, *,
                 data: DatasetSplits | None = None, progress: bool | None = None) -> None:
        self.run = run = build_run(config, data)
        cfg = run.config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.rows: list[dict[str, Any]] = []
        self.step_rows: list[pd.DataFrame] = []
        self.start_epoch, self._rng = 0, None
        self._saved_at, self._unsaved = time.monotonic(), None  # last finished epoch not checkpointed
        if self.run_dir is not None:
            runlog.write_config(self.run_dir, _config_record(cfg))
            self.start_epoch, self._rng = _resume(run, self.run_dir, self.rows, self.step_rows)
        if run.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(run.device)
        self.board = _tensorboard(cfg, self.run_dir)
        if cfg.grad_stats:
            metrics.warm_up_jvp()
        self.measure = graphed(lambda: measure_epoch(run), run.device) if lockstep_key(run) else lambda: measure_epoch(run)
        show = progress if progress is not None else not _quiet()
        self.bar = _Progress(show, cfg.epochs, run.steps_per_epoch, cfg.variant or cfg.experiment)

    def start(self) -> None:
        """Set the random streams this run trains with, right before its first epoch.

        The dropout stream is ``seed + 1`` for every schedule, or the checkpoint's when the run
        resumes. Setting it here rather than when the run is built means that building other
        runs in between (:mod:`freezelab.lockstep` builds them all first) cannot shift it.
        """
        torch.manual_seed(self.run.config.seed + 1)
        if self._rng is not None:
            cpu, cuda = self._rng
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)

    def begin_epoch(self, epoch: int) -> torch.Tensor:
        """Put the model in training mode; the epoch's batch order."""
        self.run.model.train()
        return self.run.batches.epoch(epoch)

    def end_epoch(self, epoch: int, stepped: tuple, train_time: float) -> None:
        """Evaluate, log and checkpoint a finished epoch; raise :class:`TrainingDiverged` on a NaN loss.

        ``stepped`` is a stepper's ``run_epoch`` result and ``train_time`` the seconds its steps
        took (synchronised). The epoch's time adds this run's own evaluation to it.
        """
        run, cfg = self.run, self.run.config
        losses, trainable, fractions, step_times = stepped
        t0 = time.perf_counter()
        row = _epoch_row(run, epoch, losses, trainable, fractions, train_time, self.measure())
        row["epoch_time_s"] = train_time + time.perf_counter() - t0
        if not math.isfinite(row["train_loss"]):
            # Keep the finished epochs (close() writes them); the diverged epoch is not saved.
            raise TrainingDiverged(
                f"loss became {row['train_loss']} in epoch {epoch + 1} of run {cfg.variant or cfg.experiment} "
                f"(seed {cfg.seed}); lower lr (now {cfg.lr}) or pick another optimizer. "
                f"The {len(self.rows)} finished epochs are kept{' in ' + str(self.run_dir) if self.run_dir else ''}."
            )
        self.rows.append(row)
        if cfg.log_steps:
            self.step_rows.append(_step_frame(epoch, run.steps_per_epoch, losses, trainable, fractions, step_times))
        self._unsaved = epoch
        if epoch + 1 == cfg.epochs or time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            _save_progress(run, self.run_dir, self.rows, self.step_rows, epoch)
            self._saved_at, self._unsaved = time.monotonic(), None
        if self.board is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.board.add_scalar(key.replace(":", "/"), value, row["epoch"])
        self.bar.epoch(f"epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} val {row['val_acc']:.2%}")

    def finish(self) -> RunResult:
        """The summary (written to the run folder) and the whole result."""
        epochs_df = pd.DataFrame(self.rows)
        steps_df = pd.concat(self.step_rows, ignore_index=True) if self.step_rows else None
        summary = _summary(self.run, epochs_df)
        if self.run_dir is not None:
            runlog.write_summary(self.run_dir, summary)
        return RunResult(self.run.config, epochs_df, steps_df, summary, self.run_dir, self.run.model)

    def close(self) -> None:
        """Stop the progress display; if the run stopped early, write its finished epochs.

        Only the tables: the model may be part-way through an epoch, so the checkpoint stays
        at the last saved epoch, and a resume drops (and redoes) the epochs after it.
        """
        if self._unsaved is not None:
            _write_tables(self.run_dir, self.rows, self.step_rows)
            self._unsaved = None
        self.bar.close()
        if self.board is not None:
            self.board.close()


def train(
    config: RunConfig | dict[str, Any],
    run_dir: str | Path | None = None,
    *,
    data: DatasetSplits | None = None,
    progress: bool | None = None,
) -> RunResult:
    """Train one run and (if ``run_dir`` is given) write its folder; resumes from a checkpoint there.

    Raises :class:`TrainingDiverged` on a NaN/inf loss after saving the finished epochs.
    """
    return run_training(Training(config, run_dir, data=data, progress=progress))


def run_training(training: Training) -> RunResult:
    """Drive one built :class:`Training` to its end with its own stepper."""
    run = training.run
    stepper = make_stepper(run)
    training.start()
    try:
        for epoch in range(training.start_epoch, run.config.epochs):
            t0 = time.perf_counter()
            perm = training.begin_epoch(epoch)
            stepped = stepper.run_epoch(epoch, perm, training.bar)
            if run.device.type == "cuda":
                torch.cuda.current_stream(run.device).synchronize()
            training.end_epoch(epoch, stepped, time.perf_counter() - t0)
    finally:
        stepper.close()
        training.close()
    return training.finish()


def _tensorboard(cfg: RunConfig, run_dir: Path | None):
    """A SummaryWriter into ``run_dir/tensorboard`` when the config asks for one."""
    if not cfg.tensorboard:
        return None
    if run_dir is None:
        raise ConfigError("tensorboard: true needs a run folder; pass run_dir (or --out on the CLI)")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard: true needs the tensorboard package: pip install 'freezelab[tensorboard]'") from None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _config_record(cfg: RunConfig) -> dict[str, Any]:
    record = cfg.to_dict()
    record["schedule_description"] = cfg.schedule_obj().describe()
    return record


def measure_epoch(run: Run) -> dict[str, Any]:
    """Everything evaluated at the end of an epoch, as device tensors (no host synchronisation).

    ``{"scalars": [val loss, val acc, val ECE, test loss, test acc], "probe": probe_statistics}``.
    On the GPU fast path this is replayed from a CUDA graph (:func:`freezelab.fast.graphed`).
    """
    model, data = run.model, run.data
    val_loss, val_acc, val_ece, _ = evaluate(model, data.val.x, data.val.y)
    test_loss, test_acc, _, _ = evaluate(model, data.test.x, data.test.y)
    probe = probe_statistics(run) if run.config.grad_stats else {}
    return {"scalars": [val_loss, val_acc, val_ece, test_loss, test_acc], "probe": probe}


def _epoch_row(run: Run, epoch: int, losses: torch.Tensor, trainable: list[frozenset[str]], fractions: list[float],
               train_time: float, measured: dict[str, Any]) -> dict[str, Any]:
    """The epoch's log row: the measurements and the training losses copied to the host in one go."""
    fz = run.freezer
    scalars = [losses.float().mean(), *measured["scalars"]]
    probe = measured["probe"]
    dead_names = list(probe.get("dead", {}))
    tensors = scalars + [probe["dead"][n] for n in dead_names]
    if "cosine" in probe:
        tensors.append(probe["cosine"])
    host = torch.stack([t.detach().float().reshape(()) for t in tensors]).cpu().tolist()
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": host[0],
        "val_loss": host[1],
        "val_acc": host[2],
        "val_ece": host[3],
        "test_loss": host[4],
        "test_acc": host[5],
        "lr": run.lr_at((epoch + 1) * run.steps_per_epoch - 1),
        "train_time_s": train_time,
        "trainable": "+".join(n for n in run.groups.names if n in trainable[-1]),
        "trainable_fraction": sum(fractions) / len(fractions),
        "opt_state_bytes": optimizer_state_bytes(fz.optimizer),
        "grad_cosine": host[6 + len(dead_names)] if "cosine" in probe else float("nan"),
    }
    for name, value in zip(dead_names, host[6 : 6 + len(dead_names)]):
        row[f"dead_pct:{name}"] = value
    if "grad_stats" in probe:
        stats = probe["grad_stats"].cpu().tolist()
        for name, (mean_abs, std, pct_zero) in zip(probe["grad_names"], stats):
            row[f"grad_mean_abs:{name}"] = mean_abs
            row[f"grad_std:{name}"] = std
            row[f"grad_pct_zero:{name}"] = pct_zero
    return row


def _step_frame(epoch: int, spe: int, losses: torch.Tensor, trainable, fractions, step_times) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "step": range(epoch * spe, epoch * spe + len(fractions)),
            "epoch": epoch + 1,
            "loss": losses.float().cpu().numpy(),
            "trainable": ["+".join(sorted(t)) for t in trainable],
            "trainable_fraction": fractions,
            "step_time_s": step_times,
        }
    )


def _write_tables(run_dir: Path | None, rows, step_rows) -> None:
    """Write the epochs (and steps) so far, atomically."""
    if run_dir is None:
        return
    runlog.write_table(run_dir / runlog.EPOCHS, rows)
    if step_rows:
        runlog.write_table(run_dir / runlog.STEPS, pd.concat(step_rows, ignore_index=True))


def _save_progress(run: Run, run_dir: Path | None, rows, step_rows, epoch: int) -> None:
    """Write the epochs so far and a checkpoint to resume from after ``epoch`` (0-based), atomically."""
    if run_dir is None:
        return
    _write_tables(run_dir, rows, step_rows)
    runlog.save_checkpoint(
        run_dir,
        {
            "epoch": epoch + 1,
            "model": run.model.state_dict(),
            "freezer": run.freezer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else None,
        },
    )


def _resume(run: Run, run_dir: Path, rows: list, step_rows: list) -> tuple[int, tuple | None]:
    """Load a checkpoint left by an unfinished run in ``run_dir``.

    Returns the epoch to start at and the checkpoint's random states ``(cpu, cuda)`` (``None``
    without a checkpoint), which :meth:`Training.start` sets.
    """
    state = runlog.load_checkpoint(run_dir, map_location=run.device)
    if state is None:
        return 0, None
    run.model.load_state_dict(state["model"])
    run.freezer.load_state_dict(state["freezer"])
    done = int(state["epoch"])  # epochs logged after the checkpoint are trained again
    epochs = runlog.read_table(run_dir / runlog.EPOCHS)
    rows.extend(r for r in (epochs.to_dict("records") if epochs is not None else []) if r["epoch"] <= done)
    steps = runlog.read_table(run_dir / runlog.STEPS)
    if steps is not None:
        step_rows.append(steps[steps["epoch"] <= done].reset_index(drop=True))
    return done, (state["rng_cpu"], state.get("rng_cuda"))


def _summary(run: Run, epochs: pd.DataFrame) -> dict[str, Any]:
    cfg, model, data = run.config, run.model, run.data
    val_acc = epochs["val_acc"].tolist()
    best = max(val_acc)
    target = cfg.target_acc if cfg.target_acc is not None else 0.9 * best
    _, _, test_ece, logits = evaluate(model, data.test.x, data.test.y)
    _, bins = metrics.expected_calibration_error(logits.float(), data.test.y)
    early = [c for c in epochs.columns if c.startswith("grad_mean_abs:") and c.endswith("weight")][:2]
    train_time = float(epochs["train_time_s"].sum())
    device = run.device
    return {
        "experiment": cfg.experiment,
        "variant": cfg.variant,
        "seed": cfg.seed,
        "schedule": cfg.schedule_obj().describe(),
        "final_val_acc": val_acc[-1],
        "best_val_acc": best,
        "best_epoch": int(epochs["epoch"][epochs["val_acc"].idxmax()]),
        "epoch_to_90pct_best": metrics.epoch_to_fraction_of_best(val_acc, 0.9),
        "final_test_acc": float(epochs["test_acc"].iloc[-1]),
        "final_train_loss": float(epochs["train_loss"].iloc[-1]),
        "stability": metrics.stability(epochs["train_loss"].tolist()),
        "mean_early_grad": float(epochs[early].mean().mean()) if early else None,
        "avg_epoch_time_s": float(epochs["epoch_time_s"].mean()),
        "total_time_s": float(epochs["epoch_time_s"].sum()),
        "train_time_s": train_time,
        "target_acc": target,
        "time_to_target_s": metrics.time_to_target(val_acc, epochs["epoch_time_s"].tolist(), target),
        "peak_mem_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "test_ece": float(test_ece),
        "reliability": {k: [float(v) for v in torch.as_tensor(bins[k]).tolist()] for k in ("conf", "acc", "count")},
        "throughput_samples_per_s": len(data.train.y) * len(epochs) / train_time if train_time else None,
        "step_time_ms": 1000 * train_time / (run.steps_per_epoch * len(epochs)),
        "switches": run.freezer.switches,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_version": torch.__version__,
    }
