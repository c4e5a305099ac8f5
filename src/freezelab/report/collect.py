"""Read finished run folders into two pandas tables: one row per epoch, one row per run.

Only the run-folder contract (docs/design.md, "Run folder") is assumed, so the report works on
folders copied from another machine without importing the code that trained them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

__all__ = ["IDENTITY", "collect_runs", "find_finished_runs"]

# Columns that identify a run; every other config field goes under a "config." prefix because
# config names such as `lr` and `device` collide with epoch and summary columns.
IDENTITY = ["run", "experiment", "variant", "seed", "schedule"]
REQUIRED_CONFIG = ("experiment", "variant", "seed", "schedule")


def find_finished_runs(runs_dir: Path | str) -> list[Path]:
    """Folders at any depth below ``runs_dir`` holding ``config.yaml`` and ``summary.json``.

    Any depth, because the runner nests ``<experiment>/<variant>/seed<N>/`` and people point
    the report at the top folder, an experiment, or a hand-made folder of runs. A run without
    ``summary.json`` is still training (or crashed), and half a curve would bias every mean it
    joins, so it is left out.

    >>> find_finished_runs("runs")  # doctest: +SKIP
    [PosixPath('runs/grid/alternate-epoch/seed0'), ...]
    """
    root = Path(runs_dir)
    return sorted(c.parent for c in root.rglob("config.yaml") if (c.parent / "summary.json").is_file())


def _flatten(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{prefix + "a.b": 1}`` so nested config fields become columns."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _run_columns(run_dir: Path, root: Path) -> dict[str, Any]:
    """Identity columns plus ``config.*`` columns for one run, validated against the contract."""
    path = run_dir / "config.yaml"
    config = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in REQUIRED_CONFIG if k not in config]
    if missing:
        raise ValueError(f"{path} lacks {missing}; the run-folder contract requires {list(REQUIRED_CONFIG)}")
    schedule = config["schedule"]
    if not isinstance(schedule, dict) or "name" not in schedule:
        raise ValueError(f"{path}: `schedule` must be a mapping with a `name`, got {schedule!r}")
    identity = {
        "run": run_dir.relative_to(root).as_posix(),
        "experiment": str(config["experiment"]),
        # A run trained outside a grid has an empty variant label; its schedule names it best.
        "variant": str(config["variant"] or schedule["name"]),
        "seed": int(config["seed"]),
        "schedule": str(schedule["name"]),
    }
    rest = {k: v for k, v in config.items() if k not in REQUIRED_CONFIG}
    return identity | _flatten({"schedule": schedule} | rest, "config.")


def _check_unique(summaries: pd.DataFrame) -> None:
    """Two folders claiming the same (experiment, variant, seed) would be averaged as two seeds."""
    dup = summaries[summaries.duplicated(["experiment", "variant", "seed"], keep=False)]
    if not dup.empty:
        raise ValueError(f"runs share experiment, variant and seed: {sorted(dup['run'])}; remove or rename the stale ones")


def collect_runs(runs_dir: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load every finished run under ``runs_dir`` as ``(epochs, summaries)``.

    ``epochs`` has one row per (run, epoch): the ``epochs.parquet`` columns plus the identity
    columns ``run`` (folder relative to ``runs_dir``), ``experiment``, ``variant``, ``seed``,
    ``schedule`` (its name) and every other config field as ``config.<key>``.
    ``summaries`` has one row per run: the ``summary.json`` keys plus the same run columns.
    Raises ``FileNotFoundError`` naming ``runs_dir`` when no run has finished.

    >>> epochs, summaries = collect_runs("runs/grid")  # doctest: +SKIP
    >>> summaries.groupby("variant")["final_val_acc"].mean()  # doctest: +SKIP
    """
    root = Path(runs_dir)
    run_dirs = find_finished_runs(root)
    if not run_dirs:
        raise FileNotFoundError(
            f"no finished runs under {root.resolve()}: expected <run>/ or <experiment>/<run>/ folders "
            "with config.yaml and summary.json; train some runs first or point at the right folder"
        )
    epoch_tables, summary_rows = [], []
    for run_dir in run_dirs:
        columns = _run_columns(run_dir, root)
        epochs_path = run_dir / "epochs.parquet"
        if not epochs_path.is_file():
            raise FileNotFoundError(f"{run_dir} has summary.json but no epochs.parquet; the run folder is incomplete")
        # A cross merge copies the run's columns onto every epoch, list-valued config fields included.
        epoch_tables.append(pd.read_parquet(epochs_path).merge(pd.DataFrame([columns]), how="cross"))
        summary_rows.append(json.loads((run_dir / "summary.json").read_text()) | columns)
    summaries = pd.DataFrame(summary_rows)
    _check_unique(summaries)
    epochs = pd.concat(epoch_tables, ignore_index=True).sort_values(["variant", "seed", "run", "epoch"], ignore_index=True)
    return epochs, summaries.sort_values(["variant", "seed", "run"], ignore_index=True)
