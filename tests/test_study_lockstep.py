"""Training runs together: outcomes per run, in order, equal to training each alone.

On a CPU nothing can share CUDA graphs, so every run takes the single-run path; the GPU
lockstep itself is tested in tests/test_run_steppers.py (bit-identical to alone, on the device machine).
"""

import torch

from freezelab.config import RunConfig
from freezelab.run import Training, TrainingDiverged, build_run, epoch_loop, train
from freezelab.run.compiled import compiled_update
from freezelab.run.steppers import EagerStepper
from freezelab.study import train_together

BASE = {"dataset": "digits", "epochs": 2, "batch_size": 64, "lr": 1e-2, "device": "cpu"}


def test_outcomes_come_back_in_order_and_equal_training_alone(tmp_path):
    # The first run draws dropout masks: it must get its own stream although others are built after it.
    cfgs = [RunConfig.from_dict({**BASE, "seed": 3, "model": "seed000_mlp"})] + [
        RunConfig.from_dict({**BASE, "seed": s}) for s in (0, 1)]
    diverging = RunConfig.from_dict({**BASE, "seed": 2, "optimizer": "sgd", "lr": 1e12})
    seen = []
    outcomes = train_together([(cfgs[0], tmp_path / "a"), (diverging, tmp_path / "b"), (cfgs[1], None), (cfgs[2], None)],
                              on_result=lambda i, o, s: seen.append(i))
    assert sorted(seen) == [0, 1, 2, 3]
    assert isinstance(outcomes[1], TrainingDiverged)
    for cfg, res in zip(cfgs, (outcomes[0], outcomes[2], outcomes[3])):
        assert res.epochs["train_loss"].tolist() == train(cfg, progress=False).epochs["train_loss"].tolist()
    assert (tmp_path / "a" / "summary.json").exists()


def test_a_group_goes_through_the_single_run_epoch_loop_and_a_failing_member_stops_alone():
    class Together:  # stands in for the shared GraphStepper on a CPU: one epoch of every run per call
        def __init__(self, runs):
            self.steppers = [EagerStepper(run) for run in runs]

        def run_epochs(self, epoch, perms, bar=None):
            return [s.run_epoch(epoch, perm) for s, perm in zip(self.steppers, perms)]

    ok = RunConfig.from_dict({**BASE, "seed": 0})
    diverging = RunConfig.from_dict({**BASE, "seed": 2, "optimizer": "sgd", "lr": 1e12})
    group = [Training(cfg, progress=False) for cfg in (diverging, ok)]
    failed = []
    alive = epoch_loop(group, Together([t.run for t in group]), failed=lambda k, e: failed.append((k, type(e))))
    assert alive == [1] and failed == [(0, TrainingDiverged)]
    assert group[1].finish().epochs["train_loss"].tolist() == train(ok, progress=False).epochs["train_loss"].tolist()


def test_cpu_runs_neither_share_graphs_nor_compile():
    run = build_run(BASE)
    assert run.plan.lockstep_key is None
    assert run.plan.compile_reason == "compiling pays off on CUDA only"
    assert build_run({**BASE, "compile": "off"}).plan.compile_reason == "compile: off"


def test_compiled_sgd_update_is_torchs_sgd():
    """The compiled update calls torch's functional SGD on the optimizer's own state."""
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    update = compiled_update(opt_b)
    x = torch.randn(8, 5)
    for _ in range(3):
        for model, step in ((a, opt_a.step), (b, update)):
            model(x).square().mean().backward()
            step()
            model.zero_grad(set_to_none=True)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
    assert compiled_update(torch.optim.RMSprop(a.parameters())) is None
