"""The execution plan: decided once per run, with reasons, written to the run folder; settings restored.

``plan_run`` only reads ``device.type``, so the GPU decisions are checked here on a CPU by
planning for a CUDA device; the GPU tests (tests/test_run_steppers.py) check that the steppers
follow the plan.
"""

import json

import pytest
import torch
import torch._dynamo.config as dynamo_config

from freezelab.config import ConfigError, RunConfig
from freezelab.models import build_model
from freezelab.run import build_run, record, train
from freezelab.run.compiled import dynamo_settings, has_compiled_update
from freezelab.run.plan import ExecutionPlan, lockstep_candidate, plan_run, process_settings
from freezelab.study import check_run_dir

BASE = {"dataset": "digits", "epochs": 2, "batch_size": 64, "lr": 1e-2, "model_args": {"hidden": [32]}}
CUDA = torch.device("cuda")


def gpu_plan(dropout: bool = False, sets: int = 2, optimizer: str = "adam", **fields) -> ExecutionPlan:
    cfg = RunConfig.from_dict({**BASE, "optimizer": optimizer, **fields})
    opt = torch.optim.RMSprop if optimizer == "rmsprop" else torch.optim.Adam
    return plan_run(cfg, CUDA, dropout=dropout, trainable_sets=lambda enough: min(sets, enough),
                    optimizer=opt(build_model("mlp", in_features=4, hidden=[3]).parameters()),
                    steps_per_epoch=10, train_size=640)


def test_a_cpu_run_is_planned_eager_and_the_plan_is_in_its_folder(tmp_path):
    cpu = {**BASE, "device": "cpu"}
    result = train(cpu, tmp_path, progress=False)
    assert result.summary["final_val_acc"] > 0
    plan = build_run(cpu).plan
    assert (plan.device, plan.stepper, plan.compiled, plan.graphed_measurements, plan.lockstep_key) == (
        "cpu", "eager", False, False, None)
    assert plan.stepper_reason == "CUDA graphs need a CUDA device"
    assert record.read_plan(tmp_path) == json.loads(json.dumps(plan.to_dict()))
    assert record.read_plan(tmp_path)["compile_reason"] == "compiling pays off on CUDA only"


def test_the_gpu_plan_takes_the_graph_path_compiled_where_exact():
    plan = gpu_plan()
    assert (plan.stepper, plan.fused_optimizer, plan.compiled, plan.graphed_measurements) == ("graph", True, True, True)
    assert plan.lockstep_key == ("cuda", 10, 640, 64, 1)
    dropout = gpu_plan(dropout=True)
    assert dropout.stepper == "graph" and not dropout.compiled and "dropout" in dropout.compile_reason
    assert not dropout.graphed_measurements and dropout.lockstep_key is None
    many = gpu_plan(sets=50)
    assert not many.compiled and "9 trainable sets" in many.compile_reason  # counted up to the limit + 1
    assert gpu_plan(compile="off").compile_reason == "compile: off"


@pytest.mark.parametrize("fields,reason", [
    ({"policy": "recreate"}, "policy 'recreate' replaces or frees optimizer state"),
    ({"policy": "release"}, "policy 'release' replaces or frees optimizer state"),
    ({"optimizer": "rmsprop"}, "optimizer 'rmsprop' is neither fused nor capturable"),
])
def test_runs_the_graph_path_cannot_take_exactly_are_planned_eager(fields, reason):
    plan = gpu_plan(**fields)
    assert plan.stepper == "eager" and plan.stepper_reason.startswith(reason)
    assert not plan.compiled and plan.lockstep_key is None and not plan.graphed_measurements
    with pytest.raises(ConfigError, match=f"fast: graph cannot be used here: {reason}.*use fast: auto or off"):
        gpu_plan(**fields, fast="graph")
    assert gpu_plan(fast="off").stepper_reason == "fast: off"


def test_lockstep_candidates_follow_the_same_rule_before_building():
    assert lockstep_candidate(RunConfig.from_dict({**BASE, "device": "cpu"})) is None


def _dynamo_now() -> dict:
    return {k: getattr(dynamo_config, k) for k in ("recompile_limit", "skip_tensor_guards_with_matching_dict_tags")
            if hasattr(dynamo_config, k)}


def test_planning_only_asks_and_the_settings_are_restored_after_the_run():
    before_dynamo, before_blas = _dynamo_now(), torch.backends.cuda.preferred_blas_library()
    assert has_compiled_update(torch.optim.Adam(torch.nn.Linear(2, 2).parameters()))
    assert gpu_plan().compiled
    assert _dynamo_now() == before_dynamo  # asking whether to compile changes nothing
    with dynamo_settings():
        assert dynamo_config.recompile_limit >= 64
    assert _dynamo_now() == before_dynamo
    with process_settings(gpu_plan()):
        assert torch.backends.cuda.preferred_blas_library() == torch._C._BlasBackend.Cublaslt
        assert dynamo_config.recompile_limit >= 64
    assert torch.backends.cuda.preferred_blas_library() == before_blas and _dynamo_now() == before_dynamo
    with pytest.raises(RuntimeError), process_settings(gpu_plan()):
        raise RuntimeError("a run that fails restores them too")
    assert torch.backends.cuda.preferred_blas_library() == before_blas and _dynamo_now() == before_dynamo


def test_save_every_s_is_checked_and_is_no_new_run(tmp_path):
    with pytest.raises(ConfigError, match="save_every_s must be a number of seconds >= 0"):
        RunConfig.from_dict({"save_every_s": -1})
    train({**BASE, "save_every_s": 0.0}, tmp_path, progress=False)
    assert check_run_dir(tmp_path, RunConfig.from_dict(BASE))  # finished: the same run, saved more often


def test_freezeout_annealing_trains_through_freezelabs_loop_with_a_param_group_per_group(tmp_path):
    """The default FreezeOut anneals each group's LR, which needs one optimizer param group per group."""
    cfg = {**BASE, "groups": {"by": "layers"}, "schedule": {"name": "freezeout", "t0": 0.5}}
    run = build_run(cfg)
    assert run.freezer.scales_lr
    assert [g["freezelab_group"] for g in run.freezer.optimizer.param_groups] == list(run.groups.names)
    result = train(cfg, tmp_path, progress=False)
    assert result.summary["final_val_acc"] > 0.3
    gpu = plan_run(RunConfig.from_dict(cfg), CUDA, dropout=False, trainable_sets=lambda enough: 2,
                   optimizer=run.freezer.optimizer, steps_per_epoch=10, train_size=640, scales_lr=True)
    assert gpu.stepper == "eager" and "per-group learning rates" in gpu.stepper_reason



def test_the_schedule_is_built_once_for_the_grid_check_and_the_run():
    from freezelab.run import check_config

    cfg = RunConfig.from_dict({**BASE, "schedule": {"name": "block_cycle", "every": 2}})
    schedule = check_config(cfg)  # what `freezelab run` does for every run before training any
    assert build_run(cfg).schedule is schedule
    assert schedule.seed == cfg.seed  # the run's seed, given to a random schedule that names none
