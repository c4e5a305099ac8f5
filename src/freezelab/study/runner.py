"""Run an experiment's grid: one folder per run, skip what is finished, resume what is not.

Re-running the same command is always safe: finished runs (``summary.json`` present) are
skipped, unfinished ones resume from their last epoch checkpoint, and a folder whose saved
config differs from the one asked for is refused rather than overwritten. Small runs can
share a machine (and one GPU) through ``jobs`` worker processes.

A run's result does not depend on how it was launched: each run sets torch's CPU thread count
to its config's ``threads`` (default 1), alone or in a worker, so ``--jobs 1`` and ``--jobs 4``
give bit-identical runs. (Workers used to split the cores, one thread each with ``--jobs 2`` on
two cores, against the caller's two threads with ``--jobs 1``, and their weights differed by
up to 0.03.) A folder written before the thread count was recorded is refused, since nobody
knows which count trained it. Ctrl-C stops a pool at once: the workers ignore SIGINT, the
runner stops them and raises :class:`KeyboardInterrupt`, and every finished run stays saved.

Deciding *what* to train (skip, resume, refuse) is :func:`run_experiment`'s; *where* the runs
train is a :data:`Launcher`'s: :func:`local_launcher` (this process, lockstep groups on a GPU,
or a pool of worker processes) or :func:`freezelab.study.ray_launcher.ray_launcher` (one Ray task
per run, on a cluster). Every launcher calls :func:`train_one`, so the run folders are the same.
Under torchrun (:mod:`freezelab.run.ddp`) the runs train one after another, each over all ranks.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig
from ..run import ddp, record
from ..run.build import groups_spec
from ..run.plan import lockstep_candidate
from ..schedules import ScheduleError, schedule_from_dict
from .experiment import Experiment

__all__ = ["run_experiment", "RunOutcome", "ConfigChanged", "check_run_dir", "Launcher", "local_launcher", "train_one"]

log = logging.getLogger("freezelab")


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
    """``True`` if the run is already finished; raise :class:`ConfigChanged` on a mismatch.

    A path that is a file, or a folder whose ``config.yaml`` is not a run config (another
    program's, a damaged one), is a :class:`~freezelab.run.record.RunFolderError`: never overwritten.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise record.RunFolderError(f"{run_dir} is a file, not a run folder; choose another output folder or remove the file")
    saved = record.read_config(run_dir)
    if saved is None:
        return False
    foreign = sorted(set(saved) - set(cfg.to_dict()) - {"schedule_description"})
    if foreign:
        raise record.RunFolderError(
            f"{run_dir / record.CONFIG} is not a freezelab run config (it has {foreign[0]!r}); "
            "write to another folder (--runs-dir, or --out for train) or remove that one"
        )
    if "threads" not in saved:  # written before the thread count was part of a run's identity
        raise ConfigChanged(
            f"{run_dir} holds a run from before freezelab recorded its thread count (threads), so it cannot be "
            f"matched with threads={cfg.threads}; write to another folder (--runs-dir, or --out for train) or remove that one"
        )
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


#: Trains runs into their folders and reports each run's outcome through the callback, as it ends.
Launcher = Callable[[list[tuple[RunConfig, Path]], Callable[["RunOutcome"], None]], None]


def train_one(config: dict[str, Any], run_dir: str) -> float:
    """Train one run into ``run_dir`` (resuming from its checkpoint there); its seconds.

    The entry point of every launcher's worker (top level, so it pickles by name). The run
    sets its own thread count (its config's ``threads``), wherever it trains.
    """
    from ..run import train

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


def local_launcher(jobs: int = 1, lockstep: int = 32) -> Launcher:
    """Train runs on this machine.

    On a GPU, up to ``lockstep`` runs that can share CUDA graphs train together in this process,
    each on its own stream, with the results each would get alone (:mod:`freezelab.study.lockstep`).
    The other runs train ``jobs`` at a time in worker processes (each with its config's
    ``threads``), or in this process with ``jobs=1``.
    """

    def launch(todo: list[tuple[RunConfig, Path]], finish: Callable[[RunOutcome], None]) -> None:
        if lockstep > 1:
            todo = _train_in_lockstep(todo, lockstep, finish)
        if jobs <= 1 or len(todo) <= 1:
            for cfg, run_dir in todo:
                try:
                    finish(RunOutcome(run_dir, "done", train_one(cfg.to_dict(), str(run_dir))))
                except Exception as e:  # noqa: BLE001 - reported per run, the others go on
                    finish(RunOutcome(run_dir, "failed", error=f"{type(e).__name__}: {e}"))
            return
        _train_in_workers(todo, jobs, finish)

    return launch


def run_experiment(
    experiment: Experiment,
    runs_dir: str | Path,
    *,
    jobs: int = 1,
    lockstep: int = 32,
    on_result: Callable[[RunOutcome], None] | None = None,
    launcher: Launcher | None = None,
) -> list[RunOutcome]:
    """Train every unfinished run of ``experiment`` under ``runs_dir``; one outcome per run.

    ``launcher`` says where the unfinished runs train; the default is
    ``local_launcher(jobs, lockstep)``. Under torchrun every rank calls this with the same
    arguments and the runs train one after another over all ranks (no worker processes, no
    lockstep: the graph path is off under DDP). A failing run (a diverged loss, say) is reported
    in its outcome and does not stop the others; every finished run stays on disk. Each run
    trains with its config's ``threads``, so the results do not depend on ``jobs`` or the launcher.
    A :class:`KeyboardInterrupt` (Ctrl-C) stops local workers at once and propagates.
    """
    record.check_writable(Path(runs_dir) / experiment.name)  # a wrong --runs-dir fails once, before any run
    if ddp.active():
        if launcher is not None or jobs > 1:
            raise ConfigError(
                f"under torchrun ({ddp.world_size()} processes) the runs train one after another over all ranks; "
                "drop --jobs and --launcher (or run the sweep without torchrun)"
            )
        launcher = local_launcher(jobs=1, lockstep=1)
    launcher = launcher or local_launcher(jobs, lockstep)
    todo: list[tuple[RunConfig, Path]] = []
    outcomes: list[RunOutcome] = []
    experiment.write_manifest(runs_dir)
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
        if outcome.status == "failed":  # the report lists it with this reason
            record.write_failure(outcome.run_dir, outcome.error or "unknown error")
        outcomes.append(outcome)
        if on_result:
            on_result(outcome)

    if todo:
        launcher(todo, finish)
    return outcomes


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C reaches the whole process group; the parent alone decides what stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _train_in_workers(todo: list[tuple[RunConfig, Path]], jobs: int, finish: Callable[[RunOutcome], None]) -> None:
    """Train ``todo`` in ``jobs`` worker processes; on Ctrl-C stop them all and re-raise.

    Without this, a :class:`KeyboardInterrupt` in the parent waits for the pool to drain (every
    queued run trains to its end), and one in a worker fails only that worker's run.
    """
    import multiprocessing as mp

    threads = max(cfg.threads for cfg, _ in todo)
    if jobs * threads > _cpus():
        log.warning("%d workers x %d threads each is more than the %d CPUs here; the runs will be slower, not different",
                    jobs, threads, _cpus())
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_ignore_sigint)
    try:
        futures = {pool.submit(train_one, cfg.to_dict(), str(run_dir)): run_dir for cfg, run_dir in todo}
        for fut in as_completed(futures):
            run_dir = futures[fut]
            try:
                finish(RunOutcome(run_dir, "done", fut.result()))
            except Exception as e:  # noqa: BLE001
                finish(RunOutcome(run_dir, "failed", error=f"{type(e).__name__}: {e}"))
    except BaseException:
        _stop_workers(pool)  # Ctrl-C (or a bug here): the unfinished runs keep their last checkpoint
        raise
    pool.shutdown()


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued runs and terminate the running ones (their folders hold only whole files)."""
    if hasattr(pool, "terminate_workers"):  # Python 3.14
        pool.terminate_workers()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown forgets them
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)
