"""Read run folders into pandas tables: one row per epoch, per run, per step; and what did not finish.

Only the run-folder contract (docs/design.md, "Run folder") is assumed, so the report works on
folders copied from another machine without importing the code that trained them.
:func:`collect` gathers everything the report shows (:class:`Collected`); :func:`collect_runs`
is its core, the two tables of finished runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

__all__ = ["IDENTITY", "Collected", "collect_all", "collect_runs", "find_finished_runs", "timed_alone"]

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
    Both carry ``timed_alone`` (:func:`timed_alone`): whether the run's times are its own.
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
        summary = json.loads((run_dir / "summary.json").read_text())
        columns = _run_columns(run_dir, root) | {"timed_alone": timed_alone(run_dir, summary)}
        epochs_path = run_dir / "epochs.parquet"
        if not epochs_path.is_file():
            raise FileNotFoundError(f"{run_dir} has summary.json but no epochs.parquet; the run folder is incomplete")
        # A cross merge copies the run's columns onto every epoch, list-valued config fields included.
        # The per-epoch `timed_alone` the loop logs is summarised by the run column of that name.
        logged = pd.read_parquet(epochs_path).drop(columns=["timed_alone"], errors="ignore")
        epoch_tables.append(logged.merge(pd.DataFrame([columns]), how="cross"))
        summary_rows.append(summary | columns)
    summaries = pd.DataFrame(summary_rows)
    _check_unique(summaries)
    epochs = pd.concat(epoch_tables, ignore_index=True).sort_values(["variant", "seed", "run", "epoch"], ignore_index=True)
    return epochs, summaries.sort_values(["variant", "seed", "run"], ignore_index=True)


def timed_alone(run_dir: Path, summary: dict[str, Any]) -> bool:
    """Whether the run's times and peak memory are its own.

    The lockstep driver writes ``timed_alone`` into the summary. A folder from before that field
    counts as alone only if its plan could not join a lockstep group (``lockstep_key`` null):
    otherwise it may have shared the GPU, and a time it may share compares nothing.
    """
    if "timed_alone" in summary:
        return bool(summary["timed_alone"])
    plan_path = run_dir / "plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else {}
    return plan.get("lockstep_key") is None


@dataclass
class Collected:
    """Everything the report reads from a folder of runs.

    ``epochs`` and ``summaries`` as :func:`collect_runs` returns them; ``steps``: the per-step
    log (``run, variant, seed, step, epoch, trainable``) of the runs that kept one, or None;
    ``flagged``: one row per run that did not finish (failed, unfinished, missing) or finished
    flagged (exploded), with ``status`` and ``reason``; ``probes``: the ``timing_probe.json``
    of each variant that has one; ``manifest``: the runner's ``experiment.json``, if any.
    """

    root: Path
    epochs: pd.DataFrame
    summaries: pd.DataFrame
    steps: pd.DataFrame | None
    flagged: pd.DataFrame
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None


def collect_all(runs_dir: Path | str) -> Collected:
    """Collect the finished runs plus the per-step logs, failures, timing probes and manifest.

    >>> c = collect_all("runs/seed004_fashion")  # doctest: +SKIP
    >>> c.flagged[["run", "status", "reason"]]  # doctest: +SKIP
    """
    root = Path(runs_dir)
    epochs, summaries = collect_runs(root)
    manifest = _read_manifest(root)
    return Collected(root, epochs, summaries, _collect_steps(root, summaries), _flagged(root, summaries, manifest),
                     _collect_probes(root, summaries), manifest)


def _read_manifest(root: Path) -> dict[str, Any] | None:
    """``experiment.json`` of the folder, or of its only experiment subfolder (a whole runs dir)."""
    found = [root / "experiment.json"] if (root / "experiment.json").is_file() else sorted(root.glob("*/experiment.json"))
    return json.loads(found[0].read_text()) if len(found) == 1 else None


def _collect_steps(root: Path, summaries: pd.DataFrame) -> pd.DataFrame | None:
    """The per-step trainable sets of every finished run that logged steps (``steps.parquet``)."""
    frames = []
    for run, variant, seed in summaries[["run", "variant", "seed"]].itertuples(index=False):
        path = root / run / "steps.parquet"
        if path.is_file():
            steps = pd.read_parquet(path, columns=["step", "epoch", "trainable"])
            frames.append(steps.assign(run=run, variant=variant, seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else None


def _collect_probes(root: Path, summaries: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """One timing probe per variant (the lowest seed's that has one)."""
    probes: dict[str, dict[str, Any]] = {}
    for run, variant in summaries[["run", "variant"]].itertuples(index=False):
        path = root / run / "timing_probe.json"
        if variant not in probes and path.is_file():
            probes[variant] = json.loads(path.read_text())
    return probes


def _exploded_reason(flag: Any) -> str | None:
    """The summary's ``exploded`` field in words (a bool, a reason string, or a mapping with one)."""
    if flag is None or flag is False or (isinstance(flag, float) and math.isnan(flag)):
        return None
    if isinstance(flag, str):
        return flag
    if isinstance(flag, dict):
        return str(flag.get("reason") or json.dumps(flag))
    return "loss exploded (the run finished, but its summary flags it)"


def _flagged(root: Path, summaries: pd.DataFrame, manifest: dict[str, Any] | None) -> pd.DataFrame:
    """Runs a reader must not miss: failed, unfinished or missing ones, and finished ones that exploded."""
    rows = []
    finished = set(summaries["run"])
    for config_path in sorted(root.rglob("config.yaml")):
        run_dir = config_path.parent
        run = run_dir.relative_to(root).as_posix()
        if run in finished:
            continue
        rows.append(_unfinished_row(run_dir, run))
    if "exploded" in summaries:
        for _, s in summaries.iterrows():
            reason = _exploded_reason(s["exploded"])
            if reason:
                rows.append({"run": s["run"], "variant": s["variant"], "seed": s["seed"], "status": "exploded",
                             "epochs": int(s.get("config.epochs", 0) or 0), "reason": reason})
    if manifest:
        seen = {(r["variant"], r["seed"]) for r in rows} | set(zip(summaries["variant"], summaries["seed"]))
        for variant in manifest.get("variants", []):
            for seed in manifest.get("seeds", []):
                if (variant, seed) not in seen:
                    rows.append({"run": f"{variant}/seed{seed}", "variant": variant, "seed": seed, "status": "missing",
                                 "epochs": 0, "reason": "no run folder: the run failed before it started, or was never run"})
    return pd.DataFrame(rows, columns=["run", "variant", "seed", "status", "epochs", "reason"])


def _unfinished_row(run_dir: Path, run: str) -> dict[str, Any]:
    """A run folder without ``summary.json``: failed (``failed.json`` says why) or unfinished."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        config = {"_error": f"config.yaml unreadable: {str(e).splitlines()[0]}"}
    if not isinstance(config, dict):
        config = {}
    epochs_path = run_dir / "epochs.parquet"
    n_epochs = len(pd.read_parquet(epochs_path, columns=["epoch"])) if epochs_path.is_file() else 0
    failure_path = run_dir / "failed.json"
    if failure_path.is_file():
        status, reason = "failed", str(json.loads(failure_path.read_text()).get("error", "no reason recorded"))
    else:
        status, reason = "unfinished", "no summary.json and no failure record: still training, or killed"
    schedule = config.get("schedule")
    variant = str(config.get("variant") or (schedule.get("name") if isinstance(schedule, dict) else None) or "?")
    return {"run": run, "variant": variant, "seed": config.get("seed", "?"), "status": status, "epochs": n_epochs,
            "reason": config.get("_error", reason)}
