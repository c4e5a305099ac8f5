"""Run an experiment's grid: one folder per run, skip what is finished, resume what is not.

Re-running the same command is always safe: finished runs (``summary.json`` present) are
skipped, unfinished ones resume from their last epoch checkpoint, and a folder whose saved
config differs from the one asked for is refused rather than overwritten. Small runs can
share a machine (and one GPU) through ``jobs`` worker processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig
from ..run import record
from ..run.build import groups_spec
from ..run.plan import lockstep_candidate
from ..schedules import ScheduleError, schedule_from_dict
from .experiment import Experiment

__all__ = ["run_experiment", "RunOutcome", "ConfigChanged", "check_run_dir"]


class ConfigChanged(ConfigError):
    """A run folder already holds a run with a different configuration."""


@dataclass
class RunOutcome:
    run_dir: Path
    status: str  # done | skipped | failed
    seconds: float = 0.0
    error: str | None = None


#: Fields that say where or how a run executes, not what it computes: changing them is no new run.
_WHERE_NOT_WHAT = {"schedule_description", "device", "data_root", "download", "fast", "compile", "tensorboard",
                   "save_every_s"}


def check_run_dir(run_dir: Path, cfg: RunConfig) -> bool:
    """``True`` if the run is already finished; raise :class:`ConfigChanged` on a mismatch."""
    saved = record.read_config(run_dir)
    if saved is None:
        return False
    saved = {**RunConfig().to_dict(), **saved}  # an option added since the folder was written had its default
    wanted = cfg.to_dict()
    # {name: alternate, unit: epoch} and the same with its defaults spelled out are one schedule.
    saved["schedule"], wanted["schedule"] = _canonical(saved.get("schedule")), _canonical(wanted["schedule"])
    # groups left unset are the model's default groups, which a run folder records resolved.
    saved["groups"], wanted["groups"] = _resolved_groups(saved), _resolved_groups(wanted)
    diff = sorted(k for k in (set(saved) | set(wanted)) - _WHERE_NOT_WHAT if saved.get(k) != wanted.get(k))
    if diff:
        k = diff[0]
        raise ConfigChanged(
            f"{run_dir} holds a run with {k}={saved.get(k)!r}, but the config now says {k}={wanted.get(k)!r}; "
            "write to another folder (--runs-dir, or --out for train) or remove that one to rerun it"
        )
    return record.is_finished(run_dir)


def _resolved_groups(config: dict[str, Any]) -> Any:
    if config.get("groups") is not None:
        return config["groups"]
    try:
        return groups_spec(RunConfig.from_dict({k: config[k] for k in ("model", "model_args") if k in config}))
    except (ConfigError, ValueError):  # a model no longer registered: compare as written
        return None


def _canonical(schedule: Any) -> Any:
    try:
        return schedule_from_dict(schedule).to_dict()
    except (ScheduleError, TypeError):
        return schedule


def _cpus() -> int:
    """CPUs this process may use (``os.cpu_count`` counts the whole machine, ignoring affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _train_one(config: dict[str, Any], run_dir: str, threads: int | None = None) -> float:
    """Worker entry point (top level so it pickles): train one run into ``run_dir``."""
    import torch

    from ..run import train

    if threads:  # workers split the CPUs; in-process runs keep the caller's setting
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    train(RunConfig.from_dict(config), run_dir, progress=False)
    return time.perf_counter() - t0


def _train_in_lockstep(todo: list[tuple[RunConfig, Path]], size: int, finish: Callable[[RunOutcome], None]) -> list:
    """Train the runs that may share the GPU, ``size`` at a time; return the others."""
    from .lockstep import train_together

    chunks: dict[tuple, list[tuple[RunConfig, Path]]] = {}
    rest = []
    for cfg, run_dir in todo:
        key = lockstep_candidate(cfg)  # the plan decides exactly once each run is built
        if key is None:
            rest.append((cfg, run_dir))
        else:
            chunks.setdefault(key, []).append((cfg, run_dir))
    for jobs in chunks.values():
        for start in range(0, len(jobs), size):
            part = jobs[start : start + size]

            def report(i: int, outcome, seconds: float, part=part) -> None:
                if isinstance(outcome, BaseException):
                    finish(RunOutcome(part[i][1], "failed", seconds, f"{type(outcome).__name__}: {outcome}"))
                else:
                    finish(RunOutcome(part[i][1], "done", seconds))

            train_together(part, on_result=report)
    return rest


def run_experiment(
    experiment: Experiment,
    runs_dir: str | Path,
    *,
    jobs: int = 1,
    lockstep: int = 32,
    on_result: Callable[[RunOutcome], None] | None = None,
) -> list[RunOutcome]:
    """Train every unfinished run of ``experiment`` under ``runs_dir``.

    On a GPU, up to ``lockstep`` runs that can share CUDA graphs train together in this process,
    each on its own stream, with the results each would get alone (:mod:`freezelab.study.lockstep`).
    The other runs train ``jobs`` at a time in worker processes (on a CPU, each worker gets
    its share of the cores). A failing run (a diverged loss, say) is reported in its outcome
    and does not stop the others; every finished run stays on disk.
    """
    todo: list[tuple[RunConfig, Path]] = []
    outcomes: list[RunOutcome] = []
    for cfg in experiment.configs():
        run_dir = experiment.run_dir(runs_dir, cfg)
        if check_run_dir(run_dir, cfg):
            outcomes.append(RunOutcome(run_dir, "skipped"))
        else:
            todo.append((cfg, run_dir))
    for o in outcomes:
        if on_result:
            on_result(o)

    def finish(outcome: RunOutcome) -> None:
        outcomes.append(outcome)
        if on_result:
            on_result(outcome)

    if lockstep > 1:
        todo = _train_in_lockstep(todo, lockstep, finish)
    if jobs <= 1 or len(todo) <= 1:
        for cfg, run_dir in todo:
            try:
                finish(RunOutcome(run_dir, "done", _train_one(cfg.to_dict(), str(run_dir))))
            except Exception as e:  # noqa: BLE001 - reported per run, the others go on
                finish(RunOutcome(run_dir, "failed", error=f"{type(e).__name__}: {e}"))
        return outcomes
    import multiprocessing as mp

    threads = max(1, _cpus() // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_train_one, cfg.to_dict(), str(run_dir), threads): run_dir for cfg, run_dir in todo}
        for fut in as_completed(futures):
            run_dir = futures[fut]
            try:
                finish(RunOutcome(run_dir, "done", fut.result()))
            except Exception as e:  # noqa: BLE001
                finish(RunOutcome(run_dir, "failed", error=f"{type(e).__name__}: {e}"))
    return outcomes
