"""Peak CUDA memory per phase of a run: each trainable set, and the end-of-epoch evaluation.

A schedule that freezes one branch half the time is cheaper only in the phases where it is
frozen, and a run's peak is its costliest phase's. So the peak is read per *phase*: when the
phase changes, the peak since the last change is credited to the phase that just ended and
torch's peak counter (``torch.cuda.max_memory_allocated``) is reset. A phase that comes back
keeps its largest peak. The run's overall peak is the largest of all phases, so resetting the
counter loses nothing.

On a CPU nothing is measured and every answer is ``None``: there is no allocator peak to read,
and a made-up number would be worse than none.

Caveats, said where the numbers are read (the summary's ``trainable_sets``):

* The counter is the process's. Runs stepped in lockstep share it, so each run's phases are
  credited with what the whole process held (as its ``peak_mem_bytes`` always was); every
  tracker on a device is credited before any of them resets the counter.
* A CUDA-graph replay allocates nothing: on the graph path a trainable set's peak is the one
  of its capture (two eager warm-up steps and the recording), which is when its buffers are made.

The stepper tells the tracker the trainable set before each step (:meth:`PeakMemory.track`);
the loop wraps the evaluation in :meth:`PeakMemory.phase`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["PeakMemory", "set_label"]

EVALUATION = "evaluation"

#: Live trackers per counter: one reset must first credit every tracker that reads that counter.
_LIVE: dict[str, weakref.WeakSet[PeakMemory]] = {}


def set_label(trainable: Iterable[str]) -> str:
    """The name of a trainable set in the run's records (as in ``steps.parquet``): sorted, joined by ``+``.

    >>> set_label({"norm", "head"})
    'head+norm'
    """
    return "+".join(sorted(trainable))


class PeakMemory:
    """Peak allocated bytes per phase label, from torch's CUDA peak counter.

    ``read``/``reset`` replace torch's counter (tests use a fake one); without them the tracker
    measures only on a CUDA ``device``. Trackers with the same ``counter`` (by default: the
    device) read one counter, so each credits all of them before resetting it.

    >>> mem = PeakMemory("cpu")
    >>> mem.track({"lora", "head"})
    >>> mem.overall, mem.by_phase()
    (None, None)
    """

    def __init__(
        self,
        device: torch.device | str | None = None,
        *,
        read: Callable[[], int] | None = None,
        reset: Callable[[], None] | None = None,
        counter: str | None = None,
    ) -> None:
        dev = torch.device(device) if device is not None else None
        self.enabled = read is not None or (dev is not None and dev.type == "cuda")
        self._read = read or (lambda: torch.cuda.max_memory_allocated(dev))
        self._reset = reset or (lambda: torch.cuda.reset_peak_memory_stats(dev))
        self._key = counter or (f"custom:{id(self._read)}" if read is not None else str(dev))
        self.label: str | None = None  # the phase being measured; None: not yet known (only the overall peak)
        self._trainable: frozenset[str] | None = None
        self._peaks: dict[str, int] = {}
        self._overall = 0
        if self.enabled:
            _LIVE.setdefault(self._key, weakref.WeakSet()).add(self)

    def start(self) -> None:
        """Forget everything and reset the counter: the run's measurements start here."""
        if self.enabled:
            self._peaks, self._overall, self.label, self._trainable = {}, 0, None, None
            self._reset()

    def track(self, trainable: Iterable[str]) -> None:
        """Call before each step with the step's trainable set; a new set starts a new phase. Cheap when unchanged."""
        if not self.enabled:
            return
        trainable = frozenset(trainable)
        if trainable != self._trainable:
            self._trainable = trainable
            self.enter(set_label(trainable))

    def enter(self, label: str | None) -> None:
        """End the current phase (credit its peak) and start measuring ``label``."""
        if not self.enabled:
            return
        for tracker in list(_LIVE.get(self._key, ())):
            tracker._credit()
        self._reset()
        self.label = label

    @contextmanager
    def phase(self, label: str = EVALUATION) -> Iterator[None]:
        """Measure the block as its own phase, then go back to the phase that was running."""
        previous, trainable = self.label, self._trainable
        self.enter(label)
        try:
            yield
        finally:
            self.enter(previous)
            self._trainable = trainable

    def _credit(self) -> None:
        peak = int(self._read())
        self._overall = max(self._overall, peak)
        if self.label is not None:
            self._peaks[self.label] = max(self._peaks.get(self.label, 0), peak)

    @property
    def overall(self) -> int | None:
        """The run's peak so far, over every phase; None when nothing is measured."""
        if not self.enabled:
            return None
        self._credit()
        return self._overall

    def by_phase(self) -> dict[str, int] | None:
        """Peak bytes per phase label so far (trainable sets and ``evaluation``); None when nothing is measured."""
        if not self.enabled:
            return None
        self._credit()
        return dict(self._peaks)
