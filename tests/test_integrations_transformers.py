"""freezelab inside the real ``transformers.Trainer``: per-optimizer-step schedule, exact freezing, exact resume.

The run is :mod:`host_checks`' with a plain ``nn.Module`` that returns its loss, the Trainer's
own AdamW (decay on weights, not biases), gradient clipping and linear LR decay. Checkpoints are
written every 2 optimizer steps; the resume points are mid-epoch where they can be (the Trainer
skips the batches it has seen): inside a frozen phase, and exactly on a switch.
"""

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from freezelab.freezer import POLICIES  # noqa: E402
from freezelab.integrations import IntegrationError  # noqa: E402
from freezelab.integrations.transformers import FreezelabCallback  # noqa: E402

import model_families  # noqa: E402

from host_checks import (  # noqa: E402
    BATCH, EPOCHS, FAMILY_ACCUMULATE, FAMILY_SCHEDULE, HOST_FAMILIES, LR, SCHEDULE, assert_close_weights,
    assert_family_run, assert_frozen_weights_unchanged, assert_same_weights, assert_schedule_followed, expected,
    family_groups, family_samples, halves, net, observe, plain_loop, samples, steps_per_epoch, switches, weights,
)

transformers.logging.set_verbosity_error()


class TinyClassifier(nn.Module):
    """What the Trainer needs from a model: keyword inputs in, a loss in the output."""

    def __init__(self) -> None:
        super().__init__()
        self.net = net()

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Samples(torch.utils.data.Dataset):
    def __init__(self, xy=None) -> None:
        self.x, self.y = xy if xy is not None else samples()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def model() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier()


class Probe(transformers.TrainerCallback):
    """Records, before every micro-batch (after freezelab's callback), what it will see."""

    def __init__(self, groups=None) -> None:
        self.rows: list[dict] = []
        self.step_begins: list[int] = []
        self.groups = groups  # None: host_checks' halves of TinyClassifier

    def on_step_begin(self, args, state, control, **kw):
        self.step_begins.append(state.global_step)
        self._record(state, **kw)

    def on_substep_end(self, args, state, control, **kw):
        self._record(state, **kw)  # before the window's next micro-batch

    def _record(self, state, model, optimizer, lr_scheduler, **kw):
        head = model.net[4].weight if self.groups is None else None
        self.rows.append({
            **observe(model, state.global_step, self.groups),
            "lr": optimizer.param_groups[0]["lr"],
            "optimizer": optimizer.optimizer,  # inside accelerate's AcceleratedOptimizer
            "scheduler_optimizer": lr_scheduler.optimizer.optimizer,
            "head_adam_steps": float(optimizer.state[head]["step"]) if head in optimizer.state else 0.0,
        })


def trainer(m, out, callbacks, *, accumulate=1, save_steps=None, epochs=EPOCHS, data=None, cls=transformers.Trainer):
    """The Trainer on CPU, reading the data in order, reporting nowhere."""
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=BATCH, gradient_accumulation_steps=accumulate,
        num_train_epochs=epochs, learning_rate=LR, weight_decay=0.1, report_to=[], use_cpu=True,
        train_sampling_strategy="sequential", dataloader_num_workers=0, logging_strategy="no", disable_tqdm=True,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, seed=0,
        remove_unused_columns=False,  # the family models' forward(input) does not name the "x" column
    )
    return cls(model=m, args=args, train_dataset=data or Samples(), callbacks=list(callbacks))


# -- the schedule, step by step ------------------------------------------------------------
@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_schedule_is_followed_per_optimizer_step(accumulate, tmp_path):
    probe = Probe()
    trainer(model(), tmp_path, [FreezelabCallback(halves, SCHEDULE), probe], accumulate=accumulate).train()
    assert probe.step_begins == list(range(steps_per_epoch(accumulate) * EPOCHS))
    assert_schedule_followed(probe.rows, accumulate)


@pytest.mark.parametrize("policy", POLICIES)
def test_frozen_weights_are_bit_identical_while_frozen(policy, tmp_path):
    probe = Probe()
    trainer(model(), tmp_path, [FreezelabCallback(halves, SCHEDULE, policy=policy), probe], accumulate=2).train()
    assert_frozen_weights_unchanged(probe.rows)


def test_gradient_accumulation_matches_a_plain_loop_with_the_freezer(tmp_path):
    """No accumulated gradient is lost at a switch: the Trainer with 2 micro-batches a step equals the obvious loop."""
    m = model()
    hf = trainer(m, tmp_path, [FreezelabCallback(halves, SCHEDULE)], accumulate=2)
    hf.train()
    ref = model()
    decay = set(hf.get_decay_parameter_names(ref))
    opt = torch.optim.AdamW([
        {"params": [p for n, p in ref.named_parameters() if n in decay], "weight_decay": 0.1},
        {"params": [p for n, p in ref.named_parameters() if n not in decay], "weight_decay": 0.0},
    ], lr=LR)
    total = steps_per_epoch(2) * EPOCHS
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (total - s) / total)
    plain_loop(ref, opt, lambda x, y: ref(x, y)["loss"], accumulate=2,
               before_step=lambda: nn.utils.clip_grad_norm_(ref.parameters(), 1.0), after_step=sched.step)
    assert_close_weights(m, ref)


@pytest.mark.parametrize("name", HOST_FAMILIES)
def test_real_model_families_follow_the_schedule_and_keep_what_the_user_froze(name, tmp_path):
    """The Trainer's optimizer holds only requires_grad parameters: PEFT's base stays out, and frozen."""
    fam = model_families.load(name)

    class FamilyTrainer(transformers.Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return fam.loss_fn(model, (inputs["x"], inputs["labels"]))

    build_groups = family_groups(fam)
    probe = Probe(build_groups(fam.model))
    frozen_before = {n: p.detach().clone() for n, p in fam.model.named_parameters() if not p.requires_grad}
    callbacks = [FreezelabCallback(build_groups, FAMILY_SCHEDULE), probe]
    data = Samples(family_samples(fam))
    hf = trainer(fam.model, tmp_path, callbacks, accumulate=FAMILY_ACCUMULATE, epochs=1, data=data, cls=FamilyTrainer)
    hf.train()
    assert_family_run(probe.rows, frozen_before, fam.model)


# -- checkpoints ----------------------------------------------------------------------------
_uninterrupted: dict[tuple, tuple] = {}


def uninterrupted(policy: str, accumulate: int, tmp_path_factory):
    """One full run per policy and accumulation, checkpointing every 2 optimizer steps."""
    key = (policy, accumulate)
    if key not in _uninterrupted:
        out = tmp_path_factory.mktemp(f"hf-{policy}-{accumulate}")
        m = model()
        callbacks = [FreezelabCallback(halves, SCHEDULE, policy=policy)]
        trainer(m, out, callbacks, accumulate=accumulate, save_steps=2).train()
        _uninterrupted[key] = (weights(m), out)
    return _uninterrupted[key]


@pytest.mark.parametrize(
    ("accumulate", "resume_step"),
    [(1, 10), (1, 8), (2, 6), (2, 4)],
    ids=["inside-frozen-phase", "at-a-switch", "inside-frozen-phase-accumulating", "at-a-switch-accumulating"],
)
@pytest.mark.parametrize("policy", POLICIES)
def test_resume_is_bit_identical_to_the_uninterrupted_run(policy, accumulate, resume_step, tmp_path_factory, tmp_path):
    want, out = uninterrupted(policy, accumulate, tmp_path_factory)
    assert resume_step % SCHEDULE.every == 0 or not all(expected(resume_step - 1, accumulate).values())
    m, callback = model(), FreezelabCallback(halves, SCHEDULE, policy=policy)
    hf = trainer(m, tmp_path, [callback], accumulate=accumulate)
    hf.train(resume_from_checkpoint=str(out / f"checkpoint-{resume_step}"))
    assert_same_weights(m, want, f"after resuming at step {resume_step} under {policy}")
    assert callback.freezer.switches == switches(accumulate)


def test_recreate_keeps_the_lr_scheduler_bound_and_resets_state_at_each_switch(tmp_path):
    probe = Probe()
    callback = FreezelabCallback(halves, SCHEDULE, policy="recreate")
    trainer(model(), tmp_path, [callback, probe]).train()
    opt, total = callback.freezer.optimizer, steps_per_epoch(1) * EPOCHS
    assert all(r["optimizer"] is opt and r["scheduler_optimizer"] is opt for r in probe.rows)
    for row in probe.rows:  # the Trainer's linear decay keeps setting the LR that optimizer uses, across switches
        assert row["lr"] == pytest.approx(LR * (total - row["step"]) / total, rel=1e-12)
    # the head trains throughout; its Adam step count restarts at every switch (steps 4, 8, 12, 16)
    assert [r["head_adam_steps"] for r in probe.rows] == [s % SCHEDULE.every for s in range(total)]


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
