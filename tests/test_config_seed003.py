"""configs/seed003_cifar10.yaml (issue 15's study): it loads and every variant builds, on the CPU."""

import dataclasses
from pathlib import Path

import pytest
import torch

from freezelab.config import RunConfig, read_yaml_file
from freezelab.data import DatasetSplits
from freezelab.data.splits import Split
from freezelab.models import list_models
from freezelab.run import build_run
from freezelab.study.experiment import Experiment, load_experiment

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "seed003_cifar10.yaml"
HAS_AUGMENT = "augment" in {f.name for f in dataclasses.fields(RunConfig)}
HAS_MODEL = "cifar_resnet18" in list_models()


def tiny_cifar(n: int = 8) -> DatasetSplits:
    """Random 3x32x32 images standing in for CIFAR-10: building a run needs shapes, not pictures."""
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10)
    return DatasetSplits("cifar10", split, split, split, 10, (3, 32, 32), "holdout_45k_5k")


def build_every_variant(exp: Experiment) -> dict[str, object]:
    built = {}
    for cfg in exp.configs():
        if cfg.seed == exp.seeds[0]:
            cfg = dataclasses.replace(cfg, epochs=1, batch_size=4, device="cpu")
            built[cfg.variant] = build_run(cfg, data=tiny_cifar())
    return built


def test_the_study_has_the_issues_variants_and_three_seeds():
    exp = read_yaml_file(CONFIG)
    assert len(exp["seeds"]) >= 3
    names = [s["name"] for s in exp["schedules"].values()]
    assert {"standard", "progressive", "freezeout", "autofreeze"} <= set(names)
    freezeout = {(s["scaling"], s["t0"]) for s in exp["schedules"].values() if s["name"] == "freezeout"}
    assert freezeout == {("linear", 0.5), ("linear", 0.8), ("cubic", 0.5), ("cubic", 0.8)}
    assert exp["base"]["model"] == "cifar_resnet18" and exp["base"]["augment"] == "crop_flip"


MISSING = [what for what, has in (("model cifar_resnet18 (branch models)", HAS_MODEL),
                                   ("the augment option (integrator)", HAS_AUGMENT)) if not has]


@pytest.mark.skipif(bool(MISSING), reason="needs " + " and ".join(MISSING))
def test_the_study_config_loads_and_every_variant_builds_as_written():
    built = build_every_variant(load_experiment(CONFIG))
    assert len(built) == 10
    assert all(run.plan.stepper == "eager" and not run.cache_prefix for run in built.values())


def test_every_variant_builds_with_what_main_has_now():
    """The same file with stand-ins for what has not landed: torchvision's resnet18 (same parameter
    names) for cifar_resnet18, and no augment option until RunConfig has one."""
    data = read_yaml_file(CONFIG)
    if not HAS_MODEL:
        data["base"]["model"] = "resnet18"
    if not HAS_AUGMENT:
        data["base"].pop("augment")
    built = build_every_variant(Experiment.from_dict(data))
    assert len(built) == 10
    for variant, run in built.items():
        assert run.groups.schedulable == ("stem", "layer1", "layer2", "layer3", "layer4"), variant
        assert run.groups.always_trainable == ("head",), variant
    assert built["freezeout-cubic-t0.5"].freezer.scales_lr  # the per-group LR annealing is on
