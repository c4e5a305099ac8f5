"""AutoFreeze-style adaptive freezing: decisions from logged history, a run that freezes, an exact resume."""

import pytest
import torch

from freezelab.config import ConfigError
from freezelab.run import check_config, train
from freezelab.run import record as run_folder
from freezelab.config import RunConfig
from freezelab.schedules import AutoFreeze, Clock, ScheduleError, autofreeze_decisions, schedule_from_dict

GROUPS = ["a", "b", "c"]


def rows(**norms):
    """Epoch rows from per-group norm lists: rows(a=[1, 1.01]) -> [{"grad_norm:a": 1}, ...]."""
    n = len(next(iter(norms.values())))
    return [{f"grad_norm:{g}": v[e] for g, v in norms.items()} for e in range(n)]


def test_the_earliest_trainable_group_freezes_once_its_norm_change_is_below_threshold():
    history = rows(a=[1.0, 0.5, 0.52, 0.52, 0.52], b=[2.0, 1.0, 1.5, 1.52, 1.52], c=[3.0, 3.0, 3.0, 3.0, 3.0])
    # a: change 0.5 after epoch 1, 0.04 after epoch 2 -> frozen from epoch 3 (0-based);
    # b is only a candidate after that: change 0.013 after epoch 3 -> frozen from epoch 4; c is the head.
    assert autofreeze_decisions(history, GROUPS, threshold=0.1, window=1) == (("a", 3), ("b", 4))


def test_one_group_per_epoch_boundary_and_never_the_last():
    flat = rows(a=[1.0] * 4, b=[1.0] * 4, c=[1.0] * 4)
    assert autofreeze_decisions(flat, GROUPS, threshold=0.1, window=1) == (("a", 2), ("b", 3))


def test_window_compares_with_the_norm_window_epochs_earlier():
    history = rows(a=[1.0, 2.0, 1.02], b=[1.0, 1.0, 1.0], c=[1.0, 1.0, 1.0])
    assert autofreeze_decisions(history, GROUPS, threshold=0.1, window=1) == ()  # 1.02 vs 2.0
    assert autofreeze_decisions(history, GROUPS, threshold=0.1, window=2) == (("a", 3),)  # 1.02 vs 1.0


def test_start_delays_decisions_and_zero_norms_give_no_signal():
    flat = rows(a=[1.0] * 4, b=[1.0] * 4, c=[1.0] * 4)
    assert AutoFreeze(start=0.5).observe(flat, GROUPS, epochs=8).decisions == (("a", 4),)
    zeros = rows(a=[0.0] * 3, b=[1.0] * 3, c=[1.0] * 3)
    assert autofreeze_decisions(zeros, GROUPS, threshold=0.1, window=1) == ()


def test_decisions_depend_on_the_history_alone():
    """Deciding after every epoch and deciding once at the end give the same record (a resume relies on it)."""
    history = rows(a=[1.0, 0.5, 0.52, 0.52, 0.52], b=[2.0, 1.0, 1.5, 1.52, 1.52], c=[3.0] * 5)
    s = AutoFreeze()
    for e in range(1, len(history) + 1):
        prefix = s.observe(history[:e], GROUPS).decisions
        assert prefix == s.observe(history, GROUPS).decisions[: len(prefix)]
        assert all(epoch <= e for _, epoch in prefix)  # never a decision about an epoch already trained


def test_trainable_reads_the_decisions_and_the_schedule_round_trips():
    s = AutoFreeze(threshold=0.2, decisions=(("a", 2), ("b", 3)))
    spe = 5
    assert s.trainable(Clock.at(2 * spe - 1, spe, 6), GROUPS) == {"a", "b", "c"}
    assert s.trainable(Clock.at(2 * spe, spe, 6), GROUPS) == {"b", "c"}
    assert s.trainable(Clock.at(5 * spe, spe, 6), GROUPS) == {"c"}
    assert schedule_from_dict(s.to_dict()) == s
    assert "a from epoch 3" in s.describe()


def test_bad_options_and_missing_statistics_are_one_clear_line():
    with pytest.raises(ScheduleError, match="threshold must be a positive number"):
        AutoFreeze(threshold=0)
    with pytest.raises(ScheduleError, match="decisions are"):
        AutoFreeze(decisions=(("a", -1),))
    with pytest.raises(ScheduleError, match="not schedulable groups"):
        AutoFreeze(decisions=(("z", 1),)).validate(GROUPS)
    with pytest.raises(ScheduleError, match="grad_stats: true"):
        autofreeze_decisions([{}, {}], GROUPS, threshold=0.1, window=1)
    cfg = RunConfig.from_dict({"schedule": {"name": "autofreeze"}, "grad_stats": False})
    with pytest.raises(ConfigError, match="set grad_stats: true"):
        check_config(cfg)
    nested = RunConfig.from_dict({"schedule": {"name": "warmup", "groups": ["first"], "steps": 2,
                                               "then": {"name": "autofreeze"}}})
    with pytest.raises(ConfigError, match="must be the run's top-level schedule"):
        check_config(nested)


# Digits, 3 depth blocks: with this threshold block0 and block1 freeze during the run.
RUN = {"dataset": "digits", "epochs": 6, "batch_size": 64, "lr": 1e-2, "model_args": {"hidden": [32, 32]},
       "groups": {"by": "depth", "blocks": 3}, "device": "cpu", "log_steps": False, "save_every_s": 0.0,
       "schedule": {"name": "autofreeze", "threshold": 0.25}}


def test_a_run_freezes_where_its_own_logged_statistics_say():
    result = train(RUN, progress=False)
    epochs = result.epochs
    made = AutoFreeze(threshold=0.25).observe(epochs.to_dict("records"), ["block0", "block1", "block2"], 6).decisions
    assert made, "the run froze nothing: pick a larger threshold"
    for e, trainable in enumerate(epochs["trainable"]):
        assert set(trainable.split("+")) == {"block0", "block1", "block2"} - {g for g, at in made if e >= at}
    assert result.summary["switches"] == len({at for _, at in made if at < 6})


def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    full = train(RUN, tmp_path / "full", progress=False)
    real = run_folder.save_progress

    def crash_after_two(run, run_dir, rows, step_rows, epoch):
        real(run, run_dir, rows, step_rows, epoch)
        if epoch == 1:  # block0's decision comes from this epoch's row; block1's from a later, resumed one
            raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "save_progress", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(RUN, tmp_path / "cut", progress=False)
    monkeypatch.setattr(run_folder, "save_progress", real)
    resumed = train(RUN, tmp_path / "cut", progress=False)
    assert resumed.epochs["trainable"].tolist() == full.epochs["trainable"].tolist()
    assert resumed.epochs["train_loss"].tolist() == full.epochs["train_loss"].tolist()
    assert len(set(full.epochs["trainable"])) == 3  # two decisions: one recomputed on resume, one made after it
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
