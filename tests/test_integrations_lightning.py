"""freezelab inside the real ``lightning.pytorch.Trainer``: per-optimizer-step schedule, exact freezing, exact resume.

Tiny CPU runs: 24 samples in batches of 4 (6 batches an epoch), no shuffling, no workers. The
schedule alternates the two halves every 4 optimizer steps, so with 6 steps an epoch the
checkpoint at step 6 lies inside a phase where "first" is frozen, and the one at step 12 falls
exactly on a switch (where ``recreate`` and ``release`` must reset state, and only there).
"""

import math
import warnings

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from freezelab import groups  # noqa: E402
from freezelab.freezer import POLICIES  # noqa: E402
from freezelab.groups import GroupError  # noqa: E402
from freezelab.integrations import IntegrationError  # noqa: E402
from freezelab.integrations.lightning import FreezelabCallback  # noqa: E402
from freezelab.schedules import Alternate, Clock  # noqa: E402

SCHEDULE = Alternate(unit="batch", every=4)
SAMPLES, BATCH, EPOCHS = 24, 4, 3
LR, GAMMA = 1e-2, 0.9

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*resuming from a checkpoint that ended before the epoch ended.*")


class LitMLP(pl.LightningModule):
    def __init__(self, scheduler: bool = False, manual: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
        self.scheduler = scheduler
        self.automatic_optimization = not manual

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=0.1)
        if not self.scheduler:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=GAMMA)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loader():
    g = torch.Generator().manual_seed(7)
    data = torch.utils.data.TensorDataset(torch.randn(SAMPLES, 6, generator=g), torch.randint(0, 3, (SAMPLES,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False, num_workers=0)


def module(**kw) -> LitMLP:
    torch.manual_seed(0)
    return LitMLP(**kw)


def halves(m: nn.Module):
    """"first" and "second" halves alternate; the head trains throughout (so it spans every switch)."""
    return groups.depth(m, 2, head=True)


class Probe(pl.Callback):
    """Records, before every micro-batch (after freezelab's callback), what the step will see."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        opt = trainer.optimizers[0]
        head = pl_module.net[4].weight
        self.rows.append({
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "trains": {g.name: all(p.requires_grad for p in g_params(pl_module, g)) for g in halves(pl_module)},
            "weights": {n: p.detach().clone() for n, p in pl_module.named_parameters()},
            "lr": opt.param_groups[0]["lr"],
            "optimizer": opt,
            "head_adam_steps": float(opt.state[head]["step"]) if head in opt.state else 0.0,
        })


def g_params(m, group):
    named = dict(m.named_parameters())
    return [named[p] for p in group.param_names]


def trainer(tmp_path=None, *, callbacks=(), accumulate=1, every_n_train_steps=None, max_epochs=EPOCHS):
    cbs = list(callbacks)
    if every_n_train_steps:
        cbs.append(pl.callbacks.ModelCheckpoint(
            dirpath=tmp_path, filename="{step}", every_n_train_steps=every_n_train_steps, save_top_k=-1,
        ))
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, accumulate_grad_batches=accumulate, callbacks=cbs,
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=bool(every_n_train_steps),
        deterministic=True, num_sanity_val_steps=0,
    )


def expected(step: int, steps_per_epoch: int) -> dict[str, bool]:
    on = SCHEDULE.trainable(Clock.at(step, steps_per_epoch, EPOCHS), ("first", "second"))
    return {"first": "first" in on, "second": "second" in on, "head": True}


# -- the schedule, step by step ------------------------------------------------------------
@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_schedule_is_followed_per_optimizer_step(accumulate):
    probe, m = Probe(), module()
    trainer(callbacks=[FreezelabCallback(halves, SCHEDULE), probe], accumulate=accumulate).fit(m, loader())
    steps_per_epoch = math.ceil(SAMPLES / BATCH / accumulate)
    steps = [r["step"] for r in probe.rows]
    # every optimizer step gets exactly `accumulate` micro-batches, all with the same trainable set
    assert steps == [s for s in range(steps_per_epoch * EPOCHS) for _ in range(accumulate)]
    for row in probe.rows:
        assert row["trains"] == expected(row["step"], steps_per_epoch), row["step"]
    assert {r["epoch"] for r in probe.rows} == set(range(EPOCHS))


@pytest.mark.parametrize("policy", POLICIES)
def test_frozen_weights_are_bit_identical_while_frozen(policy):
    probe, m = Probe(), module()
    trainer(callbacks=[FreezelabCallback(halves, SCHEDULE, policy=policy), probe], accumulate=2).fit(m, loader())
    gs = halves(m)
    starts = {}
    for row in probe.rows:
        starts.setdefault(row["step"], row)
    moved = 0
    for step in sorted(starts)[:-1]:
        before, after = starts[step], starts[step + 1]
        for g in gs:
            same = all(torch.equal(before["weights"][p], after["weights"][p]) for p in g.param_names)
            if not before["trains"][g.name]:
                assert same, f"{g.name} moved at step {step} while frozen"
            moved += not same
    assert moved > 0


def test_gradient_accumulation_matches_a_plain_loop_with_the_freezer():
    """No accumulated gradient is lost at a switch: Lightning with accumulate=2 equals the obvious torch loop."""
    m = module()
    trainer(callbacks=[FreezelabCallback(halves, SCHEDULE)], accumulate=2).fit(m, loader())

    from freezelab import Freezer

    ref = module()
    opt = ref.configure_optimizers()
    fz = Freezer(ref, halves(ref), SCHEDULE, opt)
    batches = list(loader())
    spe = math.ceil(len(batches) / 2)
    step = 0
    for _ in range(EPOCHS):
        for i in range(0, len(batches), 2):
            fz.step(Clock.at(step, spe, EPOCHS))
            for x, y in batches[i:i + 2]:
                (ref.training_step((x, y), 0) / 2).backward()
            opt.step()
            opt.zero_grad()
            step += 1
    for (n, a), b in zip(m.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), n


# -- checkpoints ----------------------------------------------------------------------------
def final_weights(m):
    return {n: p.detach().clone() for n, p in m.named_parameters()}


_uninterrupted: dict[tuple, tuple] = {}


def uninterrupted(policy: str, tmp_path_factory, accumulate: int = 1):
    """One full run per policy and accumulation, checkpointing at every epoch's end."""
    key = (policy, accumulate)
    if key not in _uninterrupted:
        ckpts = tmp_path_factory.mktemp(f"lightning-{policy}-{accumulate}")
        m = module()
        callbacks = [FreezelabCallback(halves, SCHEDULE, policy=policy)]
        steps_per_epoch = math.ceil(SAMPLES / BATCH / accumulate)
        trainer(ckpts, callbacks=callbacks, accumulate=accumulate, every_n_train_steps=steps_per_epoch).fit(m, loader())
        _uninterrupted[key] = (final_weights(m), ckpts)
    return _uninterrupted[key]


# Lightning resumes exactly only at an epoch's end unless the dataloader itself is resumable
# (it warns otherwise), so the checkpoints are epoch ends chosen to fall inside a phase or on a switch.
@pytest.mark.parametrize(
    ("accumulate", "resume_step"),
    [(1, 6), (1, 12), (2, 6)],
    ids=["inside-frozen-phase", "at-a-switch", "inside-frozen-phase-accumulating"],
)
@pytest.mark.parametrize("policy", POLICIES)
def test_resume_is_bit_identical_to_the_uninterrupted_run(policy, accumulate, resume_step, tmp_path_factory):
    want, ckpts = uninterrupted(policy, tmp_path_factory, accumulate)
    steps_per_epoch = math.ceil(SAMPLES / BATCH / accumulate)
    before = expected(resume_step - 1, steps_per_epoch)
    assert resume_step % SCHEDULE.every == 0 or not all(before.values())  # a switch, or taken while a group is frozen
    m, callback = module(), FreezelabCallback(halves, SCHEDULE, policy=policy)
    trainer(callbacks=[callback], accumulate=accumulate).fit(m, loader(), ckpt_path=ckpts / f"step={resume_step}.ckpt")
    for n, p in final_weights(m).items():
        assert torch.equal(p, want[n]), f"{n} differs after resuming at step {resume_step} under {policy}"
    assert callback.freezer.switches == len(range(0, steps_per_epoch * EPOCHS, SCHEDULE.every)) - 1


@pytest.mark.parametrize("policy", POLICIES)
def test_a_checkpoint_without_freezelab_state_resumes_by_replaying_the_schedule(policy, tmp_path_factory):
    """An optimizer state without freezelab's key (written before the callback was added, say) still resumes exactly."""
    want, ckpts = uninterrupted(policy, tmp_path_factory)
    checkpoint = torch.load(ckpts / "step=12.ckpt", weights_only=False)
    assert checkpoint["optimizer_states"][0].pop("freezelab")["trainable"] == ["first", "head"]
    stripped = tmp_path_factory.mktemp("stripped") / "step=12.ckpt"
    torch.save(checkpoint, stripped)
    m, callback = module(), FreezelabCallback(halves, SCHEDULE, policy=policy)
    trainer(callbacks=[callback]).fit(m, loader(), ckpt_path=stripped)
    for n, p in final_weights(m).items():
        assert torch.equal(p, want[n]), f"{n} differs after resuming under {policy}"


def test_recreate_keeps_the_lr_scheduler_bound_and_resets_state_at_each_switch():
    probe, m = Probe(), module(scheduler=True)
    callback = FreezelabCallback(halves, SCHEDULE, policy="recreate")
    trainer(callbacks=[callback, probe]).fit(m, loader())
    opt = callback.freezer.optimizer
    assert all(r["optimizer"] is opt for r in probe.rows)  # Lightning steps the very optimizer the Freezer manages
    assert m.trainer.lr_scheduler_configs[0].scheduler.optimizer is opt
    for row in probe.rows:  # and the StepLR keeps setting the LR that optimizer uses, across every switch
        assert row["lr"] == pytest.approx(LR * GAMMA ** row["step"], rel=1e-12)
    # the head trains throughout; its Adam step count restarts at every switch (steps 4, 8, 12, 16)
    adam = [r["head_adam_steps"] for r in probe.rows]
    assert adam == [s % 4 for s in range(6 * EPOCHS)]


# -- what Lightning cannot do, said once ------------------------------------------------------
def test_manual_optimization_is_refused_with_the_way_out():
    with pytest.raises(IntegrationError, match="automatic_optimization=False"):
        trainer(callbacks=[FreezelabCallback(halves, SCHEDULE)]).fit(module(manual=True), loader())


def test_groups_over_the_inner_network_name_the_lightningmodule_parameters():
    m = module()
    with pytest.raises(GroupError, match=r"named like 'net\.0\.weight'.*groups=lambda model"):
        trainer(callbacks=[FreezelabCallback(groups.depth(m.net, 2), SCHEDULE)]).fit(m, loader())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "rebuild"}, "unknown optimizer policy 'rebuild'"),
        ({"bn_stats": "eval"}, "bn_stats must be one of"),
        ({"missing": "ignore"}, "missing must be one of"),
        ({"schedule": 3}, "schedule must be a Schedule"),
        ({"schedule": "alternate:unit=fortnight"}, "unit must be one of"),
        ({"groups": ["first"]}, "groups must be a GroupSet or a function"),
    ],
)
def test_bad_arguments_fail_when_the_callback_is_built(kwargs, message):
    args = {"groups": halves, "schedule": SCHEDULE, **kwargs}
    with pytest.raises(ValueError, match=message):  # IntegrationError, or ScheduleError for a bad schedule spec
        FreezelabCallback(args.pop("groups"), args.pop("schedule"), **args)


def test_schedules_are_accepted_as_dicts_and_strings():
    assert FreezelabCallback(halves, SCHEDULE.to_dict())._host.schedule == SCHEDULE
    assert FreezelabCallback(halves, "alternate:unit=batch,every=4")._host.schedule == SCHEDULE
