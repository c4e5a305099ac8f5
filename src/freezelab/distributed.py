"""Freezing under DistributedDataParallel: one DDP wrapper per trainable set, and per-rank batch shards.

Why the wrapper must follow the trainable set. DDP's C++ ``Reducer`` is built once, over the
parameters that have ``requires_grad=True`` *at construction*, and expects a gradient for every
one of them in every backward pass. A freezing schedule breaks that contract both ways:

* a parameter frozen *after* wrapping never gets its gradient, so the reducer waits for it and
  the next iteration fails with "Expected to have finished reduction in the prior iteration";
  ``static_graph=True`` fails with "Your training graph has changed";
* a parameter frozen *at* wrapping and thawed later is not in the reducer at all: each rank
  steps it with its own local gradient and the ranks' weights drift apart, with no error.

``find_unused_parameters=True`` survives the first case but not the second, and costs on every
step: it walks the autograd graph after each forward to find the parameters that will get no
gradient, all-reduces a usage map, and still all-reduces the frozen parameters' (zeroed) bucket
slots, so freezing saves no communication.

:class:`FreezingDDP` instead builds a DDP wrapper over exactly the trainable set, and builds a
new one whenever the set changes (the Freezer reports it; the wrapper is keyed on the model's
actual ``requires_grad`` flags, so a trainable set restored from a checkpoint is honoured too).
Within one set the graph is static, so plain DDP with its bucketing and overlap applies.

What a rebuild costs, and why it is safe:

* The old wrapper is dropped first, after taking its Reducer's autograd hooks off the
  parameters' ``AccumulateGrad`` nodes with DDP's ``_remove_autograd_hooks()`` (torch >= 2.1,
  pytorch#96490, added for exactly this: a new DDP over a model an old one wrapped). The
  Reducer's destructor removes them too (``Reducer::~Reducer``, since pytorch#21591, torch 1.2;
  on torch 2.14 the old wrapper and its Reducer are freed at the switch), but only once nothing
  references the old wrapper. The explicit call matters when something does: after a backward
  that died midway (an out-of-memory error caught by the caller, whose traceback holds the old
  wrapper), the old Reducer still expects gradients and its surviving hooks would fail the next
  backward with "marked as ready twice" (tests/test_distributed.py shows both).
* Only the first wrapper broadcasts rank 0's parameters and buffers (DDP's ``init_sync``), as
  plain DDP does. Rebuilds pass ``init_sync=False``: the ranks already hold identical
  parameters (that is what DDP maintains), so the broadcast would copy nothing yet cost a whole
  model's worth of communication, and it would overwrite buffers that differ per rank on
  purpose: with ``forward_sync_buffers=False`` (torch >= 2.13) DDP still broadcasts buffers at
  init, so every switch would reset each rank's BatchNorm statistics to rank 0's.
* ``init_sync=False`` also skips DDP's parameter-shape check across ranks; in its place one tiny
  all-reduce of a fingerprint of the trainable set proves every rank switched to the same set.
  The rest of a rebuild is bucket assignment and allocation, and DDP's one-off bucket
  re-ordering after the new wrapper's first backward. ``benchmarks/ddp_freezing.py`` measures it.
* ``cache_size > 1`` keeps the wrappers of recently used sets alive instead (an inactive
  reducer's hooks return at once: it only acts after its own forward). It is as correct, but it
  saves only the construction (about a millisecond) at the price of one gradient-bucket copy per
  cached set, so the default is 1: a rebuild per switch. It can pay when the set changes nearly
  every step of a model whose step takes milliseconds.

Data: :class:`ShardedBatches` gives rank ``r`` of ``W`` its contiguous ``1/W`` slice of each
global batch of a :class:`~freezelab.data.IndexBatches` order, so the ranks' micro-batches of a
step are exactly the single-process batch. With a loss that is a mean over the batch, DDP's
gradient averaging then gives the single-process gradient up to float summation order.

Example (inside a process started by ``torchrun``)::

    dist.init_process_group("nccl")           # or "gloo" on CPUs
    model = build_model().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fz = Freezer(model, groups.depth(model, 2), schedules.Alternate(unit="batch", every=50), opt)
    engine = FreezingDDP(model, fz)
    shards = ShardedBatches.for_this_rank(IndexBatches(len(train), batch_size=256, seed=0))
    for epoch in range(epochs):
        for i, idx in enumerate(shards.epoch_batches(epoch)):
            engine.step(Clock.at(epoch * shards.steps_per_epoch + i, shards.steps_per_epoch, epochs))
            loss = F.cross_entropy(engine(train.x[idx]), train.y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad()
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .data.batching import IndexBatches
from .freezer import Freezer, FreezerError
from .schedules import Clock

__all__ = ["DistributedFreezingError", "FreezingDDP", "ShardedBatches", "ShardingError", "launch", "rank_slice"]

# DDP arguments that FreezingDDP decides itself, so a caller cannot pass them.
_OWN_OPTIONS = ("module", "init_sync", "device_ids", "process_group")


class DistributedFreezingError(FreezerError):
    """Freezing under DDP cannot go on as asked; the message names the problem and the fix."""


class ShardingError(ValueError):
    """A global batch that cannot be split evenly over the ranks; the message names the fix."""


class FreezingDDP:
    """A model, its Freezer and the DDP wrapper over the model's current trainable set.

    Call :meth:`step` with the clock before each optimizer step's first forward pass (where you
    would call ``freezer.step``); it applies the schedule and, if the trainable set changed,
    switches to a DDP wrapper over the new set. Call the object (or :meth:`forward`) for the
    forward pass and :meth:`no_sync` around the micro-batches of a gradient-accumulation window
    that should not all-reduce. The optimizer stays the caller's, over the unwrapped model.

    ``device_ids`` defaults to the model's CUDA device (``[index]``) and to ``None`` on CPU, as
    DDP wants. ``cache_size`` is how many wrappers (one per trainable set) are kept: 1 rebuilds on
    every change. ``check_sets`` all-reduces a fingerprint of the new set at every switch so that
    ranks whose schedules disagree fail loudly instead of training different parameters.
    Other keyword arguments go to ``DistributedDataParallel`` (``bucket_cap_mb``,
    ``gradient_as_bucket_view``, ``broadcast_buffers``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        freezer: Freezer,
        *,
        device_ids: list[int] | None = None,
        process_group: dist.ProcessGroup | None = None,
        cache_size: int = 1,
        check_sets: bool = True,
        **ddp_options: Any,
    ) -> None:
        if freezer.model is not model:
            raise DistributedFreezingError(
                "the freezer manages another model than the one given; build the Freezer over the unwrapped model "
                "you pass to FreezingDDP (not over a DDP wrapper)"
            )
        if isinstance(model, DistributedDataParallel):
            raise DistributedFreezingError("the model is already wrapped in DistributedDataParallel; pass the plain model")
        if not dist.is_available() or not dist.is_initialized():
            raise DistributedFreezingError(
                "torch.distributed is not initialized; call torch.distributed.init_process_group(...) first "
                "(torchrun sets the environment it reads)"
            )
        own = sorted(set(ddp_options) & set(_OWN_OPTIONS))
        if own:
            raise DistributedFreezingError(
                f"FreezingDDP sets {own} itself; pass device_ids/process_group as its own arguments"
            )
        if not isinstance(cache_size, int) or cache_size < 1:
            raise DistributedFreezingError(
                f"cache_size must be a positive integer (1 = rebuild on every switch), got {cache_size!r}"
            )
        device = next(model.parameters()).device
        if device_ids is None and device.type == "cuda":
            device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
        self.model, self.freezer = model, freezer
        self.device_ids, self.process_group = device_ids, process_group
        self.cache_size, self.check_sets = cache_size, check_sets
        self.ddp_options = ddp_options
        self._device = device
        self._wrappers: OrderedDict[tuple[bool, ...], DistributedDataParallel] = OrderedDict()
        self._current: DistributedDataParallel | None = None
        self.builds = 0  # wrappers constructed (the first one included)
        self.build_seconds = 0.0  # wall time spent constructing them, the set check included

    # -- the per-step entry point ----------------------------------------------------
    def step(self, clock: Clock) -> bool:
        """Apply the schedule at ``clock`` and use the wrapper of the resulting trainable set.

        Returns ``True`` when the trainable set changed (as :meth:`Freezer.step` does). Every rank
        must call it at the same steps: switching is collective.
        """
        changed = self.freezer.step(clock)
        self.follow()
        return changed

    def follow(self) -> None:
        """Use the wrapper of the model's current trainable set, for a loop that calls ``freezer.step`` itself.

        What :meth:`step` does after the schedule: freezelab's own loop steps the Freezer and then
        calls this before the forward pass (:class:`freezelab.run.ddp.RunDDP`). Collective when the
        set changed, like :meth:`step`.
        """
        self._use(tuple(p.requires_grad for p in self.model.parameters()))

    @property
    def ddp(self) -> DistributedDataParallel:
        """The DDP wrapper over the current trainable set."""
        if self._current is None:
            raise DistributedFreezingError("no DDP wrapper yet; call step(clock) before the first forward pass")
        return self._current

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The forward pass through the current wrapper (so its backward all-reduces)."""
        return self.ddp(*args, **kwargs)

    __call__ = forward

    def no_sync(self) -> contextlib.AbstractContextManager:
        """DDP's ``no_sync`` on the current wrapper: accumulate gradients locally, all-reduce later.

        Use it for all micro-batches of an optimizer step but the last. The clock counts optimizer
        steps, so the trainable set (and the wrapper) never changes inside such a window.
        """
        return self.ddp.no_sync()

    # -- wrappers ------------------------------------------------------------------------
    def _use(self, mask: tuple[bool, ...]) -> None:
        wrapper = self._wrappers.get(mask)
        if wrapper is not None:
            self._wrappers.move_to_end(mask)
            self._current = wrapper
            return
        start = time.perf_counter()
        if self.check_sets:
            self._check_same_set_everywhere(mask)
        self._current = None
        while len(self._wrappers) >= self.cache_size:
            _, evicted = self._wrappers.popitem(last=False)
            _remove_hooks(evicted)
        wrapper = DistributedDataParallel(
            self.model,
            device_ids=self.device_ids,
            process_group=self.process_group,
            init_sync=self.builds == 0,
            **self.ddp_options,
        )
        self._wrappers[mask] = self._current = wrapper
        self.builds += 1
        self.build_seconds += time.perf_counter() - start

    def _check_same_set_everywhere(self, mask: tuple[bool, ...]) -> None:
        """Fail on every rank if any two ranks are about to train different parameters.

        DDP compares only parameter shapes, and only when it broadcasts (the first wrapper), so two
        ranks training different halves of identical shapes would go unnoticed.
        """
        fingerprint = zlib.crc32(bytes(mask))
        seen = torch.tensor([fingerprint, -fingerprint], dtype=torch.int64, device=self._device)
        dist.all_reduce(seen, op=dist.ReduceOp.MAX, group=self.process_group)
        if int(seen[0]) != fingerprint or -int(seen[1]) != fingerprint:
            trainable = sorted(self.freezer.trainable or ())
            raise DistributedFreezingError(
                f"rank {dist.get_rank(self.process_group)} trains {trainable}, but another rank trains a different set; "
                "every rank must build the same groups and schedule (random schedules need the same seed everywhere)"
            )


def _remove_hooks(wrapper: DistributedDataParallel) -> None:
    """Take the wrapper's Reducer hooks off the parameters now, not when garbage collection frees it.

    The Reducer's destructor removes them too (torch >= 1.2), but anything that keeps the old
    wrapper alive (a traceback, a user's reference) would keep its hooks on the parameters;
    ``_remove_autograd_hooks`` (torch >= 2.1) is torch's own API for re-wrapping a model; on an
    older torch the destructor is all there is.
    """
    remove = getattr(wrapper, "_remove_autograd_hooks", None)
    if remove is not None:
        remove()


# ---------------------------------------------------------------------------------
# Data: each rank's share of the global batch
# ---------------------------------------------------------------------------------
def rank_slice(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s contiguous ``1/world_size`` share of one global batch (a view).

    >>> rank_slice(torch.arange(8), 1, 4).tolist()
    [2, 3]
    """
    if len(batch) % world_size:
        raise ShardingError(
            f"a batch of {len(batch)} cannot be split evenly over {world_size} ranks; "
            f"use a global batch size that is a multiple of {world_size}"
        )
    size = len(batch) // world_size
    return batch[rank * size : (rank + 1) * size]


@dataclass(frozen=True)
class ShardedBatches:
    """One rank's shares of a single-process batch order: same global batches, same steps.

    ``batches.batch_size`` is the *global* batch; each rank gets ``batch_size // world_size``
    indices of every batch, so the union over ranks of step ``s``'s shares is exactly the
    ``s``-th batch of one process, in order.

    >>> ib = IndexBatches(n=10, batch_size=4, seed=0, drop_last=True)
    >>> [b.tolist() for b in ib.epoch_batches(0)]
    [[6, 3, 1, 5], [8, 7, 0, 2]]
    >>> [b.tolist() for b in ShardedBatches(ib, rank=1, world_size=2).epoch_batches(0)]
    [[1, 5], [0, 2]]
    """

    batches: IndexBatches
    rank: int
    world_size: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ShardingError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        b = self.batches.batch_size
        if b % self.world_size:
            lower, upper = b - b % self.world_size, b - b % self.world_size + self.world_size
            raise ShardingError(
                f"global batch size {b} is not divisible by the world size {self.world_size}; "
                f"use a multiple of {self.world_size} (e.g. {lower or upper} or {upper})"
            )
        last = self.batches.n % b
        if last and not self.batches.drop_last and last % self.world_size:
            raise ShardingError(
                f"the last batch of each epoch holds {last} examples ({self.batches.n} % {b}), which cannot be split "
                f"evenly over {self.world_size} ranks; pass drop_last=True to IndexBatches, or choose a batch size "
                f"that leaves a remainder divisible by {self.world_size}"
            )

    @classmethod
    def for_this_rank(cls, batches: IndexBatches, group: dist.ProcessGroup | None = None) -> ShardedBatches:
        """The shares of the calling process (rank and world size from the process group)."""
        return cls(batches, dist.get_rank(group), dist.get_world_size(group))

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch

    @property
    def local_batch_size(self) -> int:
        return self.batches.batch_size // self.world_size

    def epoch_batches(self, e: int) -> Iterator[Tensor]:
        """This rank's indices for each step of epoch ``e``."""
        return (rank_slice(batch, self.rank, self.world_size) for batch in self.batches.epoch_batches(e))


# ---------------------------------------------------------------------------------
# Local launcher (tests, benchmarks, trying it out on one machine)
# ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_rank(
    rank: int, fn: Callable[..., None], world_size: int, port: int, backend: str, timeout_s: float, args: tuple
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size)
    )
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=dt.timedelta(seconds=timeout_s))
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def launch(
    fn: Callable[..., None],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    start_method: str = "fork",
    timeout_s: float = 120.0,
) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` local processes joined in one process group.

    What ``torchrun --nproc_per_node`` does on one machine, for CPU tests and benchmarks: a free
    port, the environment torchrun would set, ``init_process_group`` and its teardown. ``fork``
    starts in milliseconds because the children inherit the imported torch (``spawn`` re-imports
    it, several seconds per process); use ``spawn`` once CUDA is initialised in the parent.
    A rank that raises fails the whole launch; a launch that outlives ``timeout_s`` is killed.
    """
    import torch.multiprocessing as mp

    if start_method == "fork":
        import torch._dynamo  # noqa: F401 - DDP's constructor imports it (seconds); forked children inherit it

    port = _free_port()
    context = mp.start_processes(
        _run_rank,
        args=(fn, world_size, port, backend, timeout_s, args),
        nprocs=world_size,
        join=False,
        start_method=start_method,
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=0.05):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {world_size} processes did not finish within {timeout_s:.0f} s")
