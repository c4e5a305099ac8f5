"""A run under ``torchrun``: the process group from torchrun's environment, and the run's DDP side.

``torchrun --nproc_per_node N -m freezelab train ...`` starts N copies of the command. Each
joins the process group named by torchrun's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) in :func:`process_group`, and every run it
builds then trains over all ranks:

* :func:`rank_device` puts rank ``r`` on ``cuda:LOCAL_RANK`` (or the CPU);
* :class:`RunDDP` (built by :func:`freezelab.run.build.build_run` when a group of more than one
  process is up) slices each *global* batch (``batch_size``) into the rank's contiguous share,
  as :class:`~freezelab.distributed.ShardedBatches` does, and sends the forward pass through
  :class:`~freezelab.distributed.FreezingDDP`, whose wrapper follows the trainable set. The
  last, smaller batch of an epoch need not split evenly (a run keeps every example, as one
  process does): it is split as evenly as it goes, and each rank's gradient is scaled by its
  share (``len(share) * world_size / len(batch)``) so that DDP's average is the gradient of the
  whole batch's mean loss, as one process computes it;
* the epoch's losses are averaged over the ranks (the global batch's mean loss, on every rank,
  so a NaN stops every rank at once), and only rank 0 (:func:`is_lead`) evaluates and writes.

The loop (:mod:`freezelab.run.loop`) and the eager stepper ask this module; nothing else of a
run changes under DDP. The plan records the world size and that the graph path is off.

``FREEZELAB_DDP_CHECK=1`` makes every rank compare a fingerprint of its weights with the others'
before every step and at the end of every epoch, and stop with an error naming the step where
they differ: the CLI tests run with it, and it is a cheap check (one tiny all-reduce per step) of
a setup one suspects.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..config import ConfigError
from ..data import IndexBatches
from ..distributed import DistributedFreezingError, FreezingDDP, ShardingError
from ..freezer import Freezer

__all__ = ["Torchrun", "torchrun_env", "process_group", "active", "world_size", "rank", "is_lead", "rank_device",
           "RunDDP", "CHECK_ENV"]

#: Set to 1 to check, before every step, that all ranks hold bit-identical weights.
CHECK_ENV = "FREEZELAB_DDP_CHECK"
_TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class Torchrun:
    """Where this process sits in the job torchrun started."""

    rank: int
    local_rank: int
    world_size: int


def torchrun_env(environ: dict[str, str] | None = None) -> Torchrun | None:
    """This process's place in a torchrun job, or ``None`` outside one (no ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``).

    >>> torchrun_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    Torchrun(rank=1, local_rank=1, world_size=2)
    """
    env = os.environ if environ is None else environ
    if not all(k in env for k in _TORCHRUN_VARS):
        return None
    try:
        rank_, local, world = (int(env[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    except ValueError:
        raise ConfigError(
            f"torchrun's environment is not integers: {', '.join(f'{k}={env[k]!r}' for k in _TORCHRUN_VARS)}; "
            "start the command with torchrun, or unset those variables"
        ) from None
    return Torchrun(rank_, local, world)


@contextlib.contextmanager
def process_group(timeout_s: float = 1800.0) -> Iterator[Torchrun | None]:
    """Join torchrun's process group for the block, and leave it afterwards; a no-op outside torchrun.

    The backend is gloo for CPU tensors and, where CUDA is available, NCCL for CUDA tensors (one
    group serves both, so a CPU run on a GPU machine works too); rank ``r`` is bound to
    ``cuda:LOCAL_RANK`` first, as NCCL needs. A group the caller initialised already (its own
    launcher, :func:`freezelab.distributed.launch`) is used as it is and left up. A world of
    one process trains without DDP, exactly like a plain run.
    """
    env = torchrun_env()
    if dist.is_available() and dist.is_initialized():
        yield env
        return
    if env is None or env.world_size == 1:
        yield env
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=dt.timedelta(seconds=timeout_s))
    try:
        yield env
    finally:
        dist.destroy_process_group()


def active() -> bool:
    """A process group of more than one process is up: runs built now train under DDP."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_lead() -> bool:
    """This process writes logs, checkpoints, summaries and reports: rank 0, or any process outside DDP."""
    return rank() == 0


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` under DDP; the CPU stays the CPU.

    A config that names one GPU index cannot hold for every rank, so it is refused.
    """
    if not active() or device.type != "cuda":
        return device
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank())) % torch.cuda.device_count()
    if device.index is not None and device.index != local:
        raise ConfigError(
            f"device {str(device)!r} under DDP: rank {dist.get_rank()} trains on cuda:{local} (its LOCAL_RANK); "
            "use device: auto or cuda"
        )
    return torch.device("cuda", local)


class RunDDP:
    """A built run's DDP side: its share of each global batch, and the forward pass through FreezingDDP.

    The eager stepper calls :meth:`share` on each global batch's positions and this object instead
    of the model for the forward pass; the Freezer has already been stepped, so
    :meth:`FreezingDDP.follow` switches wrappers when the trainable set changed. The model, its
    optimizer and the Freezer stay the plain ones (checkpoints hold no ``module.`` prefix).
    """

    def __init__(self, model: nn.Module, freezer: Freezer, batches: IndexBatches) -> None:
        world_rank, world = dist.get_rank(), dist.get_world_size()
        self.rank, self.world_size = world_rank, world
        b, last = batches.batch_size, 0 if batches.drop_last else batches.n % batches.batch_size
        if b % world:
            raise ShardingError(
                f"batch_size {b} (the global batch) does not split over {world} processes; "
                f"use a multiple of {world}, e.g. {b - b % world or world} or {b - b % world + world}"
            )
        if 0 < last < world:
            raise ShardingError(
                f"the last batch of each epoch holds {last} examples ({batches.n} % {b}), fewer than the {world} "
                f"processes; choose a batch_size that leaves none or at least {world}"
            )
        # Each step's weight of this rank's mean loss in the global batch's mean, times world_size (1 but for
        # an uneven last batch): what the epoch's mean loss over ranks multiplies by.
        self.weights = torch.ones(batches.steps_per_epoch, device=next(model.parameters()).device)
        if last:
            self.weights[-1] = (last // world + (world_rank < last % world)) * world / last
        self.model = model
        self.engine = FreezingDDP(model, freezer)
        self.check = os.environ.get(CHECK_ENV, "") not in ("", "0")
        self.steps = 0
        self._scale = 1.0

    def share(self, batch: slice, n: int) -> slice:
        """This rank's contiguous part of the global batch at positions ``batch`` of an epoch of ``n`` examples.

        ``1/world_size`` of a full batch; a smaller last batch is split as ``torch.tensor_split``
        splits it (the first ranks take one more). Positions, not indices, so that whatever is laid
        out per position of the epoch (its permutation, its augmentation draws) is sliced alike.

        Two ranks, the last batch ``slice(32, 64)`` of an epoch of 57 examples: rank 0 gets positions
        32..44, rank 1 45..56.
        """
        start, stop = batch.start, min(batch.stop, n)
        size, extra = divmod(stop - start, self.world_size)
        first = start + self.rank * size + min(self.rank, extra)
        mine = size + (self.rank < extra)
        self._scale = mine * self.world_size / (stop - start)
        return slice(first, first + mine)

    def __call__(self, x: Tensor) -> Tensor:
        """The forward pass of the part :meth:`share` returned last, through the DDP wrapper of the trainable set."""
        if self.check:
            self.check_in_sync(f"before step {self.steps}")
        self.steps += 1
        self.engine.follow()
        out = self.engine(x)
        if self._scale != 1.0 and out.requires_grad:
            # An uneven share: weight its gradient so DDP's average is the whole batch's mean-loss gradient.
            out.register_hook(lambda grad, scale=self._scale: grad * scale)
        return out

    def mean(self, losses: Tensor) -> Tensor:
        """The global batch's mean loss of each step of an epoch, from this rank's mean losses (on every rank)."""
        out = losses.detach() * self.weights[: len(losses)]
        dist.all_reduce(out)
        return out / self.world_size

    def check_in_sync(self, when: str) -> None:
        """Fail on every rank unless all ranks hold bit-identical parameters (checked by a CRC of their bytes)."""
        if not self.check:
            return
        crc = 0
        for p in self.model.parameters():
            crc = zlib.crc32(p.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes(), crc)
        device = next(self.model.parameters()).device
        seen = torch.tensor([crc, -crc], dtype=torch.int64, device=device)
        dist.all_reduce(seen, op=dist.ReduceOp.MAX)
        if int(seen[0]) != crc or -int(seen[1]) != crc:
            raise DistributedFreezingError(
                f"the ranks hold different weights {when} (rank {self.rank}); a group trained outside the DDP "
                "wrapper, or the ranks built different models: check the seed and the schedule"
            )
