"""Building a run: a :class:`~freezelab.config.RunConfig` in, everything the run is made of out.

This is where a config meets the registries: :func:`check_config` checks every name it uses
(schedule, policy, model, optimizer, dataset) with one clear line per mistake, and
:func:`build_run` builds the data, model, groups, schedule (once), optimizer, freezer and
execution plan. Fair comparisons come from the seed alone: the model's initial weights, the
data split and the batch order depend only on ``config.seed``, never on the schedule.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import groups as groups_mod
from ..config import ConfigError, RunConfig
from ..data import DatasetSplits, IndexBatches, list_datasets, list_recipes, load_dataset, resize_batch
from ..freezer import BN_STATS, POLICIES, Freezer
from ..models import ACTIVATIONS, build_model, has_dropout, list_models, model_info, model_options
from ..optim import build_optimizer, list_lr_schedules, list_optimizers, lr_schedule, param_groups_by_group
from ..pretrained import prepare, split_model_args
from ..schedules import SCHEDULES, Clock, Schedule, ScheduleError, schedule_from_dict
from . import ddp as ddp_mod
from .inputs import Inputs
from .memory import PeakMemory
from .plan import ExecutionPlan, fused_optimizer, lora_merge_choice, plan_run, resolve_device
from .prefix_cache import check_request

__all__ = ["Run", "SharedData", "build_run", "check_config", "build_schedule", "data_request", "groups_spec",
           "input_size"]

#: The default groups of a LoRA run: seed 002's adapters, norms and head (the base is frozen).
LORA_GROUPS = {"by": "kind", "kinds": ["lora", "norm", "head"]}


def build_schedule(cfg: RunConfig) -> Schedule:
    """The run's schedule; random ones (block_cycle, random_layers) without their own seed use the run's.

    Built once per distinct spec in a process: ``freezelab run`` checks every run of a grid
    before training any, and the build of each run then gets that same (immutable) schedule.
    """
    return _schedule(json.dumps(_with_run_seed(cfg.schedule, cfg.seed), sort_keys=True))


@functools.lru_cache(maxsize=1024)
def _schedule(spec: str) -> Schedule:
    try:
        return schedule_from_dict(json.loads(spec))
    except ScheduleError as e:
        raise ConfigError(f"schedule: {e}") from None


def check_config(cfg: RunConfig) -> Schedule:
    """Check every name ``cfg`` looks up in a registry; return its schedule (built here, once).

    Everything that can be checked without building the model or loading data; the messages
    are one line that names the option and the choices.
    """

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(cfg.policy in POLICIES, f"policy {cfg.policy!r} is unknown; choose from {list(POLICIES)}")
    need(cfg.bn_stats in BN_STATS, f"bn_stats {cfg.bn_stats!r} is unknown; choose from {list(BN_STATS)}")
    schedule = build_schedule(cfg)
    need(cfg.model in list_models(), f"model {cfg.model!r} is unknown; choose from {sorted(list_models())}")
    need(cfg.activation in ACTIVATIONS, f"activation {cfg.activation!r} is unknown; choose from {sorted(ACTIVATIONS)}")
    need(cfg.optimizer in list_optimizers(), f"optimizer {cfg.optimizer!r} is unknown; choose from {sorted(list_optimizers())}")
    need(
        cfg.lr_schedule in list_lr_schedules(),
        f"lr_schedule {cfg.lr_schedule!r} is unknown; choose from {sorted(list_lr_schedules())}",
    )
    need(cfg.dataset in list_datasets(), f"dataset {cfg.dataset!r} is unknown; choose from {sorted(list_datasets())}")
    recipes = list(list_recipes(cfg.dataset))
    need(cfg.recipe is None or cfg.recipe in recipes, f"recipe {cfg.recipe!r} is unknown for {cfg.dataset}; choose from {recipes}")
    builder_args, pretrained = split_model_args(cfg.model_args)
    _check_model_args(cfg.model, builder_args)
    pretrained.check()  # a bad LoRA spec or a missing checkpoint file
    need(not any(sub.adapts for sub in _nested(schedule)),
         f"schedule {schedule.name}: an adaptive schedule (autofreeze) decides after each epoch and must be the "
         "run's top-level schedule, not nested in another")
    need(not schedule.adapts or cfg.grad_stats,
         f"schedule {schedule.name} decides from the per-epoch gradient statistics; set grad_stats: true")
    return schedule


def _check_model_args(model: str, builder_args: dict[str, Any]) -> None:
    """``model_args`` name options the model's builder takes (a typo must not reach it as a TypeError)."""
    options = set(model_options(model)) - {"in_features", "in_channels", "num_classes"}
    for key in builder_args:
        if key not in options:
            hint = difflib.get_close_matches(str(key), sorted(options), n=1)
            raise ConfigError(f"model_args: model {model!r} takes no option {key!r}"
                              f"{f' (did you mean {hint[0]!r}?)' if hint else ''}; its options: {sorted(options)}")


def groups_spec(cfg: RunConfig) -> dict[str, Any]:
    """The run's groups: ``cfg.groups``, or when it is unset the model's default from the registry.

    A LoRA run's default is :data:`LORA_GROUPS`: wrapping freezes the base, which the model's own
    default would have split. The resolved spec is what the run's folder records.
    """
    if cfg.groups is not None:
        return cfg.groups
    if split_model_args(cfg.model_args)[1].lora is not None:
        return json.loads(json.dumps(LORA_GROUPS))
    return model_info(cfg.model).groups


def input_size(cfg: RunConfig) -> int | None:
    """The image side the run's model takes (``None``: the data's own); the run resizes batches to it.

    The registry's ``input_size``, unless the builder takes an ``img_size`` and ``model_args`` sets one.
    """
    if "img_size" in cfg.model_args and "img_size" in model_options(cfg.model):
        return int(cfg.model_args["img_size"])
    return model_info(cfg.model).input_size


@dataclass
class Run:
    """Everything a run is made of, built deterministically from the config."""

    config: RunConfig
    plan: ExecutionPlan
    device: torch.device
    data: DatasetSplits
    model: nn.Module
    groups: groups_mod.GroupSet
    schedule: Schedule
    freezer: Freezer
    batches: IndexBatches
    lr_at: Any
    inputs: Inputs
    #: Whether the eager stepper trains on cached outputs of the frozen prefix (``cache_frozen_prefix``).
    cache_prefix: bool = False
    ddp: ddp_mod.RunDDP | None = None  # under torchrun: this rank's batch share and the DDP forward pass
    memory: PeakMemory = dataclasses.field(default_factory=PeakMemory)  # peak CUDA memory per trainable set

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch


class SharedData:
    """Datasets loaded once for all the runs of a process that ask for the same (:func:`data_request`)."""

    def __init__(self) -> None:
        self._loaded: dict[tuple, DatasetSplits] = {}

    def load(self, request: dict[str, Any]) -> DatasetSplits:
        key = tuple(sorted((k, str(v)) for k, v in request.items()))
        if key not in self._loaded:
            self._loaded[key] = load_dataset(**request)
        return self._loaded[key]


def build_run(config: RunConfig | dict[str, Any], data: DatasetSplits | SharedData | None = None) -> Run:
    """Data, model, groups, schedule, optimizer, freezer and plan for ``config``: identical for identical seeds.

    Under torchrun (a process group of several processes is up) the run is built on every rank
    alike, on the rank's device, with a :class:`~freezelab.run.ddp.RunDDP` for its DDP side.

    ``data``: the run's data if the caller has it, or a :class:`SharedData` to load it from
    (runs of equal data requests then share one copy on the device).
    """
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    schedule = check_config(cfg)
    cfg = dataclasses.replace(cfg, groups=groups_spec(cfg))  # the folder records the groups used
    device = ddp_mod.rank_device(resolve_device(cfg.device))
    if data is None or isinstance(data, SharedData):
        request = data_request(cfg, device)
        data = data.load(request) if data is not None else load_dataset(**request)
    images = data.train.x.ndim == 4
    if cfg.augment != "none" and not images:
        raise ConfigError(f"augment: {cfg.augment} needs a model that takes images; model {cfg.model!r} takes flat "
                          "vectors (use augment: none, or an image model such as small_cnn)")
    size = input_size(cfg)
    # Groups and the head are found by tracing a batch as the model sees it (a ViT-S/16 refuses 32 px).
    example = resize_batch(data.train.x[:2], size) if size is not None and images else data.train.x[:2]
    model = _build_model(cfg, data, example.cpu()).to(device)
    gs = groups_mod.from_spec(model, cfg.groups, example_input=example)
    unknown = [g for g in cfg.interference or () if g not in gs.names]
    if unknown:
        raise ConfigError(f"interference names group {unknown[0]!r}, which the model's groups do not have; choose two of {list(gs.names)}")
    # A schedule with per-group learning rates (FreezeOut's annealing) needs a param group per group.
    params = param_groups_by_group(model, gs) if schedule.scales_lr else model.parameters()
    optimizer = build_optimizer(cfg.optimizer, params, cfg.lr, weight_decay=cfg.weight_decay,
                                momentum=cfg.momentum, fused=fused_optimizer(cfg, device) or None)
    merge_lora = lora_merge_choice(cfg, model)
    freezer = Freezer(model, gs, schedule, optimizer, policy=cfg.policy, bn_stats=cfg.bn_stats, merge_lora=merge_lora[0])
    batches = IndexBatches(len(data.train.y), cfg.batch_size, seed=cfg.seed, device=device)
    spe = batches.steps_per_epoch
    freezer.check_trains_something(Clock.at(0, spe, cfg.epochs))  # before the run folder is written
    lr_at = lr_schedule(cfg.lr_schedule, cfg.lr, epochs=cfg.epochs, steps_per_epoch=spe)
    plan = plan_run(cfg, device, dropout=has_dropout(model), optimizer=optimizer, steps_per_epoch=spe,
                    train_size=len(data.train.y), scales_lr=freezer.scales_lr, images=images,
                    world_size=ddp_mod.world_size(), merge_lora=merge_lora,
                    trainable_sets=lambda enough: _trainable_sets(freezer, spe, cfg.epochs, enough))
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)  # in place: the optimizer keeps the same tensors
    inputs = Inputs(augment=cfg.augment, seed=cfg.seed, size=size, channels_last=plan.channels_last,
                    bf16=plan.precision == "bf16", device_type=device.type)
    ddp = ddp_mod.RunDDP(model, freezer, batches) if ddp_mod.active() else None
    if ddp is not None and cfg.cache_frozen_prefix == "on":
        raise ConfigError("cache_frozen_prefix: on does not work under DDP (each rank would cache its own shard); "
                          "use cache_frozen_prefix: auto or off")
    cache = ddp is None and check_request(cfg.cache_frozen_prefix, model, cfg.augment, cfg.bn_stats, plan.stepper)
    return Run(cfg, plan, device, data, model, gs, schedule, freezer, batches, lr_at, inputs, cache, ddp, PeakMemory(device))


def data_request(cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """The :func:`~freezelab.data.load_dataset` arguments of a run: runs with equal ones can share the data."""
    return {"name": cfg.dataset, "root": cfg.data_root, "recipe": cfg.recipe, "seed": cfg.seed,
            "flatten": not model_info(cfg.model).images, "subset": cfg.subset, "download": cfg.download, "device": device}


def _build_model(cfg: RunConfig, data: DatasetSplits, example: torch.Tensor) -> nn.Module:
    """Build the model under a generator seeded only by ``cfg.seed``: identical starts.

    Then load ``model_args.checkpoint`` and wrap in ``model_args.lora`` (:mod:`freezelab.pretrained`),
    under the same seed, so re-initialised heads and LoRA weights are identical for identical seeds;
    ``example`` (a CPU batch the model accepts) lets them find the head by tracing.
    """
    shape = tuple(data.input_shape)
    builder_args, pretrained = split_model_args(cfg.model_args)
    kwargs: dict[str, Any] = {"num_classes": data.num_classes, **builder_args}
    if model_info(cfg.model).images:
        kwargs.setdefault("in_channels", shape[0])
    else:
        kwargs.setdefault("in_features", math.prod(shape))
        if "activation" in model_options(cfg.model):
            kwargs.setdefault("activation", cfg.activation)
        elif cfg.activation != "relu":
            raise ConfigError(f"model {cfg.model!r} has a fixed activation; use model 'mlp' to choose {cfg.activation!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        try:
            model = build_model(cfg.model, **kwargs)
        except ValueError as e:  # a builder's own check of its arguments: the config's model_args
            raise ConfigError(f"model_args {cfg.model_args} for model {cfg.model!r}: {e}") from None
        return prepare(model, pretrained, name=cfg.model, example_input=example)


def _nested(schedule: Schedule) -> list[Schedule]:
    """The schedules nested inside ``schedule`` (warmup's, chain's phases, intersect's parts), at any depth."""
    out = []
    for name in schedule.nested:
        value = getattr(schedule, name)
        for item in value if isinstance(value, tuple) else (value,):
            sub = item[0] if isinstance(item, tuple) else item
            out += [sub, *_nested(sub)]
    return out


def _trainable_sets(freezer: Freezer, spe: int, epochs: int, enough: int) -> int:
    """How many distinct trainable sets the run's schedule visits, counting up to ``enough``.

    Schedules are pure, so this costs a few milliseconds for thousands of steps.
    """
    seen: set[frozenset[str]] = set()
    for step in range(spe * epochs):
        seen.add(freezer.wanted(Clock.at(step, spe, epochs)))
        if len(seen) >= enough:
            break
    return len(seen)


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
