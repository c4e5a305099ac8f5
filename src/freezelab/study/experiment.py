"""Experiment files: one YAML file that expands into a fair grid of runs.

An experiment is ``schedules x grid x seeds``. Every run of a seed starts from the same
weights and sees the same batches, whatever its schedule, so differences between variants
are paired by seed. Example (the header shows how to launch it, as every shipped config does)::

    # freezelab run configs/seed001_mnist.yaml
    experiment: seed001_mnist
    seeds: 5                      # or an explicit list: [0, 1, 2, 3, 4]
    base:                         # RunConfig fields shared by every run
      dataset: mnist
      recipe: mnist10k_80_20
      model: seed001_mlp
      epochs: 20
    schedules:                    # variant label -> schedule
      standard: {name: standard}
      alternate-epoch: {name: alternate, unit: epoch}
      alternate-batch: "alternate:unit=batch"   # the shorthand of `freezelab train --schedule`
    grid:                         # optional: any RunConfig field -> values (cartesian product)
      optimizer: [sgd, adam]
    variant: "{schedule}_{optimizer}"   # optional label format (default: values joined by "_")
    baseline: standard_adam       # optional: the variant the report pairs every other one with

Without ``baseline`` the report pairs with the variant named, or scheduled, ``standard``; a grid
whose cells all use schedule ``standard`` needs it. The runner writes ``experiment.json`` (name,
baseline, variants, seeds) into the experiment's folder, so ``freezelab report`` knows the
baseline and which runs were expected.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig, read_yaml_file
from ..files import atomic_write
from ..run.build import check_config
from ..schedules import ScheduleError, parse_schedule

__all__ = ["Experiment", "load_experiment", "ExperimentError"]

_TOP_KEYS = {"experiment", "seeds", "base", "schedules", "grid", "variant", "description", "baseline"}
MANIFEST = "experiment.json"


class ExperimentError(ConfigError):
    """An experiment file that cannot be expanded; the message names the key or line."""


@dataclass
class Experiment:
    name: str
    seeds: list[int]
    base: dict[str, Any] = field(default_factory=dict)
    schedules: dict[str, dict[str, Any]] = field(default_factory=lambda: {"standard": {"name": "standard"}})
    grid: dict[str, list[Any]] = field(default_factory=dict)
    variant: str | None = None
    description: str = ""
    baseline: str | None = None  # a variant label; None: the report's default ("standard")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "experiment") -> Experiment:
        if not isinstance(data, dict):
            raise ExperimentError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise ExperimentError(f"{source}: unknown key {unknown[0]!r}; valid top-level keys: {sorted(_TOP_KEYS)}")
        seeds = data.get("seeds", 1)
        seeds = list(range(seeds)) if _is_int(seeds) else seeds
        if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
            raise ExperimentError(f"{source}: seeds must be a positive count or a list of integers, got {data.get('seeds')!r}")
        if len(set(seeds)) != len(seeds):
            raise ExperimentError(f"{source}: seeds lists a seed twice: {seeds}; list each seed once")
        base = data.get("base") or {}
        if not isinstance(base, dict):
            raise ExperimentError(f"{source}: base must map run options to values, e.g. {{epochs: 20}}, got {base!r}")
        schedules = data.get("schedules") or {"standard": {"name": "standard"}}
        if not isinstance(schedules, dict):
            raise ExperimentError(f"{source}: schedules must map a label to a schedule, e.g. {{standard: {{name: standard}}}}")
        grid = data.get("grid") or {}
        if not isinstance(grid, dict):
            raise ExperimentError(f"{source}: grid must map run options to lists of values, e.g. {{lr: [0.001, 0.01]}}")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ExperimentError(f"{source}: grid.{key} must be a non-empty list, got {values!r}")
        # The experiment sets these per run; given in base or grid they would be silently replaced.
        for where, keys in (("base", base), ("grid", grid)):
            for key in sorted(set(keys) & {"schedule", "seed", "experiment", "variant"}):
                top = {"schedule": "schedules", "seed": "seeds"}.get(key, key)
                raise ExperimentError(f"{source}: {where}.{key} is set by the experiment itself; use the top-level '{top}'")
        both = sorted(set(base) & set(grid))
        if both:
            raise ExperimentError(f"{source}: {both[0]!r} is in both base and grid; keep it in one of them")
        variant = data.get("variant")
        if variant is not None and not isinstance(variant, str):
            raise ExperimentError(f"{source}: variant must be a format string such as '{{schedule}}_{{lr}}', got {variant!r}")
        exp = cls(
            name=_safe_name(str(data.get("experiment", Path(source).stem)), "experiment name"),
            seeds=seeds,
            base=dict(base),
            schedules={str(k): _schedule_spec(str(k), v, source) for k, v in schedules.items()},
            grid=dict(grid),
            variant=variant,
            description=str(data.get("description", "")),
            baseline=None if data.get("baseline") is None else str(data["baseline"]),
        )
        exp.configs()  # validate every run now, before anything is trained
        if exp.baseline is not None and exp.baseline not in exp.variants():
            raise ExperimentError(f"{source}: baseline {exp.baseline!r} is not a variant; choose one of {exp.variants()}")
        return exp

    def variants(self) -> list[str]:
        """The variant labels, in the file's order."""
        return [label for label, _ in self.cells()]

    def write_manifest(self, runs_dir: str | Path) -> Path:
        """Write ``<runs_dir>/<name>/experiment.json``: what the report needs beyond the run folders.

        The baseline, and the runs that were asked for, so a run that failed before it had a
        folder is still missing from the report by name rather than silently.
        """
        folder = Path(runs_dir) / self.name
        folder.mkdir(parents=True, exist_ok=True)
        manifest = json.dumps({"experiment": self.name, "baseline": self.baseline, "variants": self.variants(),
                               "seeds": self.seeds}, indent=2).encode()
        path = folder / MANIFEST
        if not path.is_file() or path.read_bytes() != manifest:  # a rerun that changes nothing writes nothing
            atomic_write(path, manifest)
        return path

    def cells(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(variant label, run fields) for each grid cell, without the seed."""
        keys = list(self.grid)
        for label, schedule in self.schedules.items():
            for values in itertools.product(*(self.grid[k] for k in keys)):
                fields = dict(zip(keys, values))
                yield self._label(label, fields), {**self.base, **fields, "schedule": schedule}

    def _label(self, schedule: str, fields: dict[str, Any]) -> str:
        if self.variant:
            try:
                text = self.variant.format(schedule=schedule, **{k: _fmt(v) for k, v in fields.items()})
            except KeyError as e:
                raise ExperimentError(
                    f"variant format {self.variant!r} uses {e} which is not a grid key; use {{schedule}} or one of {list(self.grid)}"
                ) from None
            except (ValueError, IndexError) as e:
                raise ExperimentError(f"variant format {self.variant!r} is not a valid format string: {e}") from None
        else:
            text = "_".join([schedule, *(_fmt(v) for v in fields.values())])
        return _safe_name(text, "variant label")

    def configs(self) -> list[RunConfig]:
        """Every run of the experiment, fully validated (registries included: nothing trains before all pass)."""
        out, seen = [], set()
        for label, fields in self.cells():
            if label in seen:
                raise ExperimentError(f"two grid cells share the variant label {label!r}; add the varying key to 'variant'")
            seen.add(label)
            for seed in self.seeds:
                try:
                    cfg = RunConfig.from_dict({**fields, "seed": seed, "experiment": self.name, "variant": label})
                    check_config(cfg)
                    out.append(cfg)
                except (ConfigError, TypeError) as e:
                    raise ExperimentError(f"{self.name}/{label}: {e}") from None
        return out

    def run_dir(self, runs_dir: str | Path, cfg: RunConfig) -> Path:
        return Path(runs_dir) / self.name / cfg.variant / f"seed{cfg.seed}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _safe_name(text: str, what: str) -> str:
    """A folder name: odd characters become '-', and '', '.' or '..' are refused (they escape the folder)."""
    name = re.sub(r"[^A-Za-z0-9_.+-]", "-", text)
    if name.strip(".") == "":
        raise ExperimentError(f"{what} {text!r} cannot be a folder name; use letters, digits, '_', '-', '.' or '+'")
    return name


def _schedule_spec(label: str, spec: Any, source: str) -> dict[str, Any]:
    """A schedule mapping, or the CLI shorthand string ``alternate:unit=batch`` (as ``train --schedule``)."""
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, str):
        try:
            return parse_schedule(spec).to_dict()
        except ScheduleError as e:
            raise ExperimentError(f"{source}: schedules.{label}: {e}") from None
    raise ExperimentError(f"{source}: schedules.{label} must be a mapping such as {{name: alternate, unit: epoch}}, got {spec!r}")


def _fmt(value: Any) -> str:
    """Seed 004's ID style: 0.001 -> 0e001, so labels are file-name safe."""
    if isinstance(value, float):
        return f"{value:g}".replace(".", "e")
    return str(value)


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> Experiment:
    """Read and validate an experiment YAML file (safe-loaded).

    ``overrides`` patch ``base`` (a dotted key such as ``model_args.checkpoint`` sets one entry of a
    mapping); an override of a grid key narrows the grid to that value
    (same labels and folders as the full grid). ``seeds`` may be a count: the file's first
    seeds are kept, so ``--seeds 2`` on ``seeds: [42, 43, 44]`` runs 42 and 43.
    """
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"experiment file {path} does not exist; see configs/ for examples")
    data = read_yaml_file(path, ExperimentError)
    if overrides:
        if not isinstance(data, dict):
            raise ExperimentError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
        data, overrides = dict(data), dict(overrides)
        seeds = overrides.pop("seeds", None)
        if seeds is not None:
            data["seeds"] = _first_seeds(data.get("seeds", 1), seeds) if _is_int(seeds) else seeds
        if isinstance(data.get("grid"), dict) and set(overrides) & set(data["grid"]):
            baseline = data.pop("baseline", None)
            if baseline is not None:  # checked on the whole grid: a narrowed one may leave the baseline out
                Experiment.from_dict({**data, "baseline": baseline}, source=str(path))
            data["grid"] = dict(data["grid"])
            for key in [k for k in overrides if k in data["grid"]]:
                data["grid"][key] = [overrides.pop(key)]
            exp = _with_base(data, overrides, path)
            exp.baseline = baseline
            return exp
        return _with_base(data, overrides, path)
    return Experiment.from_dict(data, source=str(path))


def _with_base(data: dict[str, Any], overrides: dict[str, Any], path: Path) -> Experiment:
    """The experiment with ``overrides`` patched into ``base``."""
    base = data.get("base") or {}
    data["base"] = _patched(base, overrides, str(path)) if isinstance(base, dict) else base
    return Experiment.from_dict(data, source=str(path))


def _patched(base: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """``base`` with ``overrides`` applied; a dotted key (``model_args.checkpoint``) sets one entry of a mapping.

    So ``--set model_args.checkpoint=PATH`` changes the checkpoint and keeps the file's other model options.
    """
    out = dict(base)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for depth, name in enumerate(parents):
            child = node.get(name, {})
            if not isinstance(child, dict):
                where = ".".join(parents[: depth + 1])
                raise ExperimentError(f"{source}: --set {key}: {where} is {child!r}, not a mapping; set {where} itself")
            node[name] = node = dict(child)  # a copy: the file's own mapping stays as read
        node[leaf] = value
    return out


def _first_seeds(seeds: Any, count: int) -> Any:
    """The file's first ``count`` seeds (continuing after its last one if it lists fewer)."""
    if count < 1 or not isinstance(seeds, list) or not all(_is_int(s) for s in seeds) or not seeds:
        return count
    return (seeds + list(range(max(seeds) + 1, max(seeds) + 1 + count)))[:count]
