"""The fast path gives the same results as the plain reference loop.

The CUDA-graph stepper can only run on a GPU: those tests skip without CUDA and are run on
the device machine (see benchmarks/README.md); the selection logic is tested everywhere.
"""

import pytest
import torch

from freezelab.config import ConfigError
from freezelab.fast import EagerStepper, GraphStepper, graph_unsupported, make_stepper
from freezelab.train import build_run, train

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
    assert graph_unsupported(run) is None and isinstance(make_stepper(run), GraphStepper)
    assert "replaces" in graph_unsupported(build_run({**BASE, "device": "cuda", "policy": "recreate"}))
    assert isinstance(make_stepper(build_run({**BASE, "device": "cuda", "optimizer": "rmsprop"})), EagerStepper)


CASES = [
    ({"name": "standard"}, "adam", "keep", "none"),
    ({"name": "alternate", "unit": "epoch"}, "adamw", "keep", "cosine"),
    ({"name": "alternate", "unit": "batch", "every": 3}, "adam", "remove", "onecycle"),
    ({"name": "progressive", "freeze_start": 0.2, "unit": "batch"}, "sgd_momentum", "keep", "warmup_cosine"),
    ({"name": "random_layers", "k": 1, "every": 5}, "sgd", "remove", "step"),
]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("schedule,optimizer,policy,lr_schedule", CASES)
def test_graph_path_matches_eager_reference(schedule, optimizer, policy, lr_schedule):
    groups = {"by": "layers", "head": True} if schedule["name"] in ("progressive", "random_layers") else {"by": "depth"}
    cfg = {**BASE, "device": "cuda", "schedule": schedule, "optimizer": optimizer, "policy": policy,
           "lr_schedule": lr_schedule, "groups": groups}
    ref = train({**cfg, "fast": "off"}, progress=False)
    fast = train({**cfg, "fast": "graph"}, progress=False)
    assert ref.epochs["trainable"].tolist() == fast.epochs["trainable"].tolist()
    torch.testing.assert_close(
        torch.tensor(fast.epochs["train_loss"].tolist()), torch.tensor(ref.epochs["train_loss"].tolist()), rtol=1e-4, atol=1e-5
    )
    for k, v in ref.model.state_dict().items():
        torch.testing.assert_close(fast.model.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
