"""Steppers: how the optimizer steps of one epoch are executed.

``EagerStepper`` is the plain loop (forward, backward, optimizer step): it runs everywhere and
is the reference. ``GraphStepper`` is the GPU fast path: small models are launch-bound (a
FashionMLP step is a few dozen kernels of a few microseconds each; eagerly, Python and launch
overhead make an epoch 0.65 s on an H100), so it captures *chunks of whole steps* (batch
gather, forward, backward, optimizer update, loss bookkeeping) into CUDA graphs and replays
them. Inside a graph a step costs what its kernels cost, so the kernels are compiled where that
is exact (:mod:`freezelab.run.compiled`) and cuBLASLt picks the matrix products: 0.042 s per epoch
(``benchmarks/README.md``). Batch indices, the learning rate and the step counter live in
device tensors read inside the graph, so a replay needs no host input at all. One set of graphs
is captured per trainable set: a schedule that alternates replays the graphs of the set in
force and never a stale one. One ``GraphStepper`` can also step several runs in lockstep, each
on its own stream (:mod:`freezelab.study.lockstep`).

Which stepper a run gets, and whether it is compiled, is the run's plan
(:mod:`freezelab.run.plan`); the process-wide settings the graph path needs (cuBLASLt, Dynamo's
options) are applied around the run by :func:`freezelab.run.plan.process_settings`.

Both take the epoch's permutation as one device tensor and keep per-step values on the
device: no host synchronisation per step, a few per epoch (the permutation and LR table in,
the statistics out), and hand back one :class:`StepRecord` per run and epoch. :func:`graphed`
replays the end-of-epoch measurements the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..schedules import Clock
from .compiled import bookkeeping, compiled_loss, compiled_update, model_loss

if TYPE_CHECKING:
    from .build import Run

__all__ = ["StepRecord", "EagerStepper", "GraphStepper", "graphed", "make_stepper"]


@dataclass
class StepRecord:
    """What one epoch's steps of one run leave behind, per optimizer step."""

    losses: torch.Tensor  # the training loss of each step, on the device
    trainable: list[frozenset[str]]  # the trainable set of each step
    fractions: list[float]  # trainable parameters / managed parameters, each step
    step_times: list[float]  # seconds per step ([] when the run does not log steps)


class EagerStepper:
    """One Python-level step per batch: works everywhere, on every model and optimizer."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.timed = run.config.log_steps

    def set_lr(self, step: int) -> None:
        """The learning rate of ``step`` for every parameter group: the one place the eager loop sets it."""
        lr = self.run.lr_at(step)
        for group in self.run.freezer.optimizer.param_groups:
            group["lr"] = lr

    def run_epochs(self, epoch: int, perms: Sequence[torch.Tensor], bar=None) -> list[StepRecord]:
        """:meth:`run_epoch` in the form the epoch loop drives every stepper (one run here)."""
        (perm,) = perms
        return [self.run_epoch(epoch, perm, bar)]

    def run_epoch(self, epoch: int, perm: torch.Tensor, bar=None) -> StepRecord:
        run = self.run
        model, fz, x, y = run.model, run.freezer, run.data.train.x, run.data.train.y
        if run.ddp is not None:
            model = run.ddp  # DDP (torchrun): the forward pass goes through the wrapper of the trainable set
        spe, bs, epochs = run.steps_per_epoch, run.config.batch_size, run.config.epochs
        cuda = run.device.type == "cuda"
        losses = torch.empty(spe, device=run.device)
        trainable, fractions, marks = [], [], []
        inputs = run.inputs
        draws = inputs.epoch_draws(epoch=epoch, batch_sizes=batch_sizes(len(perm), bs), device=run.device)
        for i in range(spe):
            step = epoch * spe + i
            if self.timed:
                marks.append(_mark(cuda))
            fz.step(Clock.at(step, spe, epochs))
            run.memory.track(fz.trainable)
            opt = fz.optimizer
            self.set_lr(step)
            batch = slice(i * bs, (i + 1) * bs)
            if run.ddp is not None:
                batch = run.ddp.share(batch, len(perm))  # this rank's part of the global batch (and its draws)
            idx = perm[batch]
            xb = inputs.train(x[idx], tuple(d[batch] for d in draws) if draws is not None else None)
            with inputs.autocast():
                loss = model_loss(model, xb, y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses[i] = loss.detach()
            trainable.append(fz.trainable)
            fractions.append(fz.trainable_fraction)
            if bar is not None and i % 16 == 15:
                bar.step(16)
        if self.timed:
            marks.append(_mark(cuda))
        return StepRecord(losses, trainable, fractions, _durations(marks, cuda))


def batch_sizes(n: int, batch_size: int) -> list[int]:
    """The size of each batch of an epoch over ``n`` examples (the last one may be smaller)."""
    full, tail = divmod(n, batch_size)
    return [batch_size] * full + ([tail] if tail else [])


def _mark(cuda: bool):
    """A point in time: a recorded CUDA event on the GPU (no sync), a host clock on the CPU."""
    if cuda:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _durations(marks: list, cuda: bool) -> list[float]:
    """Seconds between consecutive marks (call after the epoch's synchronisation)."""
    if len(marks) < 2:
        return []
    if cuda:
        marks[-1].synchronize()
        return [a.elapsed_time(b) / 1000 for a, b in zip(marks, marks[1:])]
    return [b - a for a, b in zip(marks, marks[1:])]


def make_stepper(run: Run) -> EagerStepper | GraphStepper:
    """The stepper the run's plan names."""
    return GraphStepper([run]) if run.plan.stepper == "graph" else EagerStepper(run)


class _Member:
    """One run inside a :class:`GraphStepper`: its device-side inputs and what one step does."""

    def __init__(self, run: Run, compile_: bool) -> None:
        self.run = run
        cfg, dev = run.config, run.device
        n = len(run.data.train.y)
        self.bs = cfg.batch_size
        self.full_steps = n // self.bs
        self.perm = torch.zeros(n, dtype=torch.long, device=dev)
        self.lrs = torch.zeros(run.steps_per_epoch, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.losses = torch.zeros(run.steps_per_epoch, device=dev)
        self.lr_now = torch.tensor(float(run.lr_at(0)), device=dev)
        self.offsets = torch.arange(self.bs, device=dev)
        self.inputs = run.inputs
        # The epoch's augmentation draws in batch order, indexed like ``perm`` inside the graphs.
        self.draws = tuple(torch.zeros(n, dtype=dtype, device=dev) for dtype in (torch.long, torch.long, torch.bool)) \
            if run.inputs.augments else None
        for group in run.freezer.optimizer.param_groups:
            group["lr"] = self.lr_now
            if "capturable" in group:
                group["capturable"] = True  # state (Adam's step count) stays on the device
        optimizer = run.freezer.optimizer
        self.loss = compiled_loss() if compile_ else model_loss
        self.update = (compiled_update(optimizer) if compile_ else None) or optimizer.step
        self.gather, self.record = bookkeeping(compile_)
        self.compiled = compile_

    def prepare(self, epoch: int, perm: torch.Tensor) -> tuple[list[Clock], list[frozenset[str]]]:
        """Upload the epoch's batch order and learning rates; the clock and trainable set of each step."""
        run = self.run
        spe, epochs = run.steps_per_epoch, run.config.epochs
        clocks = [Clock.at(epoch * spe + i, spe, epochs) for i in range(spe)]
        self.perm.copy_(perm)
        if self.draws is not None:
            fresh = self.inputs.epoch_draws(epoch=epoch, batch_sizes=batch_sizes(len(perm), self.bs), device=run.device)
            for d, value in zip(self.draws, fresh):
                d.copy_(value)
        self.lrs.copy_(torch.tensor([float(run.lr_at(c.step)) for c in clocks], device=run.device))
        self.pos.zero_()
        return clocks, [run.freezer.wanted(c) for c in clocks]

    def one_step(self, tail: bool) -> None:
        """Forward, backward and update of one batch, reading every input from device tensors."""
        run = self.run
        tail_start = self.full_steps * self.bs if tail else None
        xb, yb, draws = self.gather(run.data.train.x, run.data.train.y, self.perm, self.pos, self.offsets, self.lrs,
                                    self.lr_now, tail_start, self.draws)
        xb = self.inputs.train(xb, draws)
        with self.inputs.autocast():
            loss = self.loss(run.model, xb, yb)
        loss.backward()
        self.update()
        run.freezer.optimizer.zero_grad(set_to_none=True)
        self.record(self.losses, self.pos, loss)

    def warm_up(self, tail: bool) -> None:
        """Two steps on the same batch (the caller restores everything afterwards)."""
        self.one_step(tail)
        self.pos.sub_(1)  # the last batch of an epoch has no successor to step on
        self.one_step(tail)

    def snapshot(self) -> dict:
        run = self.run
        return {
            "tensors": [(t, t.detach().clone()) for t in [*run.model.parameters(), *run.model.buffers(),
                                                          self.pos, self.losses, self.lr_now]],
            "state": {id(p): {k: v.clone() for k, v in st.items() if torch.is_tensor(v)}
                      for p, st in run.freezer.optimizer.state.items()},
        }

    @torch.no_grad()
    def restore(self, saved: dict) -> None:
        for t, value in saved["tensors"]:
            t.copy_(value)
        for p, st in self.run.freezer.optimizer.state.items():
            before = saved["state"].get(id(p))
            for k, v in st.items():
                if not torch.is_tensor(v):
                    continue
                if before is None:
                    v.zero_()  # state the warm-up created starts from zero, as a fresh optimizer's does
                else:
                    v.copy_(before[k])


class GraphStepper:
    """Replays chunks of whole training steps from CUDA graphs, one set per trainable set.

    A segment of steps with one trainable set is covered by the largest captured chunk that
    fits (``chunk``, ``chunk/2``, ..., 1 steps) plus, at the end of an epoch, a graph for the
    smaller last batch. Capturing first runs two real steps on a side stream (to create the
    optimizer state, library workspaces and compiled kernels) and then restores parameters,
    buffers and optimizer state bit for bit, so capturing never changes the training
    trajectory. That includes the CUDA generator: the warm-up's dropout draws are undone, and
    a replay advances the generator's Philox offset by what its kernels draw, as the eager
    kernels do one by one, so a dropout model draws fresh masks every step, from the same
    stream position as the eager loop (``tests/test_run_inputs.py`` checks the two agree).

    Several runs (``runs``) step in lockstep: each graph holds the same steps of every run,
    each run on its own CUDA stream, so the GPU overlaps their small kernels. Every run
    executes exactly the kernels it would alone, so its results are bit-identical to training
    it alone (``tests/test_run_steppers.py``). Runs in one stepper need equal plans'
    ``lockstep_key`` (same device, steps per epoch and batch size, no dropout).

    Each run's members are compiled as its plan says. The stepper runs its steps with
    cuBLASLt as the preferred BLAS library and, compiled, Dynamo's settings for freezing:
    :func:`freezelab.run.plan.process_settings` around the run applies both.
    """

    name = "graph"

    def __init__(self, runs: Sequence[Run], chunk: int = 32) -> None:
        keys = {run.plan.lockstep_key for run in runs}
        if any(run.plan.stepper != "graph" for run in runs):
            raise ValueError("the graph stepper takes runs whose plan names it (run.plan.stepper == 'graph')")
        if len(runs) > 1 and (len(keys) != 1 or None in keys):
            raise ValueError("runs stepped together need the same device, steps per epoch and batch size, and no dropout")
        dev = runs[0].device
        self.chunk = chunk
        self.members = [_Member(run, run.plan.compiled) for run in runs]
        self.full_steps = self.members[0].full_steps
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device=dev)
        self.streams = [torch.cuda.Stream(device=dev) for _ in self.members] if len(self.members) > 1 else [self.stream]
        self.timed = any(run.config.log_steps for run in runs)

    @property
    def compiled(self) -> bool:
        return all(m.compiled for m in self.members)

    def _graph(self, key: tuple, steps: int, tail: bool) -> torch.cuda.CUDAGraph:
        if (key, steps, tail) not in self.graphs:
            self.graphs[key, steps, tail] = self._capture(steps, tail)
        return self.graphs[key, steps, tail]

    def _capture(self, steps: int, tail: bool) -> torch.cuda.CUDAGraph:
        """Warm up with two real steps per run, undo them bit for bit, then record ``steps`` steps.

        Two, because a new trainable set's first step creates optimizer state through
        ``optimizer.step()`` and only the second runs the compiled update: compiling (and
        Inductor's kernel benchmarking) must happen here, never inside the capture.
        """
        saved = [m.snapshot() for m in self.members]
        rng = torch.cuda.get_rng_state(self.stream.device)  # the warm-up's dropout draws are undone too
        here = torch.cuda.current_stream()
        for m, stream in zip(self.members, self.streams):
            stream.wait_stream(here)
            with torch.cuda.stream(stream):
                m.warm_up(tail)  # creates optimizer state, library workspaces, compiled kernels
            here.wait_stream(stream)
        for m, s in zip(self.members, saved):
            m.restore(s)
        torch.cuda.set_rng_state(rng, self.stream.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            for m, stream in zip(self.members, self.streams):
                stream.wait_stream(self.stream)  # fork (a no-op for a single run)
                with torch.cuda.stream(stream):
                    for _ in range(steps):
                        m.one_step(tail)
            for stream in self.streams:
                self.stream.wait_stream(stream)  # join
        return graph

    # -- an epoch ---------------------------------------------------------------------------------
    def run_epoch(self, epoch: int, perm: torch.Tensor, bar=None) -> StepRecord:
        """One epoch of a single-run stepper."""
        return self.run_epochs(epoch, [perm], bar)[0]

    def run_epochs(self, epoch: int, perms: Sequence[torch.Tensor], bar=None) -> list[StepRecord]:
        """One epoch of every run, in lockstep; one record per run."""
        ahead = [m.prepare(epoch, perm) for m, perm in zip(self.members, perms)]
        freezers = [m.run.freezer for m in self.members]
        spe = self.members[0].run.steps_per_epoch
        fractions: list[list[float]] = [[] for _ in self.members]
        times: list[tuple] = []
        i = 0
        while i < spe:
            for m, fz, (clocks, _) in zip(self.members, freezers, ahead):
                fz.step(clocks[i])
                m.run.memory.track(fz.trainable)
            j = i
            while j < spe and all(sets[j] == fz.trainable for fz, (_, sets) in zip(freezers, ahead)):
                j += 1
            for f, fz in zip(fractions, freezers):
                f += [fz.trainable_fraction] * (j - i)
            key = tuple(fz.trainable for fz in freezers)
            k, full_end = i, min(j, self.full_steps)
            while k < j:
                tail = k >= full_end
                steps = 1 if tail else _largest_power_of_two(min(self.chunk, full_end - k))
                start = _mark(True) if self.timed else None
                self._graph(key, steps, tail).replay()
                if self.timed:
                    times.append((start, _mark(True), steps))
                k += steps
            if bar is not None:
                bar.step(j - i)
            i = j
        step_times: list[float] = []
        if times:
            times[-1][1].synchronize()
            for start, end, steps in times:
                step_times += [start.elapsed_time(end) / 1000 / steps] * steps
        return [StepRecord(m.losses.clone(), sets, f, step_times) for m, (_, sets), f in zip(self.members, ahead, fractions)]


def graphed(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` replayed from a CUDA graph: same kernels, same results, a fraction of the launch cost.

    For the per-epoch measurements (validation, test, gradient probe: some hundred small
    kernels, 11 ms of launches for a FashionMLP, a fifth of its epoch). The first call runs
    ``fn`` once to warm up, captures a second run and replays it; every call returns the
    tensors of that captured run, refreshed in place by the replay, so callers must read them
    before the next call and never keep them. ``fn`` must not synchronise with the host and
    must run the same kernels each time (the same inputs, shapes and Python-side choices).
    """
    state: dict[str, Any] = {}

    def call() -> Any:
        if "graph" not in state:
            stream = torch.cuda.Stream(device=device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                fn()
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                state["out"] = fn()
            state["graph"] = graph
        state["graph"].replay()
        return state["out"]

    return call


def _largest_power_of_two(n: int) -> int:
    return 1 << (n.bit_length() - 1)
