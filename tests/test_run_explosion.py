"""A run that blows up without a NaN is flagged in its summary, with one warning line."""

from __future__ import annotations

import logging
import math

from freezelab.run import train
from freezelab.run.evaluate import explosion

TINY = {"dataset": "digits", "subset": 300, "epochs": 2, "grad_stats": False, "model_args": {"hidden": [32]}}


def test_adam_at_lr_1e6_is_flagged_exploded_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="freezelab"):
        result = train({**TINY, "optimizer": "adam", "lr": 1e6}, progress=False)
    assert all(math.isfinite(v) for v in result.epochs["train_loss"])  # no NaN: nothing else would have said so
    exploded = result.summary["exploded"]
    assert exploded["epoch"] == 1 and "over 10x its start" in exploded["reason"]
    warnings = [r.getMessage() for r in caplog.records if "exploded" in r.getMessage()]
    assert len(warnings) == 1 and "lower lr (now 1e+06)" in warnings[0]


def test_a_healthy_run_is_not_flagged():
    assert train({**TINY, "lr": 1e-2}, progress=False).summary["exploded"] is None


def test_accuracy_falling_to_chance_after_learning_is_flagged_at_its_first_epoch():
    losses = [2.0, 0.8, 0.7, 2.3, 2.3]
    accs = [0.4, 0.8, 0.85, 0.1, 0.11]
    assert explosion(losses, accs, 10) == {
        "epoch": 4, "reason": "val accuracy fell to chance (11.0%, chance 10.0%) for 2 epochs after reaching 85.0%"}
    assert explosion(losses[:4], accs[:4], 10) is None  # one epoch at chance may be a bad batch


def test_a_run_that_never_learned_is_not_called_exploded():
    """At chance from the start with a sane loss: too small an lr or a hard task, not a blow-up."""
    assert explosion([2.30, 2.29, 2.29], [0.1, 0.11, 0.1], 10) is None
