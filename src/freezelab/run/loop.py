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
Under torchrun every rank drives the same run through it (:mod:`freezelab.run.ddp`): all ranks
resume from the run folder, rank 0 alone evaluates and writes it.

Example::

    >>> from freezelab.run import train
    >>> result = train({"dataset": "digits", "epochs": 2, "schedule": {"name": "alternate"}})
    >>> round(result.summary["final_val_acc"], 2) > 0.5
    True
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
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
from . import ddp as ddp_mod
from . import record
from .build import SharedData, build_run
from .cached_stepper import CachedStepper
from .evaluate import epoch_row, explosion, measure_epoch, step_frame, summarize
from .plan import log, log_plan, process_settings
from .steppers import EagerStepper, GraphStepper, StepRecord, graphed, make_stepper

__all__ = ["train", "Training", "epoch_loop", "run_training", "RunResult", "TrainingDiverged", "CRASH_ENV"]

#: ``N:PATH``: after writing the checkpoint of epoch N, kill this process (SIGKILL) unless PATH exists, creating it
#: first; so exactly one process of a sweep dies the way a lost node or a preempted worker does (tests of resume).
CRASH_ENV = "FREEZELAB_CRASH_AT_CHECKPOINT"


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


def _terminal() -> bool:
    """A person watching a terminal (not CI, not a pipe or a log file)."""
    return not os.environ.get("CI") and sys.stderr.isatty()


progress_log = logging.getLogger("freezelab.progress")


class _Progress:
    """What a run shows while it trains: a progress bar in a terminal, else one log line per epoch.

    ``mode`` is ``"bar"`` (rich's bar for epochs and batches), ``"lines"`` (an INFO line per epoch
    on the ``freezelab.progress`` logger: a run in CI or piped to a file would otherwise say
    nothing for as long as it trains; ``freezelab train`` sends them to stderr) or ``"off"``.
    """

    def __init__(self, mode: str, epochs: int, steps: int, label: str) -> None:
        self.bar = None
        self.mode, self.label = mode, label
        self._started = time.perf_counter()
        if mode == "bar":
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
        elif self.mode == "lines":
            progress_log.info("%s %s (%.1f s)", self.label, text, time.perf_counter() - self._started)

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
        # Under DDP every rank resumes from run_dir, but only rank 0 evaluates and writes (self.out).
        self.lead = ddp_mod.is_lead()
        if self.lead:
            log_plan(cfg, plan)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.out = self.run_dir if self.lead else None
        self.rows: list[dict[str, Any]] = []
        self.step_rows: list[pd.DataFrame] = []
        self.start_epoch, self._rng = 0, None
        #: The runs this one shares a stepper (and so its clock and the GPU's peak memory) with,
        #: as ``variant/seed<N>``; set by :mod:`freezelab.study.lockstep`. Empty: timed alone.
        self.lockstep_group: list[str] = []
        self._saved_at, self._unsaved = time.monotonic(), None  # last finished epoch not checkpointed
        self._exploded = False
        if self.out is not None:
            record.write_config(self.out, {**cfg.to_dict(), "schedule_description": run.schedule.describe()})
            record.write_plan(self.out, plan.to_dict())
        if self.run_dir is not None:
            self.start_epoch, self._rng = record.resume(run, self.run_dir, self.rows, self.step_rows)
            self._observe()  # an adaptive schedule's decisions, recomputed from the epochs read back
        run.memory.start()
        self.board = _tensorboard(cfg, self.run_dir) if self.lead else None
        if cfg.grad_stats and self.lead:
            metrics.warm_up_jvp()
        self.measure = graphed(lambda: measure_epoch(run), run.device) if plan.graphed_measurements else lambda: measure_epoch(run)
        mode = {True: "bar", False: "off", None: "bar" if _terminal() else "lines"}[progress] if self.lead else "off"
        self.bar = _Progress(mode, cfg.epochs, run.steps_per_epoch, cfg.variant or cfg.experiment)

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
        if run.ddp is not None:
            # Each rank's losses are its share's means: their mean over ranks is the global batch's loss,
            # on every rank, so a NaN stops them all. Only rank 0 goes on to evaluate and write.
            run.ddp.check_in_sync(f"at the end of epoch {epoch + 1}")
            stepped = dataclasses.replace(stepped, losses=run.ddp.mean(stepped.losses))
            if not self.lead:
                self._check_finite(float(stepped.losses.float().mean()), epoch)
                return
        t0 = time.perf_counter()
        # The evaluation's peak is its own, not the last trainable set's; frozen LoRA runs in its own
        # branch for it (the probe needs LoRA's gradient; every measurement sees the unmerged weights).
        with run.memory.phase(), run.freezer.unmerged_lora():
            row = epoch_row(run, epoch, stepped, train_time, self.measure())
        row["epoch_time_s"] = train_time + time.perf_counter() - t0
        row["timed_alone"] = not self.lockstep_group  # per epoch: a resumed run may have been in a group before
        self._check_finite(row["train_loss"], epoch)
        self.rows.append(row)
        self._observe()
        self._warn_if_exploded()
        if cfg.log_steps:
            self.step_rows.append(step_frame(run, epoch, stepped))
        self._unsaved = epoch
        if epoch + 1 == cfg.epochs or time.monotonic() - self._saved_at >= cfg.save_every_s:
            record.save_progress(run, self.out, self.rows, self.step_rows, epoch)
            self._saved_at, self._unsaved = time.monotonic(), None
            if self.out is not None:
                _crash_hook(epoch + 1)
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

    def _warn_if_exploded(self) -> None:
        """One warning line the first time the run is seen to explode (the summary records it too)."""
        if self._exploded:
            return
        found = explosion([r["train_loss"] for r in self.rows], [r["val_acc"] for r in self.rows], self.run.data.num_classes)
        if found is not None:
            self._exploded = True
            cfg = self.run.config
            log.warning("warning: run %s (seed %d) exploded at epoch %d: %s; lower lr (now %g) or pick another optimizer",
                        cfg.variant or cfg.experiment, cfg.seed, found["epoch"], found["reason"], cfg.lr)

    def _check_finite(self, loss: float, epoch: int) -> None:
        if not math.isfinite(loss):
            cfg = self.run.config
            # Keep the finished epochs (close() writes them); the diverged epoch is not saved.
            raise TrainingDiverged(
                f"loss became {loss} in epoch {epoch + 1} of run {cfg.variant or cfg.experiment} "
                f"(seed {cfg.seed}); lower lr (now {cfg.lr}) or pick another optimizer. "
                f"The {len(self.rows)} finished epochs are kept{' in ' + str(self.run_dir) if self.run_dir else ''}."
            )

    def finish(self) -> RunResult:
        """The summary (written to the run folder) and the whole result; other ranks than 0 get no rows or summary."""
        if not self.lead:
            return RunResult(self.run.config, pd.DataFrame(), None, {}, None, self.run.model)
        epochs_df = pd.DataFrame(self.rows)
        steps_df = pd.concat(self.step_rows, ignore_index=True) if self.step_rows else None
        if self.run.freezer.lora_merge is not None:
            self.run.freezer.lora_merge.unmerge_all()  # the caller gets the model's own weights back
        with process_settings(self.run.plan), self.run.memory.phase():  # the final evaluation with the run's own threads
            summary = summarize(self.run, epochs_df, steps_df)
        alone = epochs_df["timed_alone"] if "timed_alone" in epochs_df else pd.Series([False])
        # Epochs logged before this column existed have no value: not known to be alone.
        summary |= {"timed_alone": bool(alone.fillna(False).astype(bool).all()), "lockstep_group": self.lockstep_group}
        if self.run_dir is not None:
            record.write_summary(self.run_dir, summary)
        return RunResult(self.run.config, epochs_df, steps_df, summary, self.run_dir, self.run.model)

    def close(self) -> None:
        """Stop the progress display; if the run stopped early, write its finished epochs.

        Only the tables: the model may be part-way through an epoch, so the checkpoint stays
        at the last saved epoch, and a resume drops (and redoes) the epochs after it.
        """
        if self._unsaved is not None:
            record.write_tables(self.out, self.rows, self.step_rows)
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


def _crash_hook(epoch: int) -> None:
    """Kill this process after the checkpoint of ``epoch`` when :data:`CRASH_ENV` asks for it (once per marker)."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    at, _, marker = spec.partition(":")
    if int(at) != epoch or not marker or os.path.exists(marker):
        return
    Path(marker).write_text(f"killed pid {os.getpid()} after the checkpoint of epoch {epoch}\n")
    os.kill(os.getpid(), signal.SIGKILL)


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
