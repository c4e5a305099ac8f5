"""Experiment files: grid expansion, variant labels, overrides, and one clear line per bad file.

Nothing here trains: an experiment is validated in full (every run's config) when it is built,
so these tests take milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freezelab.config import ConfigError, RunConfig, load_yaml
from freezelab.run import build_schedule
from freezelab.study import Experiment, ExperimentError, load_experiment

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
CONFIG = {p.stem: p for p in CONFIGS}
BASE = {"dataset": "digits", "epochs": 2, "model_args": {"hidden": [16]}}


def exp(**data) -> Experiment:
    return Experiment.from_dict({"experiment": "t", "base": BASE, **data})


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def one_line_error(fn, *args, match: str, error: type[Exception] = ExperimentError, **kwargs) -> str:
    """The call fails with ``error``, the message matches, and it is a single line."""
    with pytest.raises(error, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- expansion ------------------------------------------------------------------------------


def test_grid_is_schedules_x_grid_x_seeds_in_a_stable_order():
    e = exp(
        seeds=[42, 43],
        schedules={"standard": {"name": "standard"}, "alternate-epoch": {"name": "alternate", "unit": "epoch"}},
        grid={"optimizer": ["sgd", "adam"], "lr": [0.001, 0.01]},
    )
    configs = e.configs()
    assert len(configs) == 2 * 2 * 2 * 2
    cells = {(c.variant, c.optimizer, c.lr, c.schedule["name"]) for c in configs}
    assert len(cells) == 8  # every cell once, each with both seeds
    assert [c.seed for c in configs[:4]] == [42, 43, 42, 43]
    assert configs[0].variant == "standard_sgd_0e001"
    assert all(c.experiment == "t" and c.dataset == "digits" and c.epochs == 2 for c in configs)
    for label in {c.variant for c in configs}:
        assert sorted(c.seed for c in configs if c.variant == label) == [42, 43]


def test_seeds_count_means_range_and_default_schedule_is_standard():
    e = Experiment.from_dict({"experiment": "t", "seeds": 3, "base": BASE})
    assert e.seeds == [0, 1, 2]
    assert [c.variant for c in e.configs()] == ["standard"] * 3
    assert Experiment.from_dict({"base": BASE}, source="configs/quick.yaml").name == "quick"


def test_variant_format_reproduces_seed_004_experiment_id():
    e = exp(
        grid={"activation": ["relu", "tanh"], "optimizer": ["adam"], "lr": [0.001]},
        variant="{activation}_{optimizer}_{lr}",
    )
    assert [c.variant for c in e.configs()] == ["relu_adam_0e001", "tanh_adam_0e001"]
    assert exp(grid={"lr": [0.1, 1e-05]}).configs()[1].variant == "standard_1e-05"


def test_labels_and_names_become_safe_folder_names(tmp_path):
    e = Experiment.from_dict({"experiment": "my study/v2", "base": BASE, "schedules": {"alt every 2": {"name": "alternate", "every": 2}}})
    cfg = e.configs()[0]
    assert e.name == "my-study-v2" and cfg.variant == "alt-every-2"
    assert e.run_dir(tmp_path, cfg) == tmp_path / "my-study-v2" / "alt-every-2" / "seed0"
    one_line_error(exp, schedules={"..": {"name": "standard"}}, match="cannot be a folder name")
    one_line_error(Experiment.from_dict, {"experiment": "..", "base": BASE}, match="experiment name '..' cannot be a folder name")


def test_schedule_shorthand_strings_work_like_train_schedule():
    e = exp(schedules={"standard": "standard", "alternate-batch": "alternate:unit=batch,every=5"})
    schedules = {c.variant: build_schedule(c).describe() for c in e.configs()}
    assert schedules["alternate-batch"] == "alternate first/second every 5 batches, first trains first"
    one_line_error(exp, schedules={"x": "alternating"}, match=r"schedules\.x: unknown schedule 'alternating'")


def test_yaml_reads_exponent_floats_as_numbers(tmp_path):
    assert load_yaml("lr: 1e-3\nwd: 5.0e-4\nn: 3\nname: 1e") == {"lr": 0.001, "wd": 0.0005, "n": 3, "name": "1e"}
    path = write(tmp_path, "experiment: t\nbase: {dataset: digits, lr: 1e-3}\ngrid: {weight_decay: [1e-4, 1e-2]}\n")
    configs = load_experiment(path).configs()
    assert configs[0].lr == 0.001 and [c.weight_decay for c in configs] == [1e-4, 1e-2]


# --- one clear line per mistake -----------------------------------------------------------------


def test_unknown_top_level_key_is_named(tmp_path):
    path = write(tmp_path, "experiment: t\nseed: 3\nbase: {dataset: digits}\n")
    one_line_error(load_experiment, path, match=r"unknown key 'seed'; valid top-level keys")


def test_unknown_run_option_in_base_or_grid_is_named_with_a_suggestion():
    one_line_error(exp, base={**BASE, "epoch": 3}, match=r"t/standard: unknown run option 'epoch' \(did you mean 'epochs'\?\)")
    one_line_error(exp, grid={"optimzer": ["sgd"]}, match=r"unknown run option 'optimzer' \(did you mean 'optimizer'\?\)")


def test_bad_values_name_the_variant_and_the_option():
    one_line_error(exp, grid={"lr": [0.01, -1.0]}, match=r"t/standard_-1: lr must be a positive number, got -1.0")
    one_line_error(exp, schedules={"a": {"name": "alternate", "unit": "week"}}, match=r"t/a: schedule: ")
    one_line_error(exp, base={**BASE, "epochs": "3"}, match="epochs must be an integer, got '3'")


def test_bad_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "experiment: t\nbase:\n  dataset: digits\n  epochs: [2\nseeds: 2\n")
    message = one_line_error(load_experiment, path, match=r"is not valid YAML at line \d+, column \d+")
    assert str(path) in message
    path = write(tmp_path, "experiment: t\nbase:\n  dataset: digits\n   epochs: 2\n", "indent.yaml")
    one_line_error(load_experiment, path, match="is not valid YAML at line 4")


def test_missing_file_and_wrong_shapes(tmp_path):
    one_line_error(load_experiment, tmp_path / "nope.yaml", match=r"nope.yaml does not exist; see configs/")
    one_line_error(load_experiment, write(tmp_path, "- a\n- b\n"), match="expected a mapping at the top level, got list")
    one_line_error(load_experiment, write(tmp_path, "", "empty.yaml"), match="expected a mapping at the top level")
    one_line_error(exp, grid={"lr": 0.01}, match=r"grid\.lr must be a non-empty list, got 0.01")
    one_line_error(exp, grid=["lr"], match="grid must map run options to lists")
    one_line_error(exp, base=["digits"], match="base must map run options to values")
    one_line_error(exp, schedules=[{"name": "standard"}], match="schedules must map a label to a schedule")
    for seeds in (0, None, "3", [1, "2"], [], 2.5):
        one_line_error(exp, seeds=seeds, match="seeds must be a positive count or a list of integers")
    one_line_error(exp, seeds=[1, 1], match="seeds lists a seed twice")


def test_keys_the_experiment_owns_cannot_be_set_in_base_or_grid():
    one_line_error(exp, base={**BASE, "seed": 3}, match=r"base\.seed is set by the experiment itself; use the top-level 'seeds'")
    one_line_error(exp, grid={"schedule": [{"name": "standard"}]}, match=r"grid\.schedule is set by the experiment itself; use the top-level 'schedules'")
    one_line_error(exp, base={**BASE, "lr": 0.1}, grid={"lr": [0.1, 0.2]}, match="'lr' is in both base and grid")


def test_variant_format_mistakes():
    one_line_error(exp, grid={"lr": [0.1]}, variant="{schedule}_{optimizer}", match=r"uses 'optimizer' which is not a grid key")
    one_line_error(exp, grid={"lr": [0.1]}, variant="{schedule", match="is not a valid format string")
    one_line_error(
        exp, grid={"lr": [0.1, 0.2]}, variant="{schedule}", match="two grid cells share the variant label 'standard'"
    )


def test_experiment_errors_are_config_errors():
    # The CLI and callers catch ConfigError for every "your input is wrong" case.
    assert issubclass(ExperimentError, ConfigError)


# --- overrides (what `freezelab run --seeds/--epochs/--set` pass) --------------------------------


def test_overrides_patch_base_narrow_the_grid_and_keep_the_files_first_seeds(tmp_path):
    path = write(
        tmp_path,
        "experiment: t\nseeds: [42, 43, 44]\nbase: {dataset: digits, epochs: 20}\n"
        "grid: {optimizer: [sgd, adam]}\nvariant: '{optimizer}'\n",
    )
    overrides = {"seeds": 2, "epochs": 1, "optimizer": "adam"}
    e = load_experiment(path, overrides)
    assert overrides == {"seeds": 2, "epochs": 1, "optimizer": "adam"}  # the caller's dict is left alone
    assert e.seeds == [42, 43]
    assert [(c.variant, c.epochs, c.seed) for c in e.configs()] == [("adam", 1, 42), ("adam", 1, 43)]
    assert load_experiment(path, {"seeds": 5}).seeds == [42, 43, 44, 45, 46]
    assert load_experiment(path, {"seeds": [7]}).seeds == [7]
    one_line_error(load_experiment, path, {"schedule": "alternate"}, match=r"base\.schedule is set by the experiment")


# --- the shipped configs ----------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_validates(path, tmp_path):
    checkpoint = ((load_yaml(path.read_text()).get("base") or {}).get("model_args") or {}).get("checkpoint")
    overrides = {}
    if checkpoint is not None and not Path(checkpoint).exists():  # another config's run writes it (seed 002)
        (tmp_path / "checkpoint.pt").touch()
        overrides["model_args.checkpoint"] = str(tmp_path / "checkpoint.pt")  # as the header's --set does
    e = load_experiment(path, overrides)
    configs = e.configs()
    assert e.name == path.stem
    assert configs and all(isinstance(c, RunConfig) for c in configs)
    assert len(configs) == len(e.seeds) * len({c.variant for c in configs})
    assert path.read_text().startswith(f"# freezelab run configs/{path.name}"), "the header shows the launch command"
    for c in configs:  # every run describes its schedule, i.e. the schedule parses
        assert build_schedule(c).describe()


def test_shipped_configs_match_their_seeds():
    seed001 = {c.variant: c for c in load_experiment(next(p for p in CONFIGS if p.stem == "seed001_mnist")).configs() if c.seed == 42}
    assert set(seed001) == {"standard", "alternate-epoch"}
    c = seed001["alternate-epoch"]
    assert (c.dataset, c.recipe, c.model, c.optimizer, c.lr, c.batch_size) == ("mnist", "mnist10k_80_20", "seed001_mlp", "adam", 0.001, 128)
    seed004 = load_experiment(next(p for p in CONFIGS if p.stem == "seed004_fashion")).configs()
    assert len(seed004) == 6 * 2 * 5 and "relu_adam_standard" in {c.variant for c in seed004}


# --- baseline ---------------------------------------------------------------------------------


def test_baseline_names_a_variant_and_is_written_to_the_manifest(tmp_path):
    grid = {"schedules": {"standard": {"name": "standard"}}, "grid": {"optimizer": ["sgd", "adam"]},
            "variant": "{optimizer}_{schedule}"}
    e = exp(**grid, baseline="adam_standard")
    assert e.baseline == "adam_standard"
    manifest = json.loads(e.write_manifest(tmp_path).read_text())
    assert manifest["baseline"] == "adam_standard" and manifest["variants"] == ["sgd_standard", "adam_standard"]
    one_line_error(exp, **grid, baseline="adam", match="baseline 'adam' is not a variant; choose one of")


def test_a_narrowed_grid_keeps_the_baseline_checked_on_the_whole_grid(tmp_path):
    path = write(tmp_path, "experiment: t\nbase: {dataset: digits, epochs: 1}\ngrid: {optimizer: [sgd, adam]}\n"
                           "variant: '{optimizer}'\nbaseline: adam\n")
    narrowed = load_experiment(path, {"optimizer": "sgd"})
    assert narrowed.variants() == ["sgd"] and narrowed.baseline == "adam"
    bad = write(tmp_path, path.read_text().replace("baseline: adam", "baseline: lion"), "bad.yaml")
    one_line_error(load_experiment, bad, {"optimizer": "sgd"}, match="baseline 'lion' is not a variant")


def test_a_dotted_set_changes_one_entry_of_a_mapping(tmp_path):
    path = write(tmp_path, "experiment: t\nbase: {dataset: digits, epochs: 1, model_args: {hidden: [16], dropout: 0.1}}\n")
    (cfg,) = load_experiment(path, {"model_args.hidden": [8]}).configs()
    assert cfg.model_args == {"hidden": [8], "dropout": 0.1}
    assert load_yaml(path.read_text())["base"]["model_args"]["hidden"] == [16]
    with pytest.raises(ExperimentError, match=r"--set epochs.x: epochs is 1, not a mapping; set epochs itself"):
        load_experiment(path, {"epochs.x": 2})
