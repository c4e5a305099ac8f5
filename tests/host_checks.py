"""What the host-trainer tests share: the run, the schedule, and the checks made on what a probe recorded.

Both hosts train the same tiny classifier (``net``: 6 -> 8 -> 8 -> 3) on 24 samples in batches
of 4, read in order. The schedule alternates the two halves every 4 optimizer steps while the
head trains throughout, so the head's optimizer state spans every switch (which is where
``recreate`` differs from the other policies).
"""

import math
from collections.abc import Callable

import torch
from torch import nn

from freezelab import Freezer, groups
from freezelab.schedules import Alternate, Clock

SCHEDULE = Alternate(unit="batch", every=4)
SAMPLES, BATCH, EPOCHS = 24, 4, 3
LR = 1e-2


def net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def samples() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(SAMPLES, 6, generator=g), torch.randint(0, 3, (SAMPLES,), generator=g)


def halves(model: nn.Module):
    """"first" and "second" halves alternate; the head trains throughout."""
    return groups.depth(model, 2, head=True)


def steps_per_epoch(accumulate: int) -> int:
    return math.ceil(SAMPLES / BATCH / accumulate)


def expected(step: int, accumulate: int) -> dict[str, bool]:
    """Which groups should train at optimizer ``step``."""
    on = SCHEDULE.trainable(Clock.at(step, steps_per_epoch(accumulate), EPOCHS), ("first", "second"))
    return {"first": "first" in on, "second": "second" in on, "head": True}


def switches(accumulate: int) -> int:
    """How many times the trainable set changes in a whole run."""
    return len(range(0, steps_per_epoch(accumulate) * EPOCHS, SCHEDULE.every)) - 1


def observe(model: nn.Module, step: int, gs=None) -> dict:
    """What a probe records before a micro-batch: the step, which groups train, each group's weights."""
    named = dict(model.named_parameters())
    gs = gs if gs is not None else halves(model)
    return {
        "step": step,
        "trains": {g.name: all(named[p].requires_grad for p in g.param_names) for g in gs},
        "weights": {g.name: [named[p].detach().clone() for p in g.param_names] for g in gs},
    }


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_schedule_followed(rows: list[dict], accumulate: int) -> None:
    """Every optimizer step saw exactly ``accumulate`` micro-batches, all with the schedule's set."""
    total = steps_per_epoch(accumulate) * EPOCHS
    assert [r["step"] for r in rows] == [s for s in range(total) for _ in range(accumulate)]
    for row in rows:
        assert row["trains"] == expected(row["step"], accumulate), row["step"]


def assert_frozen_weights_unchanged(rows: list[dict]) -> None:
    """A group frozen at a step has bit-identical weights before and after it (and training moved something)."""
    starts: dict[int, dict] = {}
    for row in rows:
        starts.setdefault(row["step"], row)
    moved = 0
    for step in sorted(starts)[:-1]:
        before, after = starts[step], starts[step + 1]
        for group, trains in before["trains"].items():
            same = all(torch.equal(a, b) for a, b in zip(before["weights"][group], after["weights"][group]))
            assert trains or same, f"{group} moved at step {step} while frozen"
            moved += not same
    assert moved > 0


def assert_same_weights(got: nn.Module, want: dict[str, torch.Tensor], what: str) -> None:
    for n, p in got.named_parameters():
        assert torch.equal(p, want[n]), f"{n} differs {what}"


def assert_close_weights(got: nn.Module, want: nn.Module) -> None:
    """Equal up to float rounding (a host's loss scaling and fused kernels round differently)."""
    for (n, a), b in zip(got.named_parameters(), want.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), n


def plain_loop(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    accumulate: int,
    before_step: Callable[[], object] = lambda: None,
    after_step: Callable[[], object] = lambda: None,
) -> None:
    """The obvious torch loop with gradient accumulation and a Freezer stepped once per optimizer step."""
    x, y = samples()
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, SAMPLES, BATCH)]
    fz = Freezer(model, halves(model), SCHEDULE, opt)
    step = 0
    for _ in range(EPOCHS):
        for i in range(0, len(batches), accumulate):
            fz.step(Clock.at(step, steps_per_epoch(accumulate), EPOCHS))
            window = batches[i:i + accumulate]
            for bx, by in window:
                (loss_of(bx, by) / len(window)).backward()
            before_step()
            opt.step()
            after_step()
            opt.zero_grad()
            step += 1


# -- real model families (tests/model_families.py) inside the hosts ------------------------------
#: The families a host test trains: PEFT LoRA (the base frozen by peft, the host's optimizer built
#: from requires_grad parameters only), a tied-weights language model, a user-frozen first layer.
HOST_FAMILIES = ("peft_lora", "tied_lm", "prefrozen")
FAMILY_SCHEDULE = Alternate(unit="batch", every=2)
FAMILY_BATCHES, FAMILY_ACCUMULATE = 8, 2  # one epoch of 4 optimizer steps


def family_groups(fam) -> Callable[[nn.Module], object]:
    """Halves plus an always-trainable head, over whatever module the host wraps around the family's model."""
    return lambda module: groups.depth(module, 2, head=True, example_input=fam.example_input)


def family_samples(fam) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(fam.make_batch(seed) for seed in range(FAMILY_BATCHES)))
    return torch.cat(xs), torch.cat(ys)


def assert_family_run(rows: list[dict], frozen_before: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Schedule per optimizer step, frozen phases bit-identical, and what the user froze never moved nor thawed."""
    steps = FAMILY_BATCHES // FAMILY_ACCUMULATE
    assert [r["step"] for r in rows] == [s for s in range(steps) for _ in range(FAMILY_ACCUMULATE)]
    for row in rows:
        on = FAMILY_SCHEDULE.trainable(Clock.at(row["step"], steps, 1), ("first", "second"))
        assert row["trains"] == {"first": "first" in on, "second": "second" in on, "head": True}, row["step"]
    assert_frozen_weights_unchanged(rows)
    named = dict(model.named_parameters())
    for name, before in frozen_before.items():
        assert not named[name].requires_grad and torch.equal(named[name], before), name
