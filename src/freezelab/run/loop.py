"""One training run, driven an epoch at a time: a :class:`~freezelab.config.RunConfig` in, a run folder out.

The loop is built for speed on small models, where the Python and launch overhead dominates:

* the dataset lives on the training device and batches are index slices of it;
* losses, accuracies and statistics stay on the device during an epoch and are copied to the
  host at the end of each epoch, never per step or per parameter;
* the schedule is pure, so the trainable set of every step is known in advance; on a GPU the
  whole step is replayed from a CUDA graph captured once per trainable set
  (:mod:`freezelab.run.steppers`), so alternation never replays a stale graph.

:func:`epoch_loop` is the one epoch loop: :func:`train` drives one run through it with its own
stepper, :func:`freezelab.study.lockstep.train_together` drives several through one shared stepper.

Example::

    >>> from freezelab.run import train
    >>> result = train({"dataset": "digits", "epochs": 2, "schedule": {"name": "alternate"}})
    >>> round(result.summary["final_val_acc"], 2) > 0.5
    True
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .. import metrics
from ..config import ConfigError, RunConfig
from ..data import DatasetSplits
from . import record
from .build import SharedData, build_run
from .evaluate import epoch_row, measure_epoch, step_frame, summarize
from .plan import log_plan, process_settings
from .cached_stepper import CachedStepper
from .steppers import EagerStepper, GraphStepper, StepRecord, graphed, make_stepper

__all__ = ["train", "Training", "epoch_loop", "run_training", "RunResult", "TrainingDiverged"]


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

    :func:`epoch_loop` drives it; each finished epoch is evaluated, logged and checkpointed
    here, so a run's folder does not depend on who drove it (alone or in lockstep).
    """

    def __init__(self, config: RunConfig | dict[str, Any], run_dir: str | Path | None = None, *,
                 data: DatasetSplits | SharedData | None = None, progress: bool | None = None) -> None:
        self.run = run = build_run(config, data)
        cfg, plan = run.config, run.plan
        log_plan(cfg, plan)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.rows: list[dict[str, Any]] = []
        self.step_rows: list[pd.DataFrame] = []
        self.start_epoch, self._rng = 0, None
        self._saved_at, self._unsaved = time.monotonic(), None  # last finished epoch not checkpointed
        if self.run_dir is not None:
            record.write_config(self.run_dir, {**cfg.to_dict(), "schedule_description": run.schedule.describe()})
            record.write_plan(self.run_dir, plan.to_dict())
            self.start_epoch, self._rng = record.resume(run, self.run_dir, self.rows, self.step_rows)
            self._observe()  # an adaptive schedule's decisions, recomputed from the epochs read back
        run.memory.start()
        self.board = _tensorboard(cfg, self.run_dir)
        if cfg.grad_stats:
            metrics.warm_up_jvp()
        self.measure = graphed(lambda: measure_epoch(run), run.device) if plan.graphed_measurements else lambda: measure_epoch(run)
        show = progress if progress is not None else not _quiet()
        self.bar = _Progress(show, cfg.epochs, run.steps_per_epoch, cfg.variant or cfg.experiment)

    def start(self) -> None:
        """Set the random streams this run trains with, right before its first epoch.

        The dropout stream is ``seed + 1`` for every schedule, or the checkpoint's when the run
        resumes. Setting it here rather than when the run is built means that building other
        runs in between (:mod:`freezelab.study.lockstep` builds them all first) cannot shift it.
        """
        torch.manual_seed(self.run.config.seed + 1)
        if self._rng is not None:
            cpu, cuda = self._rng
            # RNG states are CPU byte tensors, whatever map_location the checkpoint was loaded with
            # (on a GPU it moves them to the device, and torch then refuses them).
            torch.set_rng_state(cpu.cpu())
            if cuda is not None:
                torch.cuda.set_rng_state_all([state.cpu() for state in cuda])

    def begin_epoch(self, epoch: int) -> torch.Tensor:
        """Put the model in training mode; the epoch's batch order."""
        self.run.model.train()
        return self.run.batches.epoch(epoch)

    def end_epoch(self, epoch: int, stepped: StepRecord, train_time: float) -> None:
        """Evaluate, log and checkpoint a finished epoch; raise :class:`TrainingDiverged` on a NaN loss.

        ``stepped`` is what the stepper recorded of the epoch's steps and ``train_time`` the
        seconds they took (synchronised). The epoch's time adds this run's own evaluation to it.
        """
        run, cfg = self.run, self.run.config
        t0 = time.perf_counter()
        with run.memory.phase():  # the evaluation's peak is its own, not the last trainable set's
            row = epoch_row(run, epoch, stepped, train_time, self.measure())
        row["epoch_time_s"] = train_time + time.perf_counter() - t0
        if not math.isfinite(row["train_loss"]):
            # Keep the finished epochs (close() writes them); the diverged epoch is not saved.
            raise TrainingDiverged(
                f"loss became {row['train_loss']} in epoch {epoch + 1} of run {cfg.variant or cfg.experiment} "
                f"(seed {cfg.seed}); lower lr (now {cfg.lr}) or pick another optimizer. "
                f"The {len(self.rows)} finished epochs are kept{' in ' + str(self.run_dir) if self.run_dir else ''}."
            )
        self.rows.append(row)
        self._observe()
        if cfg.log_steps:
            self.step_rows.append(step_frame(run, epoch, stepped))
        self._unsaved = epoch
        if epoch + 1 == cfg.epochs or time.monotonic() - self._saved_at >= cfg.save_every_s:
            record.save_progress(run, self.run_dir, self.rows, self.step_rows, epoch)
            self._saved_at, self._unsaved = time.monotonic(), None
        if self.board is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.board.add_scalar(key.replace(":", "/"), value, row["epoch"])
        self.bar.epoch(f"epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} val {row['val_acc']:.2%}")

    def _observe(self) -> None:
        """Hand an adaptive schedule every finished epoch's row; the next epoch trains under its answer.

        The answer is a function of the rows alone (``Schedule.observe``), asked of the config's
        schedule each time, so a resumed run decides exactly as the uninterrupted one.
        """
        run = self.run
        if run.schedule.adapts:
            run.freezer.schedule = run.schedule.observe(self.rows, run.groups.schedulable, run.config.epochs)

    def finish(self) -> RunResult:
        """The summary (written to the run folder) and the whole result."""
        epochs_df = pd.DataFrame(self.rows)
        steps_df = pd.concat(self.step_rows, ignore_index=True) if self.step_rows else None
        with self.run.memory.phase():
            summary = summarize(self.run, epochs_df, steps_df)
        if self.run_dir is not None:
            record.write_summary(self.run_dir, summary)
        return RunResult(self.run.config, epochs_df, steps_df, summary, self.run_dir, self.run.model)

    def close(self) -> None:
        """Stop the progress display; if the run stopped early, write its finished epochs.

        Only the tables: the model may be part-way through an epoch, so the checkpoint stays
        at the last saved epoch, and a resume drops (and redoes) the epochs after it.
        """
        if self._unsaved is not None:
            record.write_tables(self.run_dir, self.rows, self.step_rows)
            self._unsaved = None
        self.bar.close()
        if self.board is not None:
            self.board.close()


def epoch_loop(trainings: Sequence[Training], stepper: EagerStepper | GraphStepper,
               failed: Callable[[int, BaseException], None] | None = None) -> list[int]:
    """Drive built trainings from their start epoch to their last, one stepper for all; the indices still alive.

    All trainings start at the same epoch and have as many epochs and steps (one training, or a
    lockstep group). A training whose epoch fails (a diverged loss) is handed to ``failed`` and
    dropped while the others go on; so is every unfinished one when the shared stepper fails.
    Without ``failed`` the error propagates. Every training is closed at the end; the caller
    finishes the survivors.
    The process-wide settings the plans need are applied around the loop and restored after it.
    """
    run0 = trainings[0].run
    alive = list(range(len(trainings)))
    bar = trainings[0].bar if len(trainings) == 1 else None
    try:
        with process_settings(*(t.run.plan for t in trainings)):
            for t in trainings:
                t.start()  # no dropout in a lockstep group, so whichever run sets the streams last does no harm
            for epoch in range(trainings[0].start_epoch, run0.config.epochs):
                t0 = time.perf_counter()
                perms = [t.begin_epoch(epoch) for t in trainings]
                stepped = stepper.run_epochs(epoch, perms, bar)
                if run0.device.type == "cuda":
                    torch.cuda.current_stream(run0.device).synchronize()
                train_time = time.perf_counter() - t0
                for k in list(alive):
                    try:
                        trainings[k].end_epoch(epoch, stepped[k], train_time)
                    except Exception as e:
                        if failed is None:
                            raise
                        alive.remove(k)
                        failed(k, e)  # this run stops; its graphs go on idling
                if not alive:
                    break
    except Exception as e:
        if failed is None:
            raise
        for k in alive:  # the shared stepper failed: every unfinished run fails
            failed(k, e)
        alive = []
    finally:
        for t in trainings:
            t.close()
    return alive


def run_training(training: Training) -> RunResult:
    """Drive one built :class:`Training` to its end with its own stepper."""
    run = training.run
    epoch_loop([training], CachedStepper(run) if run.cache_prefix else make_stepper(run))
    return training.finish()


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
