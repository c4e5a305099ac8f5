"""The fast path gives the same results as the plain reference loop.

The CUDA-graph stepper can only run on a GPU: those tests skip without CUDA and are run on
the device machine (see benchmarks/README.md); the selection logic is tested everywhere.
"""

import pytest
import torch

from freezelab.config import ConfigError
from freezelab.run import build_run, train
from freezelab.run.compiled import compiled_loss
from freezelab.run.steppers import EagerStepper, GraphStepper, make_stepper

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA (run on the device machine)")

BASE = {"dataset": "digits", "epochs": 3, "batch_size": 64, "lr": 1e-2, "model_args": {"hidden": [64, 64]}}


def test_cpu_uses_the_eager_stepper_and_refuses_graph():
    assert isinstance(make_stepper(build_run({**BASE, "device": "cpu"})), EagerStepper)
    with pytest.raises(ConfigError, match="fast: graph cannot be used here: CUDA graphs need a CUDA device"):
        make_stepper(build_run({**BASE, "device": "cpu", "fast": "graph"}))


@gpu
@pytest.mark.gpu
def test_graph_path_is_chosen_when_exact():
    run = build_run({**BASE, "device": "cuda"})
    assert run.plan.stepper == "graph" and isinstance(make_stepper(run), GraphStepper)
    assert "replaces" in build_run({**BASE, "device": "cuda", "policy": "recreate"}).plan.stepper_reason
    assert isinstance(make_stepper(build_run({**BASE, "device": "cuda", "optimizer": "rmsprop"})), EagerStepper)


CASES = [
    ({"name": "standard"}, "adam", "keep", "none"),
    ({"name": "alternate", "unit": "epoch"}, "adamw", "keep", "cosine"),
    ({"name": "alternate", "unit": "batch", "every": 3}, "adam", "remove", "onecycle"),
    ({"name": "progressive", "freeze_start": 0.2, "unit": "batch"}, "sgd_momentum", "keep", "warmup_cosine"),
    ({"name": "random_layers", "k": 1, "every": 5}, "sgd", "remove", "step"),
]


def _assert_trained_alike(fast, ref, rtol: float, atol: float) -> None:
    """Per-epoch training losses and final weights of two results agree within the tolerances."""
    torch.testing.assert_close(torch.tensor(fast.epochs["train_loss"].tolist()),
                               torch.tensor(ref.epochs["train_loss"].tolist()), rtol=rtol, atol=atol)
    for k, v in ref.model.state_dict().items():
        torch.testing.assert_close(fast.model.state_dict()[k], v, rtol=rtol, atol=atol, msg=k)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("schedule,optimizer,policy,lr_schedule", CASES)
def test_graph_path_matches_eager_reference(schedule, optimizer, policy, lr_schedule):
    groups = {"by": "layers", "head": True} if schedule["name"] in ("progressive", "random_layers") else {"by": "depth"}
    cfg = {**BASE, "device": "cuda", "schedule": schedule, "optimizer": optimizer, "policy": policy,
           "lr_schedule": lr_schedule, "groups": groups}
    ref = train({**cfg, "fast": "off"}, progress=False)
    fast = train({**cfg, "fast": "graph", "compile": "off"}, progress=False)
    assert ref.epochs["trainable"].tolist() == fast.epochs["trainable"].tolist()
    # The graphed end-of-epoch measurements equal the eager ones (on weights that agree to 1e-4).
    for col in ("val_acc", "test_acc", "val_ece", "grad_mean_abs:fc1.weight", "grad_cosine", "dead_pct:act1"):
        torch.testing.assert_close(torch.tensor(fast.epochs[col].tolist()), torch.tensor(ref.epochs[col].tolist()),
                                   rtol=1e-3, atol=2.0 if col.startswith("dead") else 2e-3, msg=col)
    _assert_trained_alike(fast, ref, rtol=1e-4, atol=1e-5)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("schedule,optimizer,policy,lr_schedule", CASES[:3])
def test_compiled_graph_path_matches_eager_reference(schedule, optimizer, policy, lr_schedule):
    """The compiled loss and update are torch's own math in other kernels: equal within rounding."""
    cfg = {**BASE, "device": "cuda", "schedule": schedule, "optimizer": optimizer, "policy": policy,
           "lr_schedule": lr_schedule, "epochs": 2}
    ref = train({**cfg, "fast": "off"}, progress=False)
    run = build_run(cfg)
    assert make_stepper(run).compiled
    fast = train(cfg, progress=False)
    _assert_trained_alike(fast, ref, rtol=1e-3, atol=1e-4)


@gpu
@pytest.mark.gpu
def test_compile_is_skipped_where_it_does_not_pay_and_used_elsewhere():
    assert not make_stepper(build_run({**BASE, "device": "cuda", "compile": "off"})).compiled
    assert not make_stepper(build_run({**BASE, "device": "cuda", "model": "seed000_mlp", "model_args": {}})).compiled
    alternating = make_stepper(build_run({**BASE, "device": "cuda", "schedule": {"name": "alternate", "unit": "batch"}}))
    assert alternating.compiled and alternating.members[0].loss is compiled_loss()  # a graph per trainable set
    many = {"name": "random_layers", "k": 3, "every": 1}  # 3 of 7 layers: 35 possible sets
    cfg = {**BASE, "device": "cuda", "schedule": many, "groups": {"by": "layers"}, "model_args": {"hidden": [16] * 6}}
    assert not make_stepper(build_run(cfg)).compiled


@gpu
@pytest.mark.gpu
def test_runs_in_lockstep_equal_each_run_alone(tmp_path):
    """Several runs sharing graphs on parallel streams: every curve and weight bit-identical to alone."""
    from freezelab.config import RunConfig
    from freezelab.study import train_together

    cfgs = [
        RunConfig.from_dict({**BASE, "device": "cuda", "seed": 1}),
        RunConfig.from_dict({**BASE, "device": "cuda", "seed": 2, "activation": "gelu", "optimizer": "sgd_momentum"}),
        RunConfig.from_dict({**BASE, "device": "cuda", "seed": 3, "schedule": {"name": "alternate", "unit": "batch", "every": 4}}),
        RunConfig.from_dict({**BASE, "device": "cuda", "seed": 4, "model": "seed000_mlp", "model_args": {}}),  # dropout: trained alone
    ]
    together = train_together([(c, tmp_path / str(i)) for i, c in enumerate(cfgs)])
    for i, (cfg, res) in enumerate(zip(cfgs, together)):
        alone = train(cfg, progress=False)
        assert alone.epochs["train_loss"].tolist() == res.epochs["train_loss"].tolist(), f"run {i}"
        assert alone.epochs["val_acc"].tolist() == res.epochs["val_acc"].tolist()
        for k, v in alone.model.state_dict().items():
            assert torch.equal(res.model.state_dict()[k], v), k
