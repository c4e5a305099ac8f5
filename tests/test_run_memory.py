"""Peak memory per phase (run/memory.py) with a fake allocator counter: credited to the right phase, never lost."""

from __future__ import annotations

import pytest

from freezelab.run.memory import PeakMemory, set_label


class Counter:
    """A stand-in for torch's peak counter: ``use(n)`` allocates, ``peak`` is the max since the last reset."""

    def __init__(self) -> None:
        self.now = self.peak = 0

    def use(self, n: int) -> None:
        self.now = n
        self.peak = max(self.peak, n)

    def reset(self) -> None:
        self.peak = self.now


def tracker(counter: Counter) -> PeakMemory:
    return PeakMemory(read=lambda: counter.peak, reset=counter.reset)


def test_each_trainable_set_gets_its_own_peak_and_the_overall_is_the_largest() -> None:
    c = Counter()
    mem = tracker(c)
    mem.start()
    for trainable, used in ((("norm", "head"), 300), (("lora", "head"), 500), (("norm", "head"), 200)):
        mem.track(trainable)
        c.use(used)
        mem.track(trainable)  # the same set again: no new phase
        c.use(0)
    with mem.phase():
        c.use(900)
        c.use(0)  # the evaluation frees what it used
    c.use(100)  # back in the set that ran before the evaluation
    assert mem.by_phase() == {"head+norm": 300, "head+lora": 500, "evaluation": 900}
    assert mem.label == "head+norm" and mem.overall == 900
    mem.start()
    assert mem.by_phase() == {} and mem.overall == 100  # what is still allocated counts from the start


def test_a_reset_keeps_what_is_still_allocated() -> None:
    """torch's reset sets the peak to what is allocated now, so memory held across a switch counts in both sets."""
    c = Counter()
    mem = tracker(c)
    mem.track({"a"})
    c.use(400)
    mem.track({"b"})
    c.use(100)
    assert mem.by_phase() == {"a": 400, "b": 400}


def test_trackers_sharing_a_counter_are_all_credited_before_any_resets() -> None:
    """Lockstep: two runs, one process counter; a switch in run 1 must not lose run 2's peak."""
    c = Counter()
    one, two = (PeakMemory(read=lambda: c.peak, reset=c.reset, counter="one gpu") for _ in range(2))
    one.track({"a"}), two.track({"x"})
    c.use(700)
    c.use(0)
    one.track({"b"})  # resets the counter: run two's 700 is credited first
    c.use(50)
    assert two.by_phase() == {"x": 700} and one.by_phase() == {"a": 700, "b": 50}


def test_on_a_cpu_nothing_is_measured() -> None:
    mem = PeakMemory("cpu")
    mem.start()
    mem.track({"lora"})
    with mem.phase():
        pass
    assert (mem.overall, mem.by_phase()) == (None, None)


@pytest.mark.gpu
def test_cuda_peaks_follow_what_each_phase_allocates() -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    held = torch.cuda.memory_allocated()  # what earlier tests of this process still hold counts in every peak
    mem = PeakMemory("cuda")
    mem.start()
    mem.track({"small"})
    small = torch.empty(2**20, device="cuda")
    del small
    mem.track({"big"})
    big = torch.empty(2**24, device="cuda")
    del big
    peaks = mem.by_phase()
    assert peaks["big"] - held >= 4 * 2**24 > peaks["small"] - held >= 4 * 2**20
    assert mem.overall == max(peaks.values())


def test_set_labels_match_the_steps_table() -> None:
    assert set_label(frozenset({"norm", "lora", "head"})) == "head+lora+norm"
