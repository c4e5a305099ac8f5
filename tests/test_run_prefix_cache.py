"""Caching a frozen prefix's outputs: exact where valid, refused in one line where not."""

import pytest
import torch
from torch import nn

from freezelab import groups
from freezelab.config import ConfigError
from freezelab.run import build_run, train
from freezelab.run.loop import Training, epoch_loop
from freezelab.run.cached_stepper import CachedStepper
from freezelab.run.prefix_cache import PrefixCache, cache_problem, check_request, frozen_for_rest, prefix_depth

# seed 001's MLP on digits, 4 depth blocks; progressive freezes block0 for good from epoch 5 of 6.
RUN = {"dataset": "digits", "epochs": 6, "batch_size": 64, "lr": 1e-2, "model": "seed001_mlp", "device": "cpu",
       "groups": {"by": "depth", "blocks": 4}, "log_steps": False,
       "schedule": {"name": "progressive", "freeze_start": 0.2, "freeze_level": 0.75}}


def test_cached_training_gives_the_uncached_weights():
    uncached = train({**RUN, "cache_frozen_prefix": "off"}, progress=False)
    training = Training({**RUN, "cache_frozen_prefix": "on"}, progress=False)
    stepper = CachedStepper(training.run)
    epoch_loop([training], stepper)
    cached = training.finish()
    assert stepper.cache.depth == 3  # flatten, fc1, act1: block0 and the parameter-free modules around it
    assert cached.epochs["train_loss"].tolist() == uncached.epochs["train_loss"].tolist()
    for name, value in uncached.model.state_dict().items():
        # The same kernels on the same rows: bit-identical on the CPU (float tolerance is what is promised).
        torch.testing.assert_close(cached.model.state_dict()[name], value, rtol=0, atol=1e-6)


def test_auto_caches_through_the_run_loop_and_off_does_not():
    assert build_run({**RUN, "cache_frozen_prefix": "auto"}).cache_prefix
    assert not build_run({**RUN, "cache_frozen_prefix": "off"}).cache_prefix


def test_the_cache_grows_from_its_own_features():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 2))
    x = torch.randn(50, 5)
    cache = PrefixCache(net, x, chunk=16)
    assert not cache.advance(0) and cache.features is x
    cache.advance(2)
    cache.advance(4)
    assert cache.depth == 4 and not cache.advance(3)
    torch.testing.assert_close(cache.features, net[:4](x))
    torch.testing.assert_close(cache.suffix(cache.features), net(x))


def test_the_prefix_stops_at_a_trainable_layer_dropout_or_train_mode_batch_norm():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Dropout(0.3), nn.Linear(4, 4), nn.BatchNorm1d(4),
                        nn.Linear(4, 2))
    gs = groups.layers(net)
    names = gs.names
    assert prefix_depth(net, gs, frozenset(names[:1]), "train") == 2  # Linear, ReLU; the next Linear trains
    assert prefix_depth(net, gs, frozenset(names[:2]), "train") == 3  # stops before the dropout
    assert prefix_depth(net, gs, frozenset(), "train") == 0
    plain = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    pg = groups.layers(plain)
    assert prefix_depth(plain, pg, frozenset(pg.names[:2]), "train") == 1
    assert prefix_depth(plain, pg, frozenset(pg.names[:2]), "frozen") == 2  # a frozen norm is in eval mode


def test_frozen_for_rest_asks_every_remaining_step():
    alternating = build_run({**RUN, "schedule": {"name": "alternate", "unit": "epoch"}})
    assert frozen_for_rest(alternating.freezer, 0, alternating.steps_per_epoch, 6) == frozenset()
    progressive = build_run(RUN)
    spe = progressive.steps_per_epoch
    assert frozen_for_rest(progressive.freezer, 0, spe, 6) == frozenset()
    assert frozen_for_rest(progressive.freezer, 4 * spe, spe, 6) == {"block0"}


@pytest.mark.parametrize("model, bn_stats, augment, problem", [
    (nn.Sequential(nn.Dropout(0.1), nn.Linear(2, 2)), "frozen", None, "dropout comes before the first layer"),
    (nn.Sequential(nn.Flatten(), nn.BatchNorm1d(2), nn.Linear(2, 2)), "train", None, "batch-statistics norm"),
    (nn.Sequential(nn.Linear(2, 2)), "train", "crop_flip", "augmentation 'crop_flip'"),
    (nn.ModuleDict({"a": nn.Linear(2, 2)}), "train", None, "not an nn.Sequential"),
])
def test_what_makes_the_cache_invalid_is_named(model, bn_stats, augment, problem):
    assert problem in cache_problem(model, augment, bn_stats)
    assert not check_request("auto", model, augment, bn_stats, "eager")
    with pytest.raises(ConfigError, match=f"cache_frozen_prefix: on cannot be honoured: .*{problem}"):
        check_request("on", model, augment, bn_stats, "eager")


def test_valid_models_cache_and_the_graph_stepper_does_not():
    ok = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.LayerNorm(2))
    assert cache_problem(ok, "none", "frozen") is None
    assert check_request("auto", ok, None, "frozen", "eager")
    assert not check_request("auto", ok, None, "frozen", "graph")
    with pytest.raises(ConfigError, match="set fast: off"):
        check_request("on", ok, None, "frozen", "graph")


def test_dropout_after_the_first_layer_limits_the_prefix_and_bad_values_are_one_line():
    # seed 000's MLP: fc1, norm1, act1, drop1, ...: fc1 (with a frozen norm, also norm1 and act1) can be cached.
    assert build_run({**RUN, "model": "seed000_mlp", "cache_frozen_prefix": "on"}).cache_prefix
    with pytest.raises(ConfigError, match="cache_frozen_prefix must be auto, on or off"):
        build_run({**RUN, "cache_frozen_prefix": "yes"})
