"""``RunConfig``: one typed, validated description of a training run.

Every field has a default beside the reason for it; unknown keys are errors (a typo in a YAML
file must not silently fall back to a default). The resolved config is written into every run
folder, and two runs are "the same run" exactly when their configs are equal.

The config is plain data: it imports nothing else of freezelab. Whether its names exist in
the registries (schedules, policies, models, optimizers, datasets) is checked where a run is
built (:func:`freezelab.run.build.check_config`), with the same one-line errors.

>>> cfg = RunConfig.from_dict({"dataset": "digits", "schedule": {"name": "alternate", "unit": "batch"}})
>>> cfg.schedule["unit"], cfg.save_every_s
('batch', 20.0)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["RunConfig", "ConfigError", "load_yaml", "read_yaml_file"]


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where ``1e-3`` is a string; read it as the float everyone means."""


# YAML 1.1 also reads on/off/yes/no as booleans, so `--set fast=off` would arrive as False; here,
# as in YAML 1.2, only true/false are booleans and `off` stays the word the option lists.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that also reads ``1e-3`` as a number (config files, ``--set lr=1e-3``).

    >>> load_yaml("lr: 1e-3")
    {'lr': 0.001}
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    """A run configuration that cannot be run; the message names the key and the fix."""


def read_yaml_file(path: str | Path, error: type[ConfigError] = ConfigError) -> Any:
    """The YAML file at ``path``, or ``error`` with one line naming the line, column and problem.

    The caller checks that the file exists (each says what to do about a missing one).
    """
    path = Path(path)
    try:
        return load_yaml(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise error(f"{path} is not valid YAML{where}: {problem}; fix the file there") from None


@dataclass
class RunConfig:
    # -- what to train on ----------------------------------------------------------------
    dataset: str = "digits"  # embedded default: needs no download
    recipe: str | None = None  # split recipe (None: the dataset's standard split)
    data_root: str | None = None  # None: $FREEZELAB_DATA, else the user cache dir
    download: bool = False  # fetch a missing dataset through torchvision (needs a network)
    subset: int | None = None  # keep the first N training examples (quick checks, CI)
    augment: str = "none"  # none | crop_flip | flip: on the device, seeded by (seed, epoch, step)
    # -- the model and its groups ------------------------------------------------------------
    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"hidden": [256, 128]}
    activation: str = "relu"
    # None: the model's default groups from the registry (MLPs: {by: depth, blocks: 2}, the
    # seeds' halves); a LoRA run's default is {by: kind, kinds: [lora, norm, head]}.
    groups: dict[str, Any] | None = None
    # -- the schedule and how the optimizer follows it -----------------------------------------
    schedule: dict[str, Any] = field(default_factory=lambda: {"name": "standard"})
    policy: str = "keep"  # keep | recreate | remove | release
    bn_stats: str = "train"  # train | frozen: do frozen norm layers update running stats?
    # -- optimisation ------------------------------------------------------------------------------
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float | None = None  # None: the optimizer's own default (AdamW 0.01, others 0)
    momentum: float = 0.9  # used by sgd_momentum
    lr_schedule: str = "none"  # none | step | cosine | exponential | onecycle | warmup_cosine
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0  # model init, data order and dropout all derive from it
    # -- execution and logging -----------------------------------------------------------------------
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # CPU threads torch uses for this run (set around its epoch loop, then restored). Part of the
    # run's identity: a float32 sum split over 2 threads rounds differently than over 1, and the
    # same Fashion-MNIST MLP epoch ends with weights up to 0.043 apart. 1 is the default because
    # sweeps use the cores by running several runs at once (--jobs), and on a busy machine a
    # second thread made small-MLP epochs 12x slower, not faster (benchmarks/cpu_threads.py).
    # A large single CPU run may ask for more. On a GPU the kernels' results do not depend on it.
    threads: int = 1
    fast: str = "auto"  # auto | off | graph: CUDA-graph steps per trainable set (GPU only)
    compile: str = "auto"  # auto | off: torch.compile the graph path's loss and optimizer update
    # auto | on | off: compute a prefix frozen for the rest of the run once per example and train
    # the suffix on its outputs (run/prefix_cache.py); auto does so where that is exact (no
    # augmentation, dropout or train-mode batch norms, the eager stepper), on refuses where not.
    cache_frozen_prefix: str = "auto"
    # auto | on | off: while a peft LoRA layer's adapters are all frozen, run it as one product with
    # the adapters merged into the base weight, restored exactly when they thaw (lora_merge.py);
    # auto merges where that is exact (plain LoRA, no adapter dropout), on refuses where not.
    merge_frozen_lora: str = "auto"
    precision: str = "auto"  # auto | fp32 | bf16 (autocast); auto: bf16 for image models on CUDA
    channels_last: str = "auto"  # auto | on | off: NHWC layout for image models; auto: on for image models on CUDA
    log_steps: bool = True  # per-step loss, trainable fraction and step time (cheap)
    grad_stats: bool = True  # per-layer gradient statistics each epoch on a probe batch
    # Two group names, e.g. [lora, norm]: each epoch, how their steps interact on the probe batch
    # (grad_cosine between them, and the loss interaction on a held-out batch: one double backward).
    # None: grad_cosine compares the first two schedulable groups and nothing more is computed.
    interference: list[str] | None = None
    target_acc: float | None = None  # time-to-accuracy target (fraction); None: 0.9 x best
    tensorboard: bool = False  # also write the per-epoch log as TensorBoard scalars (run_dir/tensorboard)
    # Seconds between two checkpoints; the epochs tables are written with each, after the last
    # epoch, and when a run stops early. Saving after every epoch (0) costs about 10 ms a
    # run-epoch: 10 s of seed 004's 60-run GPU sweep, 78 s against 68 s
    # (benchmarks/results/sweep_seed004_*). A resume redoes at most this much training.
    save_every_s: float = 20.0
    # -- bookkeeping for experiments ---------------------------------------------------------------
    experiment: str = "run"
    variant: str = ""  # the grid cell's label without the seed (e.g. "alternate-epoch")

    # -------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            close = _closest(unknown[0], valid)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ConfigError(f"unknown run option {unknown[0]!r}{hint}; valid options: {sorted(valid)}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check types and ranges; names in registries are checked when the run is built."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        def integer(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            need(_has_type(value, str(f.type)), f"{f.name} must be {_TYPE_WORDS[str(f.type)]}, got {value!r}")
        for name in ("epochs", "batch_size", "threads"):
            value = getattr(self, name)
            need(integer(value) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        need(integer(self.seed), f"seed must be an integer, got {self.seed!r}")
        need(isinstance(self.lr, (int, float)) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}")
        need(
            self.target_acc is None or (isinstance(self.target_acc, (int, float)) and 0 < self.target_acc <= 1),
            f"target_acc must be a fraction in (0, 1] or null, got {self.target_acc!r}",
        )
        need(self.weight_decay is None or self.weight_decay >= 0, f"weight_decay must be >= 0 or null, got {self.weight_decay!r}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(self.fast in ("auto", "off", "graph"), f"fast must be auto, off or graph, got {self.fast!r}")
        need(self.compile in ("auto", "off"), f"compile must be auto or off, got {self.compile!r}")
        need(self.cache_frozen_prefix in ("auto", "on", "off"),
             f"cache_frozen_prefix must be auto, on or off, got {self.cache_frozen_prefix!r}")
        need(self.merge_frozen_lora in ("auto", "on", "off"),
             f"merge_frozen_lora must be auto, on or off, got {self.merge_frozen_lora!r}")
        need(self.augment in ("none", "crop_flip", "flip"), f"augment must be none, crop_flip or flip, got {self.augment!r}")
        need(self.precision in ("auto", "fp32", "bf16"), f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        need(self.channels_last in ("auto", "on", "off"), f"channels_last must be auto, on or off, got {self.channels_last!r}")
        need(
            isinstance(self.save_every_s, (int, float)) and not isinstance(self.save_every_s, bool) and self.save_every_s >= 0,
            f"save_every_s must be a number of seconds >= 0 (0: a checkpoint after every epoch), got {self.save_every_s!r}",
        )
        need(self.subset is None or (integer(self.subset) and self.subset >= 1), f"subset must be >= 1 or null, got {self.subset!r}")
        need(
            isinstance(self.device, str) and re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", self.device) is not None,
            f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        need(isinstance(self.schedule, dict) and "name" in self.schedule, "schedule must be a mapping with a 'name'")
        need(self.groups is None or isinstance(self.groups, dict),
             f"groups must be a mapping such as {{by: depth, blocks: 2}}, or null for the model's default; got {self.groups!r}")
        need(isinstance(self.model_args, dict), f"model_args must be a mapping such as {{hidden: [256, 128]}}, got {self.model_args!r}")
        pair = self.interference
        need(
            pair is None or (isinstance(pair, list) and len(pair) == 2 and all(isinstance(g, str) for g in pair) and pair[0] != pair[1]),
            f"interference names two different groups, e.g. [lora, norm], or is null; got {pair!r}",
        )
        need(pair is None or self.grad_stats, "interference is measured on the gradient probe: set grad_stats: true or interference: null")


#: How each field annotation reads in an error, and so which annotations a field may have.
_TYPE_WORDS = {
    "str": "a string", "str | None": "a string or null", "bool": "true or false", "int": "an integer",
    "int | None": "an integer or null", "float": "a number", "float | None": "a number or null",
    "dict[str, Any]": "a mapping such as {key: value}", "dict[str, Any] | None": "a mapping such as {key: value} or null",
    "list[str]": "a list of names", "list[str] | None": "a list of names or null",
}


def _has_type(value: Any, annotation: str) -> bool:
    """Whether ``value`` fits the field annotation (YAML gives bools for yes/no: never a number here)."""
    if value is None:
        return annotation.endswith("| None")
    base = annotation.removesuffix(" | None")
    if base == "dict[str, Any]":
        return isinstance(value, dict)
    if base == "list[str]":
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if isinstance(value, bool):
        return base == "bool"
    return {"str": isinstance(value, str), "bool": False, "int": isinstance(value, int),
            "float": isinstance(value, (int, float))}[base]


def _closest(word: str, options: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, sorted(options), n=1)
    return match[0] if match else None
