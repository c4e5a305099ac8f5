"""``RunConfig``: one typed, validated description of a training run.

Every field has a default beside the reason for it; unknown keys are errors (a typo in a YAML
file must not silently fall back to a default). The resolved config is written into every run
folder, and two runs are "the same run" exactly when their configs are equal.

>>> cfg = RunConfig.from_dict({"dataset": "digits", "schedule": {"name": "alternate", "unit": "batch"}})
>>> cfg.schedule_obj().describe()
'alternate first/second every batch, first trains first'
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .schedules import SCHEDULES, Schedule, ScheduleError, schedule_from_dict

__all__ = ["RunConfig", "ConfigError", "load_yaml"]


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where ``1e-3`` is a string; read it as the float everyone means."""


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


@dataclass
class RunConfig:
    # -- what to train on ----------------------------------------------------------------
    dataset: str = "digits"  # embedded default: needs no download
    recipe: str | None = None  # split recipe (None: the dataset's standard split)
    data_root: str | None = None  # None: $FREEZELAB_DATA, else the user cache dir
    download: bool = False  # fetch a missing dataset through torchvision (needs a network)
    subset: int | None = None  # keep the first N training examples (quick checks, CI)
    # -- the model and its groups ------------------------------------------------------------
    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"hidden": [256, 128]}
    activation: str = "relu"
    groups: dict[str, Any] = field(default_factory=lambda: {"by": "depth", "blocks": 2})
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
    fast: str = "auto"  # auto | off | graph: CUDA-graph steps per trainable set (GPU only)
    compile: str = "auto"  # auto | off: torch.compile the graph path's loss and optimizer update
    log_steps: bool = True  # per-step loss, trainable fraction and step time (cheap)
    grad_stats: bool = True  # per-layer gradient statistics each epoch on a probe batch
    target_acc: float | None = None  # time-to-accuracy target (fraction); None: 0.9 x best
    tensorboard: bool = False  # also write the per-epoch log as TensorBoard scalars (run_dir/tensorboard)
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

    def replace(self, **changes: Any) -> RunConfig:
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def schedule_obj(self) -> Schedule:
        """The schedule; random ones (block_cycle, random_layers) without their own seed use the run's."""
        try:
            return schedule_from_dict(_with_run_seed(self.schedule, self.seed))
        except ScheduleError as e:
            raise ConfigError(f"schedule: {e}") from None

    def validate(self) -> None:
        """Check everything that can be checked without building the model or loading data."""
        from .freezer import BN_STATS, POLICIES

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        def integer(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            need(integer(value) and value >= 1, f"{name} must be a positive integer, got {value!r}")
        need(integer(self.seed), f"seed must be an integer, got {self.seed!r}")
        need(isinstance(self.lr, (int, float)) and self.lr > 0, f"lr must be a positive number, got {self.lr!r}")
        need(
            self.target_acc is None or (isinstance(self.target_acc, (int, float)) and 0 < self.target_acc <= 1),
            f"target_acc is a fraction in (0, 1] or null, got {self.target_acc!r}",
        )
        need(self.policy in POLICIES, f"policy {self.policy!r} is unknown; choose from {list(POLICIES)}")
        need(self.bn_stats in BN_STATS, f"bn_stats {self.bn_stats!r} is unknown; choose from {list(BN_STATS)}")
        need(self.fast in ("auto", "off", "graph"), f"fast must be auto, off or graph, got {self.fast!r}")
        need(self.compile in ("auto", "off"), f"compile must be auto or off, got {self.compile!r}")
        need(self.subset is None or (integer(self.subset) and self.subset >= 1), f"subset must be >= 1 or null, got {self.subset!r}")
        need(
            isinstance(self.device, str) and re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", self.device) is not None,
            f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        need(isinstance(self.schedule, dict) and "name" in self.schedule, "schedule must be a mapping with a 'name'")
        need(isinstance(self.groups, dict), "groups must be a mapping such as {by: depth, blocks: 2}")
        self.schedule_obj()
        from .models import ACTIVATIONS, list_models
        from .optim import list_lr_schedules, list_optimizers

        need(self.model in list_models(), f"model {self.model!r} is unknown; choose from {sorted(list_models())}")
        need(self.activation in ACTIVATIONS, f"activation {self.activation!r} is unknown; choose from {sorted(ACTIVATIONS)}")
        need(self.optimizer in list_optimizers(), f"optimizer {self.optimizer!r} is unknown; choose from {sorted(list_optimizers())}")
        need(
            self.lr_schedule in list_lr_schedules(),
            f"lr_schedule {self.lr_schedule!r} is unknown; choose from {sorted(list_lr_schedules())}",
        )
        from .data import list_datasets

        need(self.dataset in list_datasets(), f"dataset {self.dataset!r} is unknown; choose from {sorted(list_datasets())}")


def _with_run_seed(spec: Any, seed: int) -> Any:
    """Give every schedule spec that takes a ``seed`` and names none the run's seed.

    Otherwise all seeds of an experiment would draw the same "random" layers, and the spread
    over seeds would miss the schedule's own randomness.
    """
    if isinstance(spec, list):
        return [_with_run_seed(v, seed) for v in spec]
    if not isinstance(spec, dict):
        return spec
    out = {k: _with_run_seed(v, seed) for k, v in spec.items()}
    cls = SCHEDULES.get(spec.get("name"))  # type: ignore[arg-type]
    if cls is not None and "seed" not in spec and any(f.name == "seed" for f in dataclasses.fields(cls)):
        out["seed"] = seed
    return out


def _closest(word: str, options: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, sorted(options), n=1)
    return match[0] if match else None
