"""``torch.compile``'d pieces of the GPU fast path: the loss with its backward, and the optimizer update.

Why: inside a CUDA graph a small model's step costs exactly what its kernels cost. torch's
fused Adam is one multi-tensor kernel that, for a few small tensors, runs on a handful of
thread blocks (about 47 µs of a FashionMLP step on an H100); Inductor's version of the same
update is one wide kernel (about 3 µs). Compiling forward + loss fuses bias, activation,
log-softmax and NLL and their backward into fewer kernels. Both are then captured into the
graph stepper's CUDA graphs like any other kernel (``benchmarks/step_variants.py`` measures
each piece).

The update calls torch's own functional Adam/SGD, the code ``optimizer.step()`` runs, with
the optimizer's own state tensors. Tensors are *arguments* of the compiled function, so runs
whose parameters have the same shapes (a sweep over seeds, activations or learning rates)
share one compiled graph instead of recompiling for every optimizer object. Likewise the loss
takes the model as an argument: instances of one architecture share a graph.

Compiling costs seconds per distinct graph (a new trainable set, an activation, an optimizer),
so the run's plan (:mod:`freezelab.run.plan`) turns it off where a run would have many of them,
and for dropout (Inductor draws masks with its own generator; the eager masks are the reference).
The Dynamo settings that make compiling exact under freezing are process-wide: a run applies
them for its duration through :func:`dynamo_settings`; :func:`configure_dynamo` applies them for
good, for code that compiles its own model.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.adam import adam as functional_adam
from torch.optim.sgd import sgd as functional_sgd

__all__ = ["model_loss", "bookkeeping", "compiled_loss", "compiled_update", "has_compiled_update", "configure_dynamo",
           "dynamo_settings"]


def _dynamo_options(recompile_limit: int) -> dict[str, Any]:
    """The Dynamo settings that make ``torch.compile`` fit freezing (see :func:`configure_dynamo`)."""
    import torch._dynamo.config as dynamo_config

    options: dict[str, Any] = {}
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            options[name] = max(getattr(dynamo_config, name), recompile_limit)
            break
    for name in ("skip_tensor_guards_with_matching_dict_tags", "use_recursive_dict_tags_for_guards"):
        if hasattr(dynamo_config, name):
            options[name] = False
    return options


def configure_dynamo(recompile_limit: int = 64) -> None:
    """Make ``torch.compile`` fit freezing, for the rest of the process: room for a graph per trainable set, and sound guards.

    * Each trainable set, activation and optimizer is one more graph of the same function, so
      the recompile limit (8 by default) is raised.
    * Dynamo skips the guards on tensors held in a module or dict whose "dict tag" has not
      changed, and ``requires_grad_()`` changes no tag. On torch 2.11 a graph compiled for one
      trainable set was therefore silently reused for another (pytorch/pytorch#139476; pull
      request #177158 makes the guards' fast path check ``requires_grad``): a frozen part's weight
      gradients were still computed, and a part that thawed got none, so an alternating
      schedule trained wrongly. Freezing flips exactly that flag, so both shortcuts are off.
      The cost is a full guard check per call, which graph replays never make.

    For code that compiles its own model; a freezelab run uses :func:`dynamo_settings` instead.
    """
    import torch._dynamo.config as dynamo_config

    for name, value in _dynamo_options(recompile_limit).items():
        setattr(dynamo_config, name, value)


@contextlib.contextmanager
def dynamo_settings(recompile_limit: int = 64) -> Iterator[None]:
    """:func:`configure_dynamo`'s settings while the block runs; the previous ones afterwards."""
    import torch._dynamo.config as dynamo_config

    with dynamo_config.patch(_dynamo_options(recompile_limit)):
        yield


def model_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The training loss of a batch: ``cross_entropy(model(x), y)``."""
    return nn.functional.cross_entropy(model(x), y)


@functools.cache
def compiled_loss() -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """``cross_entropy(model(x), y)``, compiled (its backward is compiled by AOTAutograd).

    Compiling happens at the first call, which must run under :func:`dynamo_settings`.
    """
    return torch.compile(model_loss, dynamic=False)


# -- the step's bookkeeping: batch gather, learning rate, loss log ------------------------------------
def gather_batch(x: Tensor, y: Tensor, perm: Tensor, pos: Tensor, offsets: Tensor, lrs: Tensor, lr_now: Tensor,
                 tail_start: int | None, draws: tuple[Tensor, ...] | None = None
                 ) -> tuple[Tensor, Tensor, tuple[Tensor, ...] | None]:
    """The step's batch, its augmentation draws and learning rate, read from device tensors (the graph path's inputs).

    ``pos`` is the step within the epoch, ``perm`` the epoch's order, ``lrs`` the epoch's
    learning rates; ``tail_start`` is where the smaller last batch starts, for that batch;
    ``draws`` the epoch's augmentation draws in batch order (``None`` without augmentation).
    Compiled, the index arithmetic and both gathers become two kernels instead of seven.
    """
    rows = offsets + pos * offsets.numel()

    def this_batch(t: Tensor) -> Tensor:  # the step's slice of an epoch-long tensor in batch order
        return t[tail_start:] if tail_start is not None else t.index_select(0, rows)

    idx = this_batch(perm)
    lr_now.copy_(lrs.index_select(0, pos).view(()))
    batch_draws = tuple(this_batch(d) for d in draws) if draws is not None else None
    return x.index_select(0, idx), y.index_select(0, idx), batch_draws


def record_loss(losses: Tensor, pos: Tensor, loss: Tensor) -> None:
    """Log the step's loss at ``pos`` and move on to the next step."""
    losses.index_copy_(0, pos, loss.detach().view(1))
    pos.add_(1)


def bookkeeping(compile_: bool) -> tuple[Callable, Callable]:
    """``(gather_batch, record_loss)``, compiled or not (the results are the same: no arithmetic)."""
    if not compile_:
        return gather_batch, record_loss
    return _compiled(gather_batch), _compiled(record_loss)


# -- the optimizer update -----------------------------------------------------------------------
def _adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, options: dict) -> None:
    with torch.no_grad():  # as in Optimizer.step: the update is no part of the autograd graph
        functional_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr=lr,
                        foreach=True, capturable=True, **options)


def _sgd_update(params, grads, buffers, lr, options: dict) -> None:
    with torch.no_grad():
        functional_sgd(params, grads, buffers, lr=lr, foreach=True, **options)


@functools.cache
def _compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=False)


_ADAM_OPTIONS = set(inspect.signature(functional_adam).parameters)


class _Update:
    """``optimizer.step()`` for the parameters that have a gradient, through a compiled function.

    Falls back to ``optimizer.step()`` itself while some parameter has no optimizer state yet
    (its first step creates the state; the graph stepper's warm-up step does exactly that).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str) -> None:
        self.optimizer, self.kind = optimizer, kind
        self.fn = _compiled(_adam_update if kind == "adam" else _sgd_update)

    def __call__(self) -> None:
        opt = self.optimizer
        calls = []
        for group in opt.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [opt.state.get(p) for p in params]
            if self.kind == "adam":
                if not all(states) or not group.get("capturable", False):
                    return opt.step()
                amsgrad = group["amsgrad"]
                options = {"amsgrad": amsgrad, "beta1": group["betas"][0], "beta2": group["betas"][1],
                           "weight_decay": group["weight_decay"], "eps": group["eps"], "maximize": group["maximize"]}
                if "decoupled_weight_decay" in _ADAM_OPTIONS:
                    options["decoupled_weight_decay"] = group.get("decoupled_weight_decay", False)
                calls.append((params, [p.grad for p in params], [s["exp_avg"] for s in states],
                              [s["exp_avg_sq"] for s in states], [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
                              [s["step"] for s in states], group["lr"], options))
            else:
                momentum = group["momentum"]
                if momentum != 0 and not all(s and s.get("momentum_buffer") is not None for s in states):
                    return opt.step()
                options = {"weight_decay": group["weight_decay"], "momentum": momentum, "dampening": group["dampening"],
                           "nesterov": group["nesterov"], "maximize": group["maximize"]}
                buffers = [s["momentum_buffer"] if momentum != 0 else None for s in states]
                calls.append((params, [p.grad for p in params], buffers, group["lr"], options))
        for args in calls:
            self.fn(*args)


def _update_kind(optimizer: torch.optim.Optimizer) -> str | None:
    """``"adam"`` for torch's Adam and AdamW (where AdamW is an Adam, as in recent torch), ``"sgd"`` for SGD."""
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW) and isinstance(optimizer, torch.optim.Adam):
        return "adam"
    if type(optimizer) is torch.optim.SGD:
        return "sgd"
    return None


def has_compiled_update(optimizer: torch.optim.Optimizer) -> bool:
    """Whether :func:`compiled_update` covers ``optimizer`` (asks only: builds and compiles nothing)."""
    return _update_kind(optimizer) is not None


def compiled_update(optimizer: torch.optim.Optimizer) -> Callable[[], None] | None:
    """A compiled stand-in for ``optimizer.step()``, or ``None`` for optimizers it does not cover.

    Covers torch's Adam and AdamW and SGD (with or without momentum), all without sparse
    gradients. Compiling happens at the first call, which must run under :func:`dynamo_settings`.
    """
    kind = _update_kind(optimizer)
    return _Update(optimizer, kind) if kind is not None else None
