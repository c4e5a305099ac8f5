"""Timing probe: a few optimizer steps of each trainable set of a run, timed alone on its device.

Runs trained in lockstep (:mod:`freezelab.study.lockstep`) share one clock and one device, so
their epoch times, throughput and peak memory are the group's, not their own: every variant of
the group reads the same numbers. The probe measures what the report should compare instead.
It rebuilds the run from its folder's ``config.yaml``, finds every distinct trainable set the
schedule visits (schedules are pure, so this is a scan of the clock, no training), and for each
set runs ``warmup`` untimed steps and then ``steps`` timed ones, with CUDA events on a GPU and
``time.perf_counter`` on a CPU. The run's step time is the mean over sets weighted by the share
of the run's steps each set trains, which is what a whole run alone would spend per step.

The steps are eager (forward, backward, optimizer step), whatever stepper the run used: the
probe compares the cost of trainable sets with each other, on one device, under one method;
it is not the graph path's absolute speed, and ``timing_probe.json`` says so.

>>> probe = write_timing_probe("runs/seed004_fashion/alternate-epoch/seed0")  # doctest: +SKIP
>>> probe["step_ms"], [s["trainable"] for s in probe["sets"]]  # doctest: +SKIP
(0.41, ['first', 'second'])
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..files import atomic_write
from ..schedules import Clock
from . import record
from .build import Run, SharedData, build_run
from .compiled import model_loss

__all__ = ["trainable_set_shares", "time_trainable_sets", "write_timing_probe", "read_timing_probe"]


def trainable_set_shares(run: Run) -> dict[frozenset[str], tuple[int, float]]:
    """Each trainable set the run visits: ``(first step, share of all steps)``, in order of first use."""
    spe, epochs = run.steps_per_epoch, run.config.epochs
    counts: Counter[frozenset[str]] = Counter()
    first: dict[frozenset[str], int] = {}
    for step in range(spe * epochs):
        names = run.freezer.wanted(Clock.at(step, spe, epochs))
        counts[names] += 1
        first.setdefault(names, step)
    total = spe * epochs
    return {names: (first[names], counts[names] / total) for names in first}


def _timed_steps(run: Run, perm: torch.Tensor, n: int) -> float:
    """Seconds for ``n`` eager steps of the current trainable set (synchronised)."""
    model, fz, x, y, bs = run.model, run.freezer, run.data.train.x, run.data.train.y, run.config.batch_size
    inputs, spe = run.inputs, run.steps_per_epoch
    cuda = run.device.type == "cuda"
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for i in range(n):  # the eager stepper's step: its input pipeline and precision, without the schedule
        idx = perm[(i % spe) * bs : (i % spe + 1) * bs]
        draws = inputs.step_draws(epoch=0, step=i % spe, n=len(idx), device=run.device)
        xb = inputs.train(x[idx], draws)
        with inputs.autocast():
            loss = model_loss(model, xb, y[idx])
        loss.backward()
        fz.optimizer.step()
        fz.optimizer.zero_grad(set_to_none=True)
    if cuda:
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    return time.perf_counter() - t0


def time_trainable_sets(run: Run, steps: int = 20, warmup: int = 5) -> dict[str, Any]:
    """Time ``steps`` eager steps of every trainable set of ``run`` after ``warmup`` untimed ones.

    Returns the record ``timing_probe.json`` holds: ``sets`` (per set: ``trainable``, ``share``
    of the run's steps, ``step_ms``, ``peak_mem_bytes`` or None on a CPU) and the run-level
    ``step_ms`` (share-weighted), ``throughput_samples_per_s`` and ``peak_mem_bytes`` (the
    largest set's). The run's weights are trained by the probe: build a fresh run for it.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"the probe needs steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    cuda = run.device.type == "cuda"
    perm = run.batches.epoch(0)
    run.model.train()
    sets = []
    for names, (first_step, share) in trainable_set_shares(run).items():
        run.freezer.step(Clock.at(first_step, run.steps_per_epoch, run.config.epochs))
        for group in run.freezer.optimizer.param_groups:
            group["lr"] = run.lr_at(first_step)
        if cuda:
            torch.cuda.synchronize(run.device)
            torch.cuda.reset_peak_memory_stats(run.device)
        _timed_steps(run, perm, warmup)
        seconds = _timed_steps(run, perm, steps)
        sets.append({
            "trainable": "+".join(n for n in run.groups.names if n in names),
            "share": share,
            "step_ms": 1000 * seconds / steps,
            "peak_mem_bytes": torch.cuda.max_memory_allocated(run.device) if cuda else None,
        })
    step_ms = sum(s["share"] * s["step_ms"] for s in sets)
    peaks = [s["peak_mem_bytes"] for s in sets if s["peak_mem_bytes"] is not None]
    return {
        "method": f"eager steps timed alone with {'CUDA events' if cuda else 'time.perf_counter'} after warm-up",
        "device": torch.cuda.get_device_name(run.device) if cuda else "cpu",
        "steps": steps,
        "warmup": warmup,
        "batch_size": run.config.batch_size,
        "sets": sets,
        "step_ms": step_ms,
        "throughput_samples_per_s": 1000 * run.config.batch_size / step_ms if step_ms > 0 else None,
        "peak_mem_bytes": max(peaks) if peaks else None,
    }


def write_timing_probe(run_dir: str | Path, steps: int = 20, warmup: int = 5,
                       data: SharedData | None = None) -> dict[str, Any]:
    """Probe the run saved in ``run_dir`` (its ``config.yaml``) and write ``timing_probe.json`` there.

    ``data``: a :class:`SharedData` when several runs are probed, so the dataset loads once.
    """
    saved = record.read_config(run_dir)
    if saved is None:
        raise FileNotFoundError(f"{run_dir} has no {record.CONFIG}; point the probe at a run folder")
    saved.pop("schedule_description", None)  # written beside the config for people, not a run option
    probe = time_trainable_sets(build_run(RunConfig.from_dict(saved), data), steps, warmup)
    atomic_write(Path(run_dir) / record.TIMING_PROBE, json.dumps(probe, indent=2).encode())
    return probe


def read_timing_probe(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / record.TIMING_PROBE
    return json.loads(path.read_text()) if path.exists() else None
