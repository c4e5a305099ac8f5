"""Several runs trained together on one GPU, each with exactly the result it would get alone.

A small run leaves a GPU mostly idle: a FashionMLP step is a few dozen kernels of a few
microseconds, each on a handful of the GPU's 132 multiprocessors. Worker processes do not fix
that, because a GPU time-slices between processes instead of overlapping them. Here the runs
share one process and one :class:`~freezelab.run.steppers.GraphStepper`: each CUDA graph holds the
same steps of every run, every run on its own stream, so the GPU overlaps their kernels
(60 seed-004 runs: about 5x the throughput of one after another,
``benchmarks/results/step_variants_gpu.json``). Every run executes the kernels it would
execute alone, on inputs that depend only on its own seed, so its curves are bit-identical
to training it alone.

Runs share a stepper when their plans' ``lockstep_key`` are equal (CUDA graphs possible, no
dropout, same steps per epoch and batch size; :mod:`freezelab.run.plan`) and they start at the
same epoch (a resumed run may be further along); any other run is trained alone, in this
process. Either way the runs go through the one epoch loop, :func:`freezelab.run.loop.epoch_loop`.
Runs that load the same data share one copy of it on the device.

Because a group shares one clock and one device, its runs' epoch times and peak memory are the
group's: each run's summary says ``timed_alone: false`` and names its ``lockstep_group``, and
after the group one run of each variant is timed alone by :mod:`freezelab.run.probe`
(``timing_probe.json``), which is what the report compares instead.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from ..config import RunConfig
from ..run.build import SharedData
from ..run.loop import RunResult, Training, epoch_loop, run_training
from ..run.probe import write_timing_probe
from ..run.steppers import GraphStepper

__all__ = ["train_together"]

Outcome = RunResult | BaseException
log = logging.getLogger(__name__)


def train_together(
    jobs: Sequence[tuple[RunConfig, str | Path | None]],
    *,
    on_result: Callable[[int, Outcome, float], None] | None = None,
) -> list[Outcome]:
    """Train every ``(config, run_dir)`` job; runs that can share the GPU step in lockstep.

    Returns one outcome per job, in order: its :class:`~freezelab.run.RunResult`, or the
    exception that stopped it (a diverged run stops alone; the others go on). ``on_result``
    is called with ``(index, outcome, seconds)`` as each finishes.
    """
    outcomes: list[Outcome | None] = [None] * len(jobs)
    shared_data = SharedData()
    trainings: dict[int, Training] = {}
    t0 = time.perf_counter()

    def done(i: int, outcome: Outcome) -> None:
        outcomes[i] = outcome
        if on_result:
            on_result(i, outcome, time.perf_counter() - t0)

    for i, (cfg, run_dir) in enumerate(jobs):
        try:
            trainings[i] = Training(cfg, run_dir, data=shared_data, progress=False)
        except Exception as e:  # noqa: BLE001 - reported per run, the others go on
            done(i, e)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, t in trainings.items():
        key = t.run.plan.lockstep_key
        groups[(key, t.start_epoch) if key is not None else ("alone", i)].append(i)
    for (key, _), members in groups.items():
        if key == "alone" or len(members) == 1:
            for i in members:
                _train_alone(trainings[i], done, i)
        else:
            _train_group(members, trainings, done)
            _probe_variants([trainings[i] for i in members if isinstance(outcomes[i], RunResult)], shared_data)
    return outcomes  # type: ignore[return-value]


def _train_alone(training: Training, done: Callable, i: int) -> None:
    """A run that shares nothing: the ordinary single-run loop."""
    try:
        done(i, run_training(training))
    except Exception as e:  # noqa: BLE001
        done(i, e)


def _train_group(members: list[int], trainings: dict[int, Training], done: Callable) -> None:
    """Runs that share one :class:`GraphStepper`, through the single-run epoch loop."""
    group = [trainings[i] for i in members]
    names = [f"{t.run.config.variant}/seed{t.run.config.seed}" for t in group]
    for t in group:  # they share one clock and one device: the summary says so, the report reads it
        t.lockstep_group = names
    try:
        stepper = GraphStepper([t.run for t in group])
    except Exception as e:  # noqa: BLE001 - the shared stepper failed: every run of the group fails
        for t, i in zip(group, members):
            t.close()
            done(i, e)
        return
    alive = epoch_loop(group, stepper, failed=lambda k, e: done(members[k], e))
    for k in alive:
        try:
            done(members[k], group[k].finish())
        except Exception as e:  # noqa: BLE001
            done(members[k], e)


def _probe_variants(group: list[Training], data: SharedData) -> None:
    """Time one finished run of each variant of a lockstep group alone (its ``timing_probe.json``).

    A probe that fails costs the report its speed columns, not the runs: it is logged, not raised.
    """
    probed: set[str] = set()
    for t in group:
        cfg = t.run.config
        if t.run_dir is None or cfg.variant in probed:
            continue
        probed.add(cfg.variant)
        try:
            write_timing_probe(t.run_dir, data=data)
        except Exception as e:  # noqa: BLE001 - see the docstring
            log.warning("timing probe of %s failed (%s: %s); the report will show no speed for it",
                        t.run_dir, type(e).__name__, e)
