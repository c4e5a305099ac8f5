"""freezelab inside the real ``transformers.Trainer``: per-optimizer-step schedule, exact freezing, exact resume.

Tiny CPU runs: a plain ``nn.Module`` that returns its loss, 24 samples in batches of 4 read in
order, the Trainer's own AdamW and linear LR decay. The schedule alternates the two halves
every 4 optimizer steps (a head trains throughout). Checkpoints are written every 2 optimizer
steps; resuming at step 10 lands mid-epoch inside a phase where "second" is frozen, at step 8
mid-epoch exactly on a switch (where ``recreate`` must reset state, and only there).
"""

import math

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from freezelab import Freezer, groups  # noqa: E402
from freezelab.freezer import POLICIES  # noqa: E402
from freezelab.integrations import IntegrationError  # noqa: E402
from freezelab.integrations.transformers import FreezelabCallback  # noqa: E402
from freezelab.schedules import Alternate, Clock  # noqa: E402

SCHEDULE = Alternate(unit="batch", every=4)
SAMPLES, BATCH, EPOCHS = 24, 4, 3
LR = 1e-2

transformers.logging.set_verbosity_error()


class TinyClassifier(nn.Module):
    """What the Trainer needs from a model: keyword inputs in, a loss in the output."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Samples(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(7)
        self.x, self.y = torch.randn(SAMPLES, 6, generator=g), torch.randint(0, 3, (SAMPLES,), generator=g)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier()


def halves(m: nn.Module):
    """"first" and "second" halves alternate; the head trains throughout (so it spans every switch)."""
    return groups.depth(m, 2, head=True)


class Probe(transformers.TrainerCallback):
    """Records, before every micro-batch (after freezelab's callback), what the step will see."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.step_begins: list[int] = []

    def on_step_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kw):
        self.step_begins.append(state.global_step)
        self._record(state, model, optimizer, lr_scheduler)

    def on_substep_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kw):
        self._record(state, model, optimizer, lr_scheduler)  # before the next micro-batch of the window

    def _record(self, state, m, optimizer, lr_scheduler):
        head = m.net[4].weight
        self.rows.append({
            "step": state.global_step,
            "trains": {g.name: all(p.requires_grad for p in g_params(m, g)) for g in halves(m)},
            "weights": {n: p.detach().clone() for n, p in m.named_parameters()},
            "lr": optimizer.param_groups[0]["lr"],
            "optimizer": optimizer.optimizer,
            "scheduler_optimizer": lr_scheduler.optimizer,
            "head_adam_steps": float(optimizer.state[head]["step"]) if head in optimizer.state else 0.0,
        })


def g_params(m, group):
    named = dict(m.named_parameters())
    return [named[p] for p in group.param_names]


def trainer(m, out, callbacks, *, accumulate=1, save_steps=None):
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=BATCH, gradient_accumulation_steps=accumulate,
        num_train_epochs=EPOCHS, learning_rate=LR, weight_decay=0.1, report_to=[], use_cpu=True,
        train_sampling_strategy="sequential", dataloader_num_workers=0, logging_strategy="no", disable_tqdm=True,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, seed=0,
    )
    return transformers.Trainer(model=m, args=args, train_dataset=Samples(), callbacks=list(callbacks))


def expected(step: int, steps_per_epoch: int) -> dict[str, bool]:
    on = SCHEDULE.trainable(Clock.at(step, steps_per_epoch, EPOCHS), ("first", "second"))
    return {"first": "first" in on, "second": "second" in on, "head": True}


# -- the schedule, step by step ------------------------------------------------------------
@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_schedule_is_followed_per_optimizer_step(accumulate, tmp_path):
    probe, m = Probe(), model()
    trainer(m, tmp_path, [FreezelabCallback(halves, SCHEDULE), probe], accumulate=accumulate).train()
    steps_per_epoch = math.ceil(SAMPLES / BATCH / accumulate)
    assert probe.step_begins == list(range(steps_per_epoch * EPOCHS))
    # every optimizer step gets exactly `accumulate` micro-batches, all with the same trainable set
    assert [r["step"] for r in probe.rows] == [s for s in probe.step_begins for _ in range(accumulate)]
    for row in probe.rows:
        assert row["trains"] == expected(row["step"], steps_per_epoch), row["step"]


@pytest.mark.parametrize("policy", POLICIES)
def test_frozen_weights_are_bit_identical_while_frozen(policy, tmp_path):
    probe, m = Probe(), model()
    trainer(m, tmp_path, [FreezelabCallback(halves, SCHEDULE, policy=policy), probe], accumulate=2).train()
    starts = {}
    for row in probe.rows:
        starts.setdefault(row["step"], row)
    moved = 0
    for step in sorted(starts)[:-1]:
        before, after = starts[step], starts[step + 1]
        for g in halves(m):
            same = all(torch.equal(before["weights"][p], after["weights"][p]) for p in g.param_names)
            if not before["trains"][g.name]:
                assert same, f"{g.name} moved at step {step} while frozen"
            moved += not same
    assert moved > 0


def test_gradient_accumulation_matches_a_plain_loop_with_the_freezer(tmp_path):
    """No accumulated gradient is lost at a switch: the Trainer with 2 micro-batches a step equals the obvious loop."""
    m = model()
    hf = trainer(m, tmp_path, [FreezelabCallback(halves, SCHEDULE)], accumulate=2)
    hf.train()

    ref = model()
    decay = set(hf.get_decay_parameter_names(ref))  # the Trainer decays weights, not biases
    opt = torch.optim.AdamW([
        {"params": [p for n, p in ref.named_parameters() if n in decay], "weight_decay": 0.1},
        {"params": [p for n, p in ref.named_parameters() if n not in decay], "weight_decay": 0.0},
    ], lr=LR)
    data = Samples()
    batches = [(data.x[i:i + BATCH], data.y[i:i + BATCH]) for i in range(0, SAMPLES, BATCH)]
    spe = math.ceil(len(batches) / 2)
    total = spe * EPOCHS
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (total - s) / total)
    fz = Freezer(ref, halves(ref), SCHEDULE, opt)
    step = 0
    for _ in range(EPOCHS):
        for i in range(0, len(batches), 2):
            fz.step(Clock.at(step, spe, EPOCHS))
            for x, y in batches[i:i + 2]:
                (ref(x, y)["loss"] / 2).backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
            opt.step()
            sched.step()
            ref.zero_grad()
            step += 1
    for (n, a), b in zip(m.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), n


# -- checkpoints ----------------------------------------------------------------------------
def final_weights(m):
    return {n: p.detach().clone() for n, p in m.named_parameters()}


_uninterrupted: dict[tuple, tuple] = {}


def uninterrupted(policy: str, accumulate: int, tmp_path_factory):
    """One full run per policy and accumulation, checkpointing every 2 optimizer steps."""
    key = (policy, accumulate)
    if key not in _uninterrupted:
        out = tmp_path_factory.mktemp(f"hf-{policy}-{accumulate}")
        m = model()
        callbacks = [FreezelabCallback(halves, SCHEDULE, policy=policy)]
        trainer(m, out, callbacks, accumulate=accumulate, save_steps=2).train()
        _uninterrupted[key] = (final_weights(m), out)
    return _uninterrupted[key]


@pytest.mark.parametrize(
    ("accumulate", "resume_step"),
    [(1, 10), (1, 8), (2, 6), (2, 4)],
    ids=["inside-frozen-phase", "at-a-switch", "inside-frozen-phase-accumulating", "at-a-switch-accumulating"],
)
@pytest.mark.parametrize("policy", POLICIES)
def test_resume_is_bit_identical_to_the_uninterrupted_run(policy, accumulate, resume_step, tmp_path_factory, tmp_path):
    want, out = uninterrupted(policy, accumulate, tmp_path_factory)
    steps_per_epoch = math.ceil(SAMPLES / BATCH / accumulate)
    before = expected(resume_step - 1, steps_per_epoch)
    assert resume_step % SCHEDULE.every == 0 or not all(before.values())  # a switch, or taken while a group is frozen
    m, callback = model(), FreezelabCallback(halves, SCHEDULE, policy=policy)
    hf = trainer(m, tmp_path, [callback], accumulate=accumulate)
    hf.train(resume_from_checkpoint=str(out / f"checkpoint-{resume_step}"))
    for n, p in final_weights(m).items():
        assert torch.equal(p, want[n]), f"{n} differs after resuming at step {resume_step} under {policy}"
    assert callback.freezer.switches == len(range(0, steps_per_epoch * EPOCHS, 4)) - 1


def test_recreate_keeps_the_lr_scheduler_bound_and_resets_state_at_each_switch(tmp_path):
    probe, m = Probe(), model()
    callback = FreezelabCallback(halves, SCHEDULE, policy="recreate")
    trainer(m, tmp_path, [callback, probe]).train()
    opt, total = callback.freezer.optimizer, 6 * EPOCHS
    assert all(r["optimizer"] is opt and r["scheduler_optimizer"].optimizer is opt for r in probe.rows)
    for row in probe.rows:  # the Trainer's linear decay keeps setting the LR that optimizer uses, across switches
        assert row["lr"] == pytest.approx(LR * (total - row["step"]) / total, rel=1e-12)
    # the head trains throughout; its Adam step count restarts at every switch (steps 4, 8, 12, 16)
    assert [r["head_adam_steps"] for r in probe.rows] == [s % 4 for s in range(total)]


# -- what the Trainer cannot do, said once ---------------------------------------------------
class NotATorchOptimizer:
    """Stands in for an engine's optimizer (DeepSpeed ZeRO) that is not a torch.optim.Optimizer."""

    def __init__(self, params) -> None:
        self.param_groups = [{"params": list(params), "lr": LR}]


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "in-accelerates-wrapper"])
def test_an_optimizer_that_is_not_a_torch_optimizer_is_refused(wrapped, tmp_path):
    from accelerate.optimizer import AcceleratedOptimizer

    m = model()
    optimizer = NotATorchOptimizer(m.parameters())
    if wrapped:  # what the Trainer hands callbacks under DeepSpeed: a torch-optimizer wrapper around the engine's
        optimizer = AcceleratedOptimizer(optimizer, device_placement=False)
    callback = FreezelabCallback(halves, SCHEDULE)
    args, state = trainer(m, tmp_path, []).args, transformers.TrainerState(max_steps=6)
    with pytest.raises(IntegrationError, match="optimizer is a NotATorchOptimizer, not a torch.optim.Optimizer"):
        callback.on_train_begin(args, state, transformers.TrainerControl(), model=m, optimizer=optimizer,
                                train_dataloader=[0] * 6)
