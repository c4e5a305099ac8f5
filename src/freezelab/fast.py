"""Steppers: how the optimizer steps of one epoch are executed.

``EagerStepper`` is the plain loop (forward, backward, optimizer step): it runs everywhere and
is the reference. ``GraphStepper`` is the GPU fast path: small models are launch-bound (a
FashionMLP step is ~40 kernels of a few microseconds each; eagerly, Python and launch overhead
make an epoch 0.62 s on an H100), so it captures *chunks of whole steps* (forward, backward,
fused optimizer step, loss bookkeeping) into CUDA graphs and replays them (0.09 s per epoch,
which is then the kernels' own time: benchmarks/profile_step.py). Batch indices, the learning rate and
the step counter live in device tensors read inside the graph, so a replay needs no host
input at all. One set of graphs is captured per trainable set: a schedule that alternates
replays the graphs of the set in force and never a stale one.

Both take the epoch's permutation as one device tensor and keep per-step values on the
device: no host synchronisation per step, a few per epoch (the permutation and LR table in,
the statistics out).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from .schedules import Clock

if TYPE_CHECKING:
    from .train import Run

__all__ = ["EagerStepper", "GraphStepper", "graph_unsupported", "make_stepper"]


class EagerStepper:
    """One Python-level step per batch: works everywhere, on every model and optimizer."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.timed = run.config.log_steps

    def run_epoch(self, epoch: int, perm: torch.Tensor, bar=None):
        run = self.run
        model, fz, x, y = run.model, run.freezer, run.data.train.x, run.data.train.y
        spe, bs, epochs = run.steps_per_epoch, run.config.batch_size, run.config.epochs
        cuda = run.device.type == "cuda"
        losses = torch.empty(spe, device=run.device)
        trainable, fractions, marks = [], [], []
        for i in range(spe):
            step = epoch * spe + i
            if self.timed:
                marks.append(_mark(cuda))
            fz.step(Clock.at(step, spe, epochs))
            opt = fz.optimizer
            lr = run.lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = perm[i * bs : (i + 1) * bs]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
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
        return losses, trainable, fractions, _durations(marks, cuda)


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


#: Optimizer policies whose optimizer state keeps its tensors across switches (graphs hold them).
GRAPH_POLICIES = ("keep", "remove")


def graph_unsupported(run: Run) -> str | None:
    """Why the CUDA-graph path cannot run ``run`` exactly, or ``None`` if it can."""
    if run.device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if run.freezer.policy not in GRAPH_POLICIES:
        return f"policy {run.freezer.policy!r} replaces or frees optimizer state that a graph would keep using"
    defaults = run.freezer.optimizer.defaults
    if not (defaults.get("fused") or defaults.get("capturable")):
        return f"optimizer {run.config.optimizer!r} is neither fused nor capturable"
    return None


def make_stepper(run: Run):
    """The graph stepper where it is exact for this run (``fast: auto``), else the eager one."""
    from .config import ConfigError

    if run.config.fast == "off":
        return EagerStepper(run)
    reason = graph_unsupported(run)
    if reason is None:
        return GraphStepper(run)
    if run.config.fast == "graph":
        raise ConfigError(f"fast: graph cannot be used here: {reason}; use fast: auto or off")
    return EagerStepper(run)


class GraphStepper:
    """Replays chunks of whole training steps from CUDA graphs, one set per trainable set.

    A segment of steps with one trainable set is covered by the largest captured chunk that
    fits (``chunk``, ``chunk/2``, ..., 1 steps) plus, at the end of an epoch, a graph for the
    smaller last batch. Capturing first runs one real step on a side stream (to create the
    optimizer state and library workspaces) and then restores parameters, buffers and optimizer
    state bit for bit, so capturing never changes the training trajectory. Dropout is the
    exception: replays draw their masks inside the graph and the warm-up step draws one set
    more, so a dropout model's masks (not their distribution) differ from the eager path's.
    """

    name = "graph"

    def __init__(self, run: Run, chunk: int = 32) -> None:
        self.run, self.chunk = run, chunk
        cfg, dev = run.config, run.device
        n = len(run.data.train.y)
        self.bs = cfg.batch_size
        self.full_steps, self.tail = divmod(n, self.bs)
        spe = run.steps_per_epoch
        self.perm = torch.zeros(n, dtype=torch.long, device=dev)
        self.lrs = torch.zeros(spe, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.losses = torch.zeros(spe, device=dev)
        self.lr_now = torch.tensor(float(run.lr_at(0)), device=dev)
        self.offsets = torch.arange(self.bs, device=dev)
        for group in run.freezer.optimizer.param_groups:
            group["lr"] = self.lr_now
            if "capturable" in group:
                group["capturable"] = True  # state (Adam's step count) stays on the device
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device=dev)
        self.timed = cfg.log_steps

    # -- what one step does (eagerly during warm-up, recorded during capture) -------------------
    def _one_step(self, tail: bool) -> None:
        run = self.run
        model, opt, x, y = run.model, run.freezer.optimizer, run.data.train.x, run.data.train.y
        if tail:
            idx = self.perm[self.full_steps * self.bs :]
        else:
            idx = self.perm.index_select(0, self.offsets + self.pos * self.bs)
        self.lr_now.copy_(self.lrs.index_select(0, self.pos).view(()))
        loss = nn.functional.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.losses.index_copy_(0, self.pos, loss.detach().view(1))
        self.pos.add_(1)

    def _graph(self, trainable: frozenset[str], steps: int, tail: bool) -> torch.cuda.CUDAGraph:
        key = (trainable, steps, tail)
        if key not in self.graphs:
            self.graphs[key] = self._capture(steps, tail)
        return self.graphs[key]

    def _capture(self, steps: int, tail: bool) -> torch.cuda.CUDAGraph:
        """Warm up with one real step, undo it bit for bit, then record ``steps`` steps."""
        saved = self._snapshot()
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            self._one_step(tail)  # creates optimizer state and library workspaces
        torch.cuda.current_stream().wait_stream(self.stream)
        self._restore(saved)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            for _ in range(steps):
                self._one_step(tail)
        return graph

    def _snapshot(self) -> dict:
        run = self.run
        opt = run.freezer.optimizer
        return {
            "tensors": [(t, t.detach().clone()) for t in [*run.model.parameters(), *run.model.buffers(),
                                                          self.pos, self.losses, self.lr_now]],
            "state": {id(p): {k: v.clone() for k, v in st.items() if torch.is_tensor(v)} for p, st in opt.state.items()},
        }

    @torch.no_grad()
    def _restore(self, saved: dict) -> None:
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

    # -- an epoch ---------------------------------------------------------------------------------
    def run_epoch(self, epoch: int, perm: torch.Tensor, bar=None):
        run = self.run
        fz, spe, epochs = run.freezer, run.steps_per_epoch, run.config.epochs
        clocks = [Clock.at(epoch * spe + i, spe, epochs) for i in range(spe)]
        sets = [fz.wanted(c) for c in clocks]
        self.perm.copy_(perm)
        self.lrs.copy_(torch.tensor([float(run.lr_at(c.step)) for c in clocks], device=run.device))
        self.pos.zero_()
        fractions: list[float] = []
        times: list[tuple] = []
        i = 0
        while i < spe:
            fz.step(clocks[i])
            j = i
            while j < spe and sets[j] == fz.trainable:
                j += 1
            fractions += [fz.trainable_fraction] * (j - i)
            k, full_end = i, min(j, self.full_steps)
            while k < j:
                tail = k >= full_end
                steps = 1 if tail else _largest_power_of_two(min(self.chunk, full_end - k))
                start = _mark(True) if self.timed else None
                self._graph(fz.trainable, steps, tail).replay()
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
        return self.losses.clone(), sets, fractions, step_times


def _largest_power_of_two(n: int) -> int:
    return 1 << (n.bit_length() - 1)
