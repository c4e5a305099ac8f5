"""Sweeps on Ray: each run of a grid is one Ray task, with the CPUs and (fractional) GPUs it asks for.

``freezelab run CONFIG --launcher ray [--address ADDR]`` decides what to train exactly as the
local launcher does (:func:`freezelab.study.runner.run_experiment`: finished runs are skipped,
unfinished ones resume, a changed config is refused) and hands the unfinished runs to
:func:`ray_launcher`. Each becomes a task that calls :func:`~freezelab.study.runner.train_one`,
so it writes the same run folder as a local run would.

* **Resources.** A task asks for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs. Fractions
  let small runs share a GPU (``0.25``: four runs per GPU); ``0`` trains on the CPU (Ray hides
  the GPUs from such a task, so ``device: auto`` resolves to the CPU). Torch uses the run's
  own ``threads`` (part of its config), so a run's result does not depend on the launcher; ask
  for ``cpus_per_run`` at least that many.
* **Lost workers.** A task whose worker process dies (a node lost, a preemption, the OOM
  killer) is retried up to ``max_retries`` times; the retry calls ``train_one`` again, which
  resumes from the run's last checkpoint. An error *raised* by a run (a diverged loss, a bad
  config) is not retried: it is the run's outcome, as it is locally.
* **Cluster.** Without ``address`` a local Ray instance is started for the sweep and stopped
  after it. With ``--address`` (``ray start --head`` prints it) the tasks go to that cluster:
  every node needs freezelab installed and ``--runs-dir`` on a file system all of them see.
  Lockstep groups (:mod:`freezelab.study.lockstep`) are a local-GPU feature and are not formed.

``import ray`` happens inside the functions, so freezelab works without it; asking for this
launcher without it is one clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig
from .runner import Launcher, RunOutcome, train_one

__all__ = ["ray_launcher", "require_ray"]


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--launcher ray needs the ray package: pip install 'freezelab[ray]' (or pip install ray)") from None
    return ray


def _task(config: dict[str, Any], run_dir: str) -> float:
    """What a Ray worker runs for one run (top level, so Ray pickles it by name)."""
    return train_one(config, run_dir)


def ray_launcher(
    address: str | None = None,
    *,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
    max_retries: int = 3,
    num_cpus: int | None = None,
) -> Launcher:
    """A launcher that trains each run as a Ray task (see the module docstring).

    ``address``: a running cluster (``ray://host:10001`` or ``host:6379``, ``auto``); ``None``
    starts a local instance with ``num_cpus`` CPUs (default: the machine's). A Ray already
    initialised by the caller is used as it is and left running.

    >>> launch = ray_launcher(cpus_per_run=1, gpus_per_run=0.25)   # doctest: +SKIP
    >>> run_experiment(exp, "runs", launcher=launch)               # doctest: +SKIP
    """
    ray = require_ray()
    if cpus_per_run <= 0 or gpus_per_run < 0 or max_retries < 0:
        raise ConfigError(
            f"need cpus_per_run > 0, gpus_per_run >= 0 and max_retries >= 0; got {cpus_per_run}, {gpus_per_run}, "
            f"{max_retries}"
        )
    if gpus_per_run > 1 and gpus_per_run != int(gpus_per_run):
        raise ConfigError(f"gpus_per_run {gpus_per_run} is above 1 but not whole; Ray takes fractions of one GPU only")

    def launch(todo: list[tuple[RunConfig, Path]], finish: Callable[[RunOutcome], None]) -> None:
        started = not ray.is_initialized()
        if started:
            if address is None:
                ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR")
            else:
                ray.init(address=address, logging_level="ERROR")
        task = ray.remote(_task).options(
            num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=max_retries, retry_exceptions=False
        )
        # Absolute paths: a worker's working directory is not the driver's.
        pending = {task.remote(cfg.to_dict(), str(Path(run_dir).resolve())): run_dir for cfg, run_dir in todo}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    finish(_outcome(ray, ref, pending.pop(ref), max_retries))
        finally:
            for ref in pending:  # Ctrl-C or an error in the driver: stop what is still queued or running
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    return launch


def _outcome(ray: Any, ref: Any, run_dir: Path, max_retries: int) -> RunOutcome:
    try:
        return RunOutcome(run_dir, "done", ray.get(ref))
    except ray.exceptions.RayTaskError as e:  # the run raised: its own error, as a local run reports it
        cause = e.cause if getattr(e, "cause", None) is not None else e
        return RunOutcome(run_dir, "failed", error=f"{type(cause).__name__}: {cause}")
    except ray.exceptions.RayError as e:  # the worker died on every attempt, or the cluster went away
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return RunOutcome(run_dir, "failed", error=f"{type(e).__name__} after {max_retries} retries: {first}")
