"""freezelab inside the real ``lightning.pytorch.Trainer``: per-optimizer-step schedule, exact freezing, exact resume.

The run is :mod:`host_checks`' (6 batches an epoch, halves alternating every 4 optimizer
steps, a head that always trains). Lightning resumes exactly only from an epoch's end unless the
dataloader itself is resumable (it warns otherwise), so the checkpoints are epoch ends chosen to
fall inside a frozen phase (step 6) or exactly on a switch (step 12).
"""

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from freezelab import groups  # noqa: E402
from freezelab.freezer import POLICIES  # noqa: E402
from freezelab.groups import GroupError  # noqa: E402
from freezelab.integrations import IntegrationError  # noqa: E402
from freezelab.integrations.lightning import FreezelabCallback  # noqa: E402

import model_families  # noqa: E402

from host_checks import (  # noqa: E402
    BATCH, EPOCHS, FAMILY_ACCUMULATE, FAMILY_SCHEDULE, HOST_FAMILIES, LR, SCHEDULE, assert_close_weights,
    assert_family_run, assert_frozen_weights_unchanged, assert_same_weights, assert_schedule_followed, expected,
    family_groups, family_samples, halves, net, observe, plain_loop, samples, steps_per_epoch, switches, weights,
)

GAMMA = 0.9

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),  # the resumed run needs no checkpointing
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),  # inside Lightning
]


class LitNet(pl.LightningModule):
    def __init__(self, scheduler: bool = False, manual: bool = False) -> None:
        super().__init__()
        self.net = net()
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
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*samples()), batch_size=BATCH, shuffle=False, num_workers=0
    )


def module(**kw) -> LitNet:
    torch.manual_seed(0)
    return LitNet(**kw)


class Probe(pl.Callback):
    """Records, before every micro-batch (after freezelab's callback), what the step will see."""

    def __init__(self, groups=None) -> None:
        self.rows: list[dict] = []
        self.groups = groups  # None: host_checks' halves of LitNet

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        opt = trainer.optimizers[0]
        head = pl_module.net[4].weight if self.groups is None else None
        self.rows.append({
            **observe(pl_module, trainer.global_step, self.groups),
            "epoch": trainer.current_epoch,
            "lr": opt.param_groups[0]["lr"],
            "optimizer": opt,
            "head_adam_steps": float(opt.state[head]["step"]) if head in opt.state else 0.0,
        })


def trainer(tmp_path=None, *, callbacks=(), accumulate=1, every_n_train_steps=None, max_epochs=EPOCHS):
    cbs = list(callbacks)
    if every_n_train_steps:
        cbs.append(pl.callbacks.ModelCheckpoint(
            dirpath=tmp_path, filename="{step}", every_n_train_steps=every_n_train_steps, save_top_k=-1,
        ))
    return pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=max_epochs, accumulate_grad_batches=accumulate, callbacks=cbs,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=bool(every_n_train_steps), deterministic=True, num_sanity_val_steps=0,
    )


# -- the schedule, step by step ------------------------------------------------------------
@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_schedule_is_followed_per_optimizer_step(accumulate):
    probe = Probe()
    trainer(callbacks=[FreezelabCallback(halves, SCHEDULE), probe], accumulate=accumulate).fit(module(), loader())
    assert_schedule_followed(probe.rows, accumulate)
    assert [r["epoch"] for r in probe.rows] == [r["step"] // steps_per_epoch(accumulate) for r in probe.rows]


@pytest.mark.parametrize("policy", POLICIES)
def test_frozen_weights_are_bit_identical_while_frozen(policy):
    probe = Probe()
    callback = FreezelabCallback(halves, SCHEDULE, policy=policy)
    trainer(callbacks=[callback, probe], accumulate=2).fit(module(), loader())
    assert_frozen_weights_unchanged(probe.rows)


def test_gradient_accumulation_matches_a_plain_loop_with_the_freezer():
    """No accumulated gradient is lost at a switch: Lightning with accumulate=2 equals the obvious torch loop."""
    m = module()
    trainer(callbacks=[FreezelabCallback(halves, SCHEDULE)], accumulate=2).fit(m, loader())
    ref = module()
    plain_loop(ref, ref.configure_optimizers(), lambda x, y: ref.training_step((x, y), 0), accumulate=2)
    assert_close_weights(m, ref)


class FamilyModule(pl.LightningModule):
    """A family's model as a LightningModule, with the usual optimizer over requires_grad parameters only."""

    def __init__(self, fam) -> None:
        super().__init__()
        self.model, self.loss_fn = fam.model, fam.loss_fn

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        return self.loss_fn(self.model, batch)

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=LR)


@pytest.mark.parametrize("name", HOST_FAMILIES)
def test_real_model_families_follow_the_schedule_and_keep_what_the_user_froze(name):
    fam = model_families.load(name)
    m, build_groups = FamilyModule(fam), family_groups(fam)
    probe = Probe(build_groups(m))
    frozen_before = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*family_samples(fam)), batch_size=model_families.BATCH, shuffle=False
    )
    callbacks = [FreezelabCallback(build_groups, FAMILY_SCHEDULE), probe]
    trainer(callbacks=callbacks, accumulate=FAMILY_ACCUMULATE, max_epochs=1).fit(m, data)
    assert_family_run(probe.rows, frozen_before, m)


# -- checkpoints ----------------------------------------------------------------------------
_uninterrupted: dict[tuple, tuple] = {}


def uninterrupted(policy: str, accumulate: int, tmp_path_factory):
    """One full run per policy and accumulation, checkpointing at every epoch's end."""
    key = (policy, accumulate)
    if key not in _uninterrupted:
        ckpts = tmp_path_factory.mktemp(f"lightning-{policy}-{accumulate}")
        m = module()
        callbacks = [FreezelabCallback(halves, SCHEDULE, policy=policy)]
        trainer(ckpts, callbacks=callbacks, accumulate=accumulate, every_n_train_steps=steps_per_epoch(accumulate)).fit(
            m, loader()
        )
        _uninterrupted[key] = (weights(m), ckpts)
    return _uninterrupted[key]


@pytest.mark.parametrize(
    ("accumulate", "resume_step"),
    [(1, 6), (1, 12), (2, 6)],
    ids=["inside-frozen-phase", "at-a-switch", "inside-frozen-phase-accumulating"],
)
@pytest.mark.parametrize("policy", POLICIES)
def test_resume_is_bit_identical_to_the_uninterrupted_run(policy, accumulate, resume_step, tmp_path_factory):
    want, ckpts = uninterrupted(policy, accumulate, tmp_path_factory)
    assert resume_step % SCHEDULE.every == 0 or not all(expected(resume_step - 1, accumulate).values())
    m, callback = module(), FreezelabCallback(halves, SCHEDULE, policy=policy)
    trainer(callbacks=[callback], accumulate=accumulate).fit(m, loader(), ckpt_path=ckpts / f"step={resume_step}.ckpt")
    assert_same_weights(m, want, f"after resuming at step {resume_step} under {policy}")
    assert callback.freezer.switches == switches(accumulate)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_checkpoint_without_freezelab_state_resumes_by_replaying_the_schedule(policy, tmp_path_factory):
    """An optimizer state without freezelab's key (written before the callback was added, say) still resumes exactly."""
    want, ckpts = uninterrupted(policy, 1, tmp_path_factory)
    checkpoint = torch.load(ckpts / "step=12.ckpt", weights_only=False)
    assert checkpoint["optimizer_states"][0].pop("freezelab")["trainable"] == ["first", "head"]
    stripped = tmp_path_factory.mktemp("stripped") / "step=12.ckpt"
    torch.save(checkpoint, stripped)
    m, callback = module(), FreezelabCallback(halves, SCHEDULE, policy=policy)
    trainer(callbacks=[callback]).fit(m, loader(), ckpt_path=stripped)
    assert_same_weights(m, want, f"after resuming under {policy}")
    assert callback.freezer.switches == switches(1)


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
    assert [r["head_adam_steps"] for r in probe.rows] == [s % SCHEDULE.every for s in range(len(probe.rows))]


# -- what Lightning cannot do, said once ------------------------------------------------------
def test_manual_optimization_is_refused_with_the_way_out():
    with pytest.raises(IntegrationError, match="automatic_optimization=False"):
        trainer(callbacks=[FreezelabCallback(halves, SCHEDULE)]).fit(module(manual=True), loader())


def test_a_run_without_a_length_is_refused():
    with pytest.raises(IntegrationError, match="set max_epochs or max_steps"):
        trainer(callbacks=[FreezelabCallback(halves, SCHEDULE)], max_epochs=-1).fit(module(), loader())


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
