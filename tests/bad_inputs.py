"""The table of bad inputs: what a user may get wrong, and the one line that must answer it.

Each :class:`Case` is a command line (``freezelab ...``) or a Python API call, what is wrong
with it, and a fragment the one error line must contain. ``tests/test_bad_inputs.py`` runs the
whole table: exit status 2 (CLI) or the documented exception class (API), exactly one line that
names the problem and the fix, no traceback, and the finished runs in the same workspace intact.

Placeholders in a command line: ``{out}`` is a fresh folder for the case, ``{ws}`` the workspace
(see ``build_workspace`` in the test):

    {ws}/finished                   a finished ``train`` run (TRAIN options)
    {ws}/interrupted                TRAIN with --epochs 3 killed after its 2nd epoch (checkpoint + previous, no summary)
    {ws}/runs/tiny/standard/seed0   a finished run of the experiment {ws}/tiny.yaml
    {ws}/fake_mnist                 a tiny valid MNIST in torchvision's layout, damaged per case

A damaged checkpoint is not an error: the run resumes from the previous checkpoint (or from
scratch) after ONE warning line that names the file; those cases say ``recovers=True``.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: Tiny runs: the embedded digits, 100 examples, one epoch, no per-layer statistics (~0.2 s a run).
TRAIN = ["--dataset", "digits", "--epochs", "1", "--set", "subset=100", "--set", "grad_stats=false",
         "--set", "model_args={hidden: [16]}", "--set", "save_every_s=0"]
EXPERIMENT = """\
experiment: tiny
base: {dataset: digits, epochs: 1, subset: 100, grad_stats: false, model_args: {hidden: [16]}}
schedules:
  standard: {name: standard}
"""


@dataclass
class Case:
    id: str
    what: str  # what is wrong, in words
    fragment: str  # must appear in the one line
    cli: list[str] | None = None  # freezelab's arguments ({ws} is the workspace)
    api: Callable[[Path], Any] | None = None  # or a Python call on the workspace
    error: type[Exception] | None = None  # the API's documented exception class
    setup: Callable[[Path], None] | None = None  # prepares the workspace for this case
    env: dict[str, str] = field(default_factory=dict)  # {ws} allowed
    unwritable: str | None = None  # a path (with {ws}) under which every write fails as on a read-only mount
    recovers: bool = False  # exit 0 after one warning line (a damaged checkpoint)


def train(*args: str, out: str = "{out}") -> list[str]:
    """``freezelab train`` of a tiny run; ``{out}`` is a fresh folder per case."""
    return ["train", "--out", out, *TRAIN, *args]


# -- workspace helpers ---------------------------------------------------------------------------
def write(rel: str, text: str | bytes) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def copy_interrupted(name: str, damage: Callable[[Path], None] | None = None, file: str = "checkpoint.pt"):
    def setup(ws: Path) -> None:
        shutil.copytree(ws / "interrupted", ws / name)
        if damage:
            damage(ws / name / file)

    return setup


def _idx(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz")


def fake_mnist(name: str, file: str, damage: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """A small valid MNIST under ``{ws}/<name>/MNIST/raw`` with one file damaged."""

    def setup(ws: Path) -> None:
        raw = ws / name / "MNIST" / "raw"
        raw.mkdir(parents=True)
        rng = np.random.default_rng(0)
        files = {
            MNIST_FILES[0]: _idx(rng.integers(0, 255, (40, 28, 28)), 2051),
            MNIST_FILES[1]: _idx(rng.integers(0, 10, 40), 2049),
            MNIST_FILES[2]: _idx(rng.integers(0, 255, (20, 28, 28)), 2051),
            MNIST_FILES[3]: _idx(rng.integers(0, 10, 20), 2049),
        }
        files[file] = damage(files[file])
        for filename, data in files.items():
            (raw / filename).write_bytes(data)

    return setup


def garble_middle(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 16]) + data[mid + 16 :]


def truncate_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def not_gzip(_data: bytes) -> bytes:
    return b"this is not a gzip file at all\n" * 10


def short_idx(data: bytes) -> bytes:  # a valid gzip of an IDX file that lost its tail
    raw = gzip.decompress(data)
    return gzip.compress(raw[: len(raw) - 100])


def wrong_magic(data: bytes) -> bytes:
    raw = gzip.decompress(data)
    return gzip.compress((1234).to_bytes(4, "big") + raw[4:])


def garble_checkpoint_tensor(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate_file(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def empty_file(path: Path) -> None:
    path.write_bytes(b"")


# -- API calls -----------------------------------------------------------------------------------
def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def _freezer(schedule: str = "alternate", optimizer_of: nn.Module | None = None, **kw: Any):
    from freezelab import Freezer, groups, parse_schedule

    net = _net()
    opt = torch.optim.SGD((optimizer_of or net).parameters(), lr=0.1)
    return Freezer(net, groups.depth(net, 2), parse_schedule(schedule), opt, **kw)


def _all_frozen(_ws: Path) -> None:
    from freezelab.schedules import Clock

    _freezer("freeze:groups=[first,second]").step(Clock.at(0, steps_per_epoch=10, epochs=1))


def _negative_step(_ws: Path) -> None:
    from freezelab.schedules import Clock

    _freezer().step(Clock.at(-1, steps_per_epoch=10, epochs=1))


def _api_train(config: dict[str, Any], out: str | None = None):
    def call(ws: Path) -> None:
        from freezelab.run import train as train_run

        base = {"dataset": "digits", "epochs": 1, "subset": 100, "grad_stats": False, "model_args": {"hidden": [16]}}
        train_run({**base, **config}, None if out is None else ws / out, progress=False)

    return call


def _decode(damage: Callable[[Path], None]):
    def call(ws: Path) -> None:
        from freezelab.run import record

        path = ws / "api_checkpoint.pt"
        shutil.copy(ws / "interrupted" / "checkpoint.pt", path)
        damage(path)
        record.decode_checkpoint(path.read_bytes(), path)

    return call


def _read_summary(ws: Path) -> None:
    from freezelab.run import record

    folder = ws / "api_summary"
    shutil.copytree(ws / "finished", folder)
    (folder / "summary.json").write_text('{"final_val_acc": 0.9,')
    record.read_summary(folder)


def _errors() -> dict[str, type[Exception]]:
    from freezelab import GroupError, ScheduleError
    from freezelab.freezer import FreezerError
    from freezelab.config import ConfigError
    from freezelab.run.record import CheckpointError, RunFolderError
    from freezelab.study import ExperimentError

    return {"config": ConfigError, "group": GroupError, "schedule": ScheduleError, "freezer": FreezerError,
            "folder": RunFolderError, "checkpoint": CheckpointError, "experiment": ExperimentError}


def api(id: str, what: str, fragment: str, call: Callable[[Path], Any], error: str,
        setup: Callable[[Path], None] | None = None) -> Case:
    return Case(id, what, fragment, api=call, error=_errors()[error], setup=setup)


def _load_experiment(text: str):
    def call(ws: Path) -> None:
        from freezelab.study import load_experiment

        path = ws / "api_experiment.yaml"
        path.write_text(text)
        load_experiment(path)

    return call


# -- the table -------------------------------------------------------------------------------------
CASES: list[Case] = [
    # malformed or wrong-typed config
    Case("epochs-zero", "zero epochs", "epochs must be a positive integer", train("--epochs", "0")),
    Case("epochs-text", "epochs is text", "epochs must be an integer", train("--set", "epochs=abc")),
    Case("batch-negative", "negative batch size", "batch_size must be a positive integer", train("--batch-size", "-1")),
    Case("lr-negative", "negative learning rate", "lr must be a positive number", train("--lr", "-1")),
    Case("lr-text", "lr is text", "lr must be a number, got 'fast'", train("--set", "lr=fast")),
    Case("seed-float", "fractional seed", "seed must be an integer", train("--set", "seed=1.5")),
    Case("target-acc", "target accuracy above 1", "target_acc must be a fraction", train("--set", "target_acc=2")),
    Case("fast-unknown", "unknown fast mode", "fast must be auto, off or graph", train("--set", "fast=maybe")),
    Case("merge-lora-unknown", "unknown LoRA merge mode", "merge_frozen_lora must be auto, on or off",
         train("--set", "merge_frozen_lora=always")),
    Case("merge-lora-on-mlp", "merging asked of a model without LoRA", "merge_frozen_lora: on cannot be used here: the model has no peft LoRA layer",
         train("--set", "merge_frozen_lora=on")),
    Case("compile-bool", "compile: yes (YAML 1.1's true; read as the word)", "compile must be auto or off, got 'yes'", train("--set", "compile=yes")),
    Case("save-every", "negative checkpoint interval", "save_every_s must be a number of seconds >= 0",
         train("--set", "save_every_s=-1")),
    Case("subset-zero", "empty subset", "subset must be >= 1", train("--set", "subset=0")),
    Case("device", "unknown device", "device must be auto, cpu, cuda or cuda:N", train("--device", "tpu")),
    Case("weight-decay-text", "weight decay is text", "weight_decay must be a number or null",
         train("--set", "weight_decay=abc")),
    Case("weight-decay-negative", "negative weight decay", "weight_decay must be >= 0", train("--set", "weight_decay=-1")),
    Case("momentum", "momentum of 1.5", "momentum must be in [0, 1)", train("--set", "momentum=1.5")),
    Case("log-steps", "log_steps: maybe", "log_steps must be true or false", train("--set", "log_steps=maybe")),
    Case("data-root-number", "data_root is a number", "data_root must be a string or null", train("--set", "data_root=5")),
    Case("schedule-number", "schedule is a number", "schedule must be a mapping", train("--set", "schedule=5")),
    Case("groups-list", "groups is a list", "groups must be a mapping", train("--set", "groups=[a]")),
    Case("model-args-number", "model_args is a number", "model_args must be a mapping", train("--set", "model_args=5")),
    Case("unknown-option", "a typo in an option", "did you mean 'lr'", train("--set", "lrr=0.1")),
    Case("set-no-equals", "--set without key=value", "--set expects key=value", train("--set", "lr")),
    Case("set-bad-yaml", "--set value with an open bracket", "cannot read", train("--set", "model_args={hidden: [")),
    Case("policy", "unknown optimizer policy", "policy 'sometimes' is unknown", train("--policy", "sometimes")),
    Case("bn-stats", "unknown bn_stats", "bn_stats 'maybe' is unknown", train("--set", "bn_stats=maybe")),
    Case("model", "unknown model", "model 'resnet9000' is unknown", train("--model", "resnet9000")),
    Case("activation", "unknown activation", "activation 'swish' is unknown", train("--activation", "swish")),
    Case("fixed-activation", "activation for a model with a fixed one", "has a fixed activation",
         train("--model", "seed001_mlp", "--activation", "tanh", "--set", "model_args={}")),
    Case("optimizer", "unknown optimizer", "optimizer 'lion' is unknown", train("--optimizer", "lion")),
    Case("lr-schedule", "unknown LR schedule", "lr_schedule 'wobbly' is unknown", train("--lr-schedule", "wobbly")),
    Case("dataset", "unknown dataset", "dataset 'imagenet' is unknown", train("--dataset", "imagenet")),
    Case("recipe", "unknown split recipe", "recipe 'nope' is unknown for digits", train("--recipe", "nope")),
    Case("model-args-typo", "model_args typo (TypeError before)", "takes no option 'hiden' (did you mean 'hidden'?)",
         train("--set", "model_args={hiden: [32]}")),
    Case("model-args-negative", "negative layer width (RuntimeError before)", "hidden must be a list of layer widths >= 1",
         train("--set", "model_args={hidden: [-5]}")),
    Case("model-args-int", "hidden is one number", "hidden must be a list of layer widths", train("--set", "model_args={hidden: 32}")),
    Case("model-args-norm", "unknown norm", "unknown norm 'foo'", train("--set", "model_args={norm: foo}")),
    Case("model-args-dropout", "dropout of 1.5", "dropout must be in [0, 1)", train("--set", "model_args={dropout: 1.5}")),
    Case("config-missing", "--config file does not exist", "does not exist", train("--config", "{ws}/none.yaml")),
    Case("config-bad-yaml", "--config file with an open bracket", "is not valid YAML at line",
         train("--config", "{ws}/bad.yaml"), setup=write("bad.yaml", "epochs: [2\n")),
    Case("config-list", "--config file is a list", "must be a mapping of run options",
         train("--config", "{ws}/list.yaml"), setup=write("list.yaml", "- epochs\n")),
    Case("config-experiment", "--config given an experiment file", "is an experiment file", train("--config", "{ws}/tiny.yaml")),
    # impossible groups or schedules
    Case("all-frozen", "a schedule freezing every group", "leaves nothing in the model trainable",
         train("--schedule", "freeze:groups=[first,second]")),
    Case("schedule-unknown", "unknown schedule", "unknown schedule 'alternating'", train("--schedule", "alternating")),
    Case("schedule-unit", "unknown schedule unit", "unit must be one of ['batch', 'epoch']",
         train("--schedule", "alternate:unit=fortnight")),
    Case("schedule-every", "alternate every 0", "every must be a positive integer", train("--schedule", "alternate:every=0")),
    Case("schedule-group", "a schedule naming a group that does not exist", "not schedulable groups",
         train("--schedule", "freeze:groups=[third]")),
    Case("groups-builder", "unknown group builder", "unknown group builder 'magic'", train("--set", "groups={by: magic}")),
    Case("groups-too-many", "more blocks than layers", "into 9 blocks", train("--set", "groups={by: depth, blocks: 9}")),
    Case("groups-blocks-text", "blocks given as a string", "blocks must be a whole number",
         train("--set", "groups={by: depth, blocks: '2'}")),
    Case("groups-pattern", "a pattern matching nothing", "matches no parameter",
         train("--set", "groups={by: pattern, patterns: {a: 'nomatch.*'}}")),
    # missing, truncated or garbled data
    Case("data-missing", "MNIST asked for where there is none", "dataset 'mnist' not found",
         train("--dataset", "mnist", "--data-root", "{ws}/nodata")),
    Case("data-env-missing", "FREEZELAB_DATA pointing at an empty folder", "set FREEZELAB_DATA",
         train("--dataset", "mnist"), env={"FREEZELAB_DATA": "{ws}/nodata"}),
    Case("data-garbled-gz", "a .gz data file with garbled bytes (BadGzipFile before)", "is not a readable gzip file",
         train("--dataset", "mnist"), setup=fake_mnist("d1", MNIST_FILES[0], garble_middle), env={"FREEZELAB_DATA": "{ws}/d1"}),
    Case("data-truncated-gz", "a truncated .gz data file ('Aborted.' before)", "is not a readable gzip file",
         train("--dataset", "mnist"), setup=fake_mnist("d2", MNIST_FILES[3], truncate_half), env={"FREEZELAB_DATA": "{ws}/d2"}),
    Case("data-not-gzip", "a .gz that is not gzip", "is not a readable gzip file",
         train("--dataset", "mnist"), setup=fake_mnist("d3", MNIST_FILES[1], not_gzip), env={"FREEZELAB_DATA": "{ws}/d3"}),
    Case("data-short-idx", "an IDX file missing its tail", "the file is truncated or corrupt",
         train("--dataset", "mnist"), setup=fake_mnist("d4", MNIST_FILES[2], short_idx), env={"FREEZELAB_DATA": "{ws}/d4"}),
    Case("data-magic", "an IDX file of the wrong kind", "IDX magic 1234",
         train("--dataset", "mnist"), setup=fake_mnist("d5", MNIST_FILES[0], wrong_magic), env={"FREEZELAB_DATA": "{ws}/d5"}),
    # empty, truncated or garbled checkpoints: the run recovers, with one warning line
    Case("ckpt-empty", "an empty checkpoint ('Aborted.' before)", "checkpoint.pt is empty",
         train("--epochs", "3", out="{ws}/c1"), setup=copy_interrupted("c1", empty_file), recovers=True),
    Case("ckpt-truncated", "a truncated checkpoint (miniz traceback before)", "fails its SHA-256 check",
         train("--epochs", "3", out="{ws}/c2"), setup=copy_interrupted("c2", truncate_file), recovers=True),
    Case("ckpt-garbled", "a garbled byte inside a tensor (loaded silently before)", "fails its SHA-256 check",
         train("--epochs", "3", out="{ws}/c3"), setup=copy_interrupted("c3", garble_checkpoint_tensor), recovers=True),
    Case("ckpt-foreign", "a checkpoint written by something else", "is not a freezelab checkpoint",
         train("--epochs", "3", out="{ws}/c4"), setup=copy_interrupted("c4", lambda p: p.write_bytes(b"PK\x03\x04 not ours")), recovers=True),
    Case("table-garbled", "an interrupted run whose epochs table is garbled", "restarting the run from scratch",
         train("--epochs", "3", out="{ws}/c5"), setup=copy_interrupted("c5", lambda p: p.write_bytes(b"PAR1 garbled"), "epochs.parquet"), recovers=True),
    # unwritable or wrong-type output paths
    Case("out-is-file", "--out names an existing file (FileExistsError before)", "is a file, not a",
         train(out="{ws}/afile"), setup=write("afile", "x")),
    Case("out-under-file", "--out below a file", "afile2 is a file, not a folder", train(out="{ws}/afile2/run"),
         setup=write("afile2", "x")),
    Case("out-read-only", "--out in a read-only folder (traceback before)", "choose a writable output folder",
         train(out="{ws}/ro/run"), unwritable="{ws}/ro"),
    Case("out-bad-config", "--out folder whose config.yaml is malformed (traceback before)", "config.yaml is not valid YAML",
         train(out="{ws}/o1"), setup=write("o1/config.yaml", "epochs: [\n")),
    Case("out-foreign-config", "--out folder holding another program's config.yaml", "is not a freezelab run config",
         train(out="{ws}/o2"), setup=write("o2/config.yaml", "name: my-webapp\nport: 8080\n")),
    Case("out-list-config", "--out folder whose config.yaml is a list", "is not a run config", train(out="{ws}/o3"),
         setup=write("o3/config.yaml", "- 1\n- 2\n")),
    Case("runs-dir-file", "run --runs-dir names a file ('N of N failed, the others are saved' before)",
         "is a file, not a folder", ["run", "{ws}/tiny.yaml", "--runs-dir", "{ws}/afile3"], setup=write("afile3", "x")),
    Case("runs-dir-read-only", "run --runs-dir read-only", "choose a writable output folder",
         ["run", "{ws}/tiny.yaml", "--runs-dir", "{ws}/ro2"], unwritable="{ws}/ro2"),
    Case("run-folder-file", "a file where a run's folder goes", "is a file, not a folder",
         ["run", "{ws}/tiny.yaml", "--runs-dir", "{ws}/r2"], setup=write("r2/tiny/standard", "x")),
    Case("report-out-file", "report --out names a file", "is a file, not a folder",
         ["report", "{ws}/runs", "--out", "{ws}/afile4"], setup=write("afile4", "x")),
    Case("report-read-only", "report into a read-only folder (traceback before)", "choose a writable output folder",
         ["report", "{ws}/runs", "--out", "{ws}/ro3/report"], unwritable="{ws}/ro3"),
    Case("report-missing", "report on a folder that does not exist", "does not exist", ["report", "{ws}/nothing"]),
    # changed config on resume
    Case("changed-finished", "a finished run asked again with other epochs", "holds a run with epochs=1",
         train("--epochs", "2", out="{ws}/finished")),
    Case("changed-interrupted", "an interrupted run resumed with another lr", "holds a run with lr=",
         train("--epochs", "3", "--lr", "0.5", out="{ws}/interrupted")),
    Case("changed-experiment", "an experiment rerun with another lr", "holds a run with lr=",
         ["run", "{ws}/tiny.yaml", "--runs-dir", "{ws}/runs", "--set", "lr=0.5"]),
    Case("interrupted-bad-config", "an interrupted run whose config.yaml was damaged", "config.yaml is not valid YAML",
         train("--epochs", "3", out="{ws}/i2"), setup=copy_interrupted("i2", lambda p: p.write_text("epochs: [3\n"), "config.yaml")),
    # experiment files
    Case("exp-missing", "run of a file that does not exist", "does not exist", ["run", "{ws}/none.yaml"]),
    Case("exp-bad-yaml", "experiment file with an open bracket", "is not valid YAML", ["run", "{ws}/e1.yaml"],
         setup=write("e1.yaml", "seeds: [1\n")),
    Case("exp-unknown-key", "experiment file with a typo", "unknown key 'seed'", ["run", "{ws}/e2.yaml"],
         setup=write("e2.yaml", "experiment: e\nseed: 3\n")),
    Case("exp-seeds-twice", "a seed listed twice", "lists a seed twice", ["run", "{ws}/e3.yaml"],
         setup=write("e3.yaml", "experiment: e\nseeds: [1, 1]\n")),
    Case("exp-grid", "a grid value that is not a list", "grid.lr must be a non-empty list", ["run", "{ws}/e4.yaml"],
         setup=write("e4.yaml", "experiment: e\ngrid: {lr: 0.1}\n")),
    Case("exp-base-seed", "a seed in base", "base.seed is set by the experiment itself", ["run", "{ws}/e5.yaml"],
         setup=write("e5.yaml", "experiment: e\nbase: {seed: 1}\n")),
    Case("exp-variant", "a variant format naming no grid key", "which is not a grid key", ["run", "{ws}/e6.yaml"],
         setup=write("e6.yaml", "experiment: e\ngrid: {lr: [0.1, 0.2]}\nvariant: '{schedule}_{optimizer}'\n")),
    Case("exp-bad-run", "an experiment whose runs have a bad option", "tiny2/standard: epochs must be a positive integer",
         ["run", "{ws}/e7.yaml"], setup=write("e7.yaml", "experiment: tiny2\nbase: {epochs: 0}\n")),
    # the Python API
    api("api-depth-text", "depth(blocks='2')", "blocks must be a whole number >= 1, got '2'",
        lambda ws: __import__("freezelab").groups.depth(_net(), blocks="2"), "group"),
    api("api-clock-zero", "Clock.at(5, steps_per_epoch=0, ...) (ZeroDivisionError before)", "steps_per_epoch >= 1",
        lambda ws: __import__("freezelab").schedules.Clock.at(5, steps_per_epoch=0, epochs=3), "schedule"),
    api("api-clock-negative", "a negative step (accepted before)", "count from 0", _negative_step, "schedule"),
    api("api-all-frozen", "an all-frozen Freezer (failed at backward() before)", "leaves nothing in the model trainable",
        _all_frozen, "freezer"),
    api("api-other-optimizer", "a Freezer given another model's optimizer", "are not in the optimizer",
        lambda ws: _freezer(optimizer_of=_net()), "freezer"),
    api("api-policy", "an unknown policy", "unknown optimizer policy 'sometimes'",
        lambda ws: _freezer(policy="sometimes"), "freezer"),
    api("api-schedule", "an unknown schedule name", "unknown schedule 'alternating'",
        lambda ws: __import__("freezelab").parse_schedule("alternating"), "schedule"),
    api("api-config", "train() with an unknown option", "unknown run option 'lrr'", _api_train({"lrr": 0.1}), "config"),
    api("api-config-type", "train() with text epochs", "epochs must be an integer", _api_train({"epochs": "3"}), "config"),
    api("api-out-file", "train() into a file", "is a file, not a folder", _api_train({}, "afile5/run"), "folder",
        setup=write("afile5", "x")),
    api("api-ckpt-empty", "decode an empty checkpoint", "is empty", _decode(empty_file), "checkpoint"),
    api("api-ckpt-truncated", "decode a truncated checkpoint", "fails its SHA-256 check", _decode(truncate_file), "checkpoint"),
    api("api-summary", "a corrupt summary.json (no file name before)", "api_summary/summary.json is not valid JSON",
        _read_summary, "folder"),
    api("api-experiment", "an experiment with seeds: 0", "seeds must be a positive count", _load_experiment("seeds: []\n"),
        "experiment"),
]
