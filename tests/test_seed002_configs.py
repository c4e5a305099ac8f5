"""Seed 002's configs: every schedule of the seed, exactly, at the batches it switches (no model needed).

The oracle is the seed's own wording, written as plain arithmetic on the global batch index;
each variant's schedule, built from the YAML as ``freezelab run`` builds it, must give the same
trainable set at every batch of the five target epochs. The head is always trainable (the
kind builder makes it so), which the Freezer adds to what the schedule says.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from freezelab.config import load_yaml
from freezelab.data import steps_per_epoch
from freezelab.schedules import Clock, schedule_from_dict

CONFIGS = Path(__file__).parents[1] / "configs"
FT = load_yaml((CONFIGS / "seed002_lora_norm.yaml").read_text())
GROUPS = ("norm", "lora")  # the schedulable groups of {by: kind, kinds: [lora, norm, head]} (head always trains)
ALL, NORM, LORA = frozenset({"lora", "norm", "head"}), frozenset({"norm", "head"}), frozenset({"lora", "head"})


def alternation(step: int, every: int, lora_first: bool) -> frozenset[str]:
    """The seed's --alt_freeze_every K: LoRA-first freezes LoRA in even periods (Norm trains first)."""
    even = (step // every) % 2 == 0
    return NORM if even == lora_first else LORA


def seed002(variant: str, step: int) -> frozenset[str]:
    """What seed 002 trains at global batch ``step`` in each of its schedules."""
    if variant == "baseline":
        return ALL
    if variant == "warmup-lora-200":
        return NORM if step < 200 else ALL
    if variant.startswith("alt-"):
        return alternation(step, int(variant.rsplit("-", 1)[1]), lora_first=variant.startswith("alt-lora-first"))
    if variant == "warmup-lora-200-alt-25":  # --freeze_lora_steps 200 then K=25, counted from the run's start
        return NORM if step < 200 else alternation(step, 25, lora_first=True)
    if variant == "warmup-norm-200":
        return LORA if step < 200 else ALL
    if variant == "symmetric-100-100":
        return NORM if step < 100 else LORA if step < 200 else ALL
    raise AssertionError(f"no oracle for {variant}")


def test_the_config_lists_every_schedule_of_seed_002():
    assert set(FT["schedules"]) == {
        "baseline", "warmup-lora-200", "warmup-lora-200-alt-25", "warmup-norm-200", "symmetric-100-100",
        *(f"alt-{which}-first-{k}" for which in ("lora", "norm") for k in (25, 50, 100)),
    }


@pytest.mark.parametrize("variant", sorted(FT["schedules"]))
def test_each_schedule_trains_what_the_seed_trained_at_every_batch(variant):
    base = FT["base"]
    spe = steps_per_epoch(22_500, base["batch_size"])  # classes_5_9's training split
    total = spe * base["epochs"]
    schedule = schedule_from_dict(FT["schedules"][variant])
    schedule.validate(GROUPS)
    got = [schedule.trainable(Clock.at(s, spe, base["epochs"]), GROUPS) | {"head"} for s in range(total)]
    want = [seed002(variant, s) for s in range(total)]
    wrong = [(s, sorted(g), sorted(w)) for s, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not wrong, f"{variant}: first differing batch {wrong[0]}"


def test_the_batches_each_schedule_switches_at():
    """The switch points themselves, so a wrong oracle cannot hide a wrong schedule."""
    def switches(variant: str) -> list[int]:
        sched = schedule_from_dict(FT["schedules"][variant])
        sets = [sched.trainable(Clock.at(s, 176, 5), GROUPS) for s in range(400)]
        return [s for s in range(1, 400) if sets[s] != sets[s - 1]]

    assert switches("baseline") == []
    assert switches("warmup-lora-200") == [200]
    assert switches("alt-lora-first-50") == [50, 100, 150, 200, 250, 300, 350]
    assert switches("warmup-lora-200-alt-25") == [225, 250, 275, 300, 325, 350, 375]  # Norm trains 0-224
    assert switches("symmetric-100-100") == [100, 200]
    first = schedule_from_dict(FT["schedules"]["alt-norm-first-100"]).trainable(Clock.at(0, 176, 5), GROUPS)
    assert first == {"lora"}


def test_fine_tuning_adapts_the_pretrained_base_on_the_other_classes():
    pre = load_yaml((CONFIGS / "seed002_pretrain.yaml").read_text())
    assert (pre["base"]["recipe"], FT["base"]["recipe"]) == ("classes_0_4", "classes_5_9")
    assert pre["base"]["model"] == FT["base"]["model"] == "vit_tiny32"
    run = f"runs/{pre['experiment']}/{next(iter(pre['schedules']))}/seed{pre['seeds'][0]}/checkpoint.pt"
    assert FT["base"]["model_args"]["checkpoint"] == run  # where `freezelab run` writes the pretraining checkpoint
    assert FT["base"]["model_args"]["reinit"] == ["head"]  # same class count, other classes: a fresh head
    assert FT["base"]["model_args"]["lora"] == {"r": 8, "alpha": 16, "targets": ["qkv", "proj", "fc1", "fc2"]}
    assert FT["base"]["groups"] == {"by": "kind", "kinds": ["lora", "norm", "head"]}
