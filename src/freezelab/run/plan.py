"""A run's execution plan: how it runs, decided once, in one place, with the reason for each choice.

What a run computes is its config; *how* it executes is this plan: the device, whether its
optimizer is built fused, which stepper takes its steps (the CUDA-graph path or the eager
loop), whether the graph path's pieces are compiled, whether the end-of-epoch measurements
are replayed from a graph, and which runs it may share a GPU with in lockstep. Each choice
depends on the config and on a few facts of the built run (dropout, the trainable sets the
schedule visits), so :func:`plan_run` is called once per run, by :func:`freezelab.run.build.build_run`,
and everything else (the steppers, the loop, :mod:`freezelab.study.lockstep`) reads the plan
instead of deciding again. The plan is logged and written to the run folder (``plan.json``).

The one question asked before a run is built, "may this config share a GPU in lockstep?"
(the runner groups runs by it before building them), is :func:`lockstep_candidate`, which
applies the same rule (:func:`graph_unsupported`) to the config alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..config import ConfigError, RunConfig

__all__ = ["ExecutionPlan", "plan_run", "log_plan", "resolve_device", "fused_optimizer", "graph_unsupported", "lockstep_candidate",
           "process_settings", "GRAPH_POLICIES", "FUSED_OPTIMIZERS", "MAX_COMPILED_SETS"]

log = logging.getLogger("freezelab")

#: Optimizer policies whose optimizer state keeps its tensors across switches (graphs hold them).
GRAPH_POLICIES = ("keep", "remove")
#: Optimizers built fused on CUDA (one multi-tensor kernel; the graph path needs fused or capturable).
FUSED_OPTIMIZERS = ("adam", "adamw", "sgd", "sgd_momentum")
#: A run that visits more trainable sets than this is not compiled (each set is a recompile).
MAX_COMPILED_SETS = 8


def resolve_device(name: str) -> torch.device:
    """The device a config's ``device`` names (``auto``: CUDA when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here; use device: auto or cpu")
    return device


def fused_optimizer(cfg: RunConfig, device: torch.device) -> bool:
    """Whether the run's optimizer is built fused (CUDA, and an optimizer torch fuses)."""
    return device.type == "cuda" and cfg.optimizer in FUSED_OPTIMIZERS


def graph_unsupported(cfg: RunConfig, device: torch.device, *, scales_lr: bool = False,
                      world_size: int = 1) -> str | None:
    """Why the CUDA-graph path cannot run ``cfg`` exactly on ``device``, or ``None`` if it can.

    ``scales_lr``: the built schedule sets per-group learning rates (FreezeOut's annealing); the
    freezer applies them around ``optimizer.step()``, which the graph path's update never calls.
    ``world_size``: processes training the run together under DDP (torchrun).
    """
    if cfg.fast == "off":
        return "fast: off"
    if world_size > 1:
        return (f"DDP over {world_size} processes: gradients are all-reduced by DDP's autograd hooks, through a "
                "wrapper rebuilt when the trainable set changes, which a captured CUDA graph cannot follow")
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if cfg.policy not in GRAPH_POLICIES:
        return f"policy {cfg.policy!r} replaces or frees optimizer state that a graph would keep using"
    if not fused_optimizer(cfg, device):
        return f"optimizer {cfg.optimizer!r} is neither fused nor capturable"
    if scales_lr:
        return "the schedule sets per-group learning rates (FreezeOut's annealing), applied around optimizer.step()"
    return None


def lockstep_candidate(cfg: RunConfig) -> tuple | None:
    """Before building: runs with equal keys may share a GPU in lockstep (the plan decides once built)."""
    if graph_unsupported(cfg, resolve_device(cfg.device)) is not None:
        return None
    return (cfg.dataset, cfg.recipe, cfg.subset, cfg.data_root, cfg.batch_size, cfg.epochs, cfg.threads)


@dataclass(frozen=True)
class ExecutionPlan:
    """How one run executes; every ``*_reason`` says why, in words, for the log and ``plan.json``."""

    device: str
    fused_optimizer: bool
    stepper: str  # "graph" (CUDA graphs of whole steps) or "eager"
    stepper_reason: str
    compiled: bool  # the graph path's loss, update and bookkeeping are torch.compile'd
    compile_reason: str
    graphed_measurements: bool  # the end-of-epoch evaluation is replayed from a CUDA graph
    measurements_reason: str
    lockstep_key: tuple | None  # runs with equal keys can share one GraphStepper; None: this one cannot
    lockstep_reason: str
    precision: str = "fp32"  # "fp32" or "bf16" (autocast of the forward pass)
    precision_reason: str = "float32 throughout"
    channels_last: bool = False  # image batches and conv weights in NHWC layout
    channels_last_reason: str = "not an image model"
    merge_lora: bool = False  # frozen peft LoRA adapters are merged into their base weights (lora_merge.py)
    merge_lora_reason: str = "merge_frozen_lora: auto, the model has no peft LoRA layer"
    threads: int = 1  # the config's torch thread count, which process_settings sets (runs sharing a loop agree)
    world_size: int = 1  # processes training this run together under DDP (torchrun); 1: no DDP

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["lockstep_key"] = list(self.lockstep_key) if self.lockstep_key is not None else None
        return out


def plan_run(cfg: RunConfig, device: torch.device, *, dropout: bool, trainable_sets: Callable[[int], int],
             optimizer: torch.optim.Optimizer, steps_per_epoch: int, train_size: int,
             scales_lr: bool = False, images: bool = False, world_size: int = 1,
             merge_lora: tuple[bool, str] = (False, ExecutionPlan.merge_lora_reason)) -> ExecutionPlan:
    """The plan of a built run.

    ``dropout``: the model has dropout; ``trainable_sets(enough)``: how many distinct trainable
    sets the schedule visits, counted up to ``enough`` (only asked when it matters);
    ``optimizer``: the built optimizer (is there a compiled update for it?); ``scales_lr``: the
    schedule sets per-group learning rates; ``images``: the model takes NCHW images; ``world_size``:
    processes under DDP (the graph path is off); ``merge_lora``: :func:`lora_merge_choice`'s answer.
    """
    precision, precision_reason = _precision(cfg, device, images)
    channels_last, channels_last_reason = _channels_last(cfg, device, images)
    from .compiled import has_compiled_update

    why_not_graph = graph_unsupported(cfg, device, scales_lr=scales_lr, world_size=world_size)
    if why_not_graph is not None and cfg.fast == "graph":
        raise ConfigError(f"fast: graph cannot be used here: {why_not_graph}; use fast: auto or off")
    graph = why_not_graph is None

    def why_not_compiled() -> str | None:
        if cfg.compile == "off":
            return "compile: off"
        if device.type != "cuda":
            return "compiling pays off on CUDA only"
        if not graph:
            return "only the graph path is compiled"
        if dropout:
            return "the model has dropout (compiled masks would differ from the eager ones)"
        sets = trainable_sets(MAX_COMPILED_SETS + 1)
        if sets > MAX_COMPILED_SETS:
            return f"the schedule visits {sets} trainable sets (> {MAX_COMPILED_SETS}; each would recompile)"
        if not has_compiled_update(optimizer):
            return f"no compiled update for {type(optimizer).__name__}"
        return None

    no_compile = why_not_compiled()
    # Dropout: runs in one process share the CUDA generator, so lockstep masks would differ from
    # each run's own alone; the graphed probe would draw its masks differently too.
    shared = graph and not dropout
    if not graph:
        shared_reason = f"eager stepper ({why_not_graph})"
    elif dropout:
        shared_reason = "the model has dropout (graphed and shared-generator masks would differ from the eager ones)"
    else:
        shared_reason = "graph path, no dropout"
    return ExecutionPlan(
        device=str(device),
        fused_optimizer=fused_optimizer(cfg, device),
        stepper="graph" if graph else "eager",
        stepper_reason="CUDA graphs are exact for this run" if graph else why_not_graph,
        compiled=no_compile is None,
        compile_reason=no_compile or f"graph path on CUDA, at most {MAX_COMPILED_SETS} trainable sets",
        graphed_measurements=shared,
        measurements_reason=shared_reason,
        lockstep_key=(str(device), steps_per_epoch, train_size, cfg.batch_size, cfg.threads) if shared else None,
        lockstep_reason=shared_reason,
        precision=precision,
        precision_reason=precision_reason,
        channels_last=channels_last,
        channels_last_reason=channels_last_reason,
        merge_lora=merge_lora[0],
        merge_lora_reason=merge_lora[1],
        threads=cfg.threads,
        world_size=world_size,
    )


def lora_merge_choice(cfg: RunConfig, model: torch.nn.Module) -> tuple[bool, str]:
    """Whether the run merges frozen LoRA adapters (``merge_frozen_lora``), and why.

    Decided on the built model, before the freezer that does the merging is made.
    """
    from ..lora_merge import why_not_mergeable

    if cfg.merge_frozen_lora == "off":
        return False, "merge_frozen_lora: off"
    reason = why_not_mergeable(model)
    if reason is None:
        return True, f"merge_frozen_lora: {cfg.merge_frozen_lora}, plain LoRA adapters merge exactly"
    if cfg.merge_frozen_lora == "on":
        raise ConfigError(f"merge_frozen_lora: on cannot be used here: {reason}; use merge_frozen_lora: auto or off")
    return False, f"merge_frozen_lora: auto, {reason}"


def _precision(cfg: RunConfig, device: torch.device, images: bool) -> tuple[str, str]:
    """bf16 autocast where asked, or (``auto``) for image models on CUDA, whose convolutions and
    attention run on tensor cores at bf16 rates; MLP recipes stay float32, as their seeds ran."""
    if cfg.precision == "bf16":
        return "bf16", "precision: bf16"
    if cfg.precision == "fp32":
        return "fp32", "precision: fp32"
    if device.type == "cuda" and images:
        return "bf16", "precision: auto, an image model on CUDA"
    return "fp32", "precision: auto, " + ("not an image model" if device.type == "cuda" else "bf16 pays off on CUDA only")


def _channels_last(cfg: RunConfig, device: torch.device, images: bool) -> tuple[bool, str]:
    """NHWC where asked, or (``auto``) for image models on CUDA: cuDNN's fast convolution kernels are NHWC."""
    if cfg.channels_last == "on":
        if not images:
            raise ConfigError(f"channels_last: on needs a model that takes images; model {cfg.model!r} takes flat vectors")
        return True, "channels_last: on"
    if cfg.channels_last == "off":
        return False, "channels_last: off"
    if not images:
        return False, "channels_last: auto, not an image model"
    return device.type == "cuda", "channels_last: auto, " + ("an image model on CUDA" if device.type == "cuda" else "NCHW on the CPU")


def log_plan(cfg: RunConfig, plan: ExecutionPlan) -> None:
    log.info("run %s (seed %d): %s stepper (%s); compiled: %s (%s); graphed measurements: %s; %s%s; world size %d%s",
             cfg.variant or cfg.experiment, cfg.seed, plan.stepper, plan.stepper_reason, plan.compiled,
             plan.compile_reason, plan.graphed_measurements, plan.precision, ", channels-last" if plan.channels_last else "",
             plan.world_size, ", frozen LoRA merged" if plan.merge_lora else "")


@contextlib.contextmanager
def process_settings(*plans: ExecutionPlan) -> Iterator[None]:
    """The process-wide settings the plans' runs need, applied while the block runs, restored afterwards.

    * The graph path makes cuBLASLt torch's preferred BLAS library: its heuristics pick far
      better kernels than cuBLAS's for small float32 products (a FashionMLP weight gradient:
      52 µs with cuBLAS, 5 µs with cuBLASLt).
    * Compiled runs need Dynamo's settings for freezing (:func:`freezelab.run.compiled.dynamo_settings`).
    * torch's CPU thread count is the config's ``threads``: it changes a CPU run's results (a
      float32 sum over 2 threads rounds differently than over 1), so it is fixed per run rather
      than left to whoever calls (``--jobs`` used to give each worker its share of the cores).
      Runs that share a loop have equal ``threads`` (it is part of the lockstep key).
    """
    threads = {p.threads for p in plans}
    if len(threads) != 1:
        raise ValueError(f"runs that share one epoch loop must use one thread count, got {sorted(threads)}")
    with contextlib.ExitStack() as stack:
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads.pop())
        stack.callback(torch.set_num_threads, previous_threads)
        if any(p.stepper == "graph" for p in plans):
            previous = torch.backends.cuda.preferred_blas_library()
            torch.backends.cuda.preferred_blas_library("cublaslt")
            stack.callback(torch.backends.cuda.preferred_blas_library, previous)
        if any(p.compiled for p in plans):
            from .compiled import dynamo_settings

            stack.enter_context(dynamo_settings())
        yield
