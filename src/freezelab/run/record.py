"""Run folders: written atomically, read back by the runner, a resume and the report.

A run folder holds ``config.yaml``, ``plan.json``, ``epochs.parquet``, optional
``steps.parquet``, ``summary.json`` and ``checkpoint.pt`` (see docs/design.md for the
columns); a run that stopped with an error also holds ``failed.json`` (the error and how many
epochs finished, so the report can list it with its reason), and a run timed by
:mod:`freezelab.run.probe` holds ``timing_probe.json``. Every file is written to a temporary name and renamed into place
(:func:`freezelab.files.atomic_write`), so an interrupted run never leaves a half-written file
that a later resume or report would trust. ``summary.json`` is written last: its presence is
what "finished" means.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import yaml

from ..files import atomic_write

if TYPE_CHECKING:
    from .build import Run

__all__ = [
    "write_config",
    "read_config",
    "write_plan",
    "read_plan",
    "write_table",
    "read_table",
    "write_summary",
    "read_summary",
    "is_finished",
    "save_checkpoint",
    "load_checkpoint",
    "save_progress",
    "write_tables",
    "write_failure",
    "read_failure",
    "resume",
    "CONFIG",
    "PLAN",
    "EPOCHS",
    "STEPS",
    "SUMMARY",
    "CHECKPOINT",
    "FAILED",
    "TIMING_PROBE",
]

CONFIG, PLAN, EPOCHS, STEPS, SUMMARY, CHECKPOINT = (
    "config.yaml", "plan.json", "epochs.parquet", "steps.parquet", "summary.json", "checkpoint.pt")
FAILED, TIMING_PROBE = "failed.json", "timing_probe.json"


def write_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / CONFIG, yaml.safe_dump(config, sort_keys=False).encode())


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / CONFIG
    return yaml.safe_load(path.read_text()) if path.exists() else None


def write_plan(run_dir: str | Path, plan: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / PLAN, json.dumps(plan, indent=2).encode())


def read_plan(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / PLAN
    return json.loads(path.read_text()) if path.exists() else None


def write_table(path: str | Path, rows: list[dict[str, Any]] | pd.DataFrame) -> None:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write(path, buf.getvalue())


def read_table(path: str | Path) -> pd.DataFrame | None:
    path = Path(path)
    return pd.read_parquet(path) if path.exists() else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / SUMMARY, json.dumps(_json_safe(summary), indent=2).encode())
    (Path(run_dir) / FAILED).unlink(missing_ok=True)  # an earlier attempt's failure is history now


def write_failure(run_dir: str | Path, error: BaseException | str) -> None:
    """Record why a run stopped: ``failed.json`` with the error and the epochs that finished.

    The finished epochs stay in ``epochs.parquet``; the report lists the run with this reason
    instead of silently leaving it out. Does nothing where the folder was never created (a run
    that failed before it had one: the runner's message is all there is).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    epochs = read_table(run_dir / EPOCHS)
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    failure = {"error": text, "epochs_finished": 0 if epochs is None else len(epochs)}
    try:
        atomic_write(run_dir / FAILED, json.dumps(failure, indent=2).encode())
    except OSError:  # an unwritable folder: the caller's message about the first error is the one to show
        pass


def read_failure(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / FAILED
    return json.loads(path.read_text()) if path.exists() else None


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / SUMMARY).exists()


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(Path(run_dir) / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    path = Path(run_dir) / CHECKPOINT
    return torch.load(path, map_location=map_location, weights_only=False) if path.exists() else None


# -- a run's progress: the tables so far and the checkpoint to resume from ------------------------
def write_tables(run_dir: Path | None, rows: list[dict[str, Any]], step_rows: list[pd.DataFrame]) -> None:
    """Write the epochs (and steps) so far, atomically."""
    if run_dir is None:
        return
    write_table(run_dir / EPOCHS, rows)
    if step_rows:
        write_table(run_dir / STEPS, pd.concat(step_rows, ignore_index=True))


def save_progress(run: Run, run_dir: Path | None, rows: list[dict[str, Any]], step_rows: list[pd.DataFrame],
                  epoch: int) -> None:
    """Write the epochs so far and a checkpoint to resume from after ``epoch`` (0-based), atomically."""
    if run_dir is None:
        return
    write_tables(run_dir, rows, step_rows)
    save_checkpoint(
        run_dir,
        {
            "epoch": epoch + 1,
            "model": run.model.state_dict(),
            "freezer": run.freezer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if run.device.type == "cuda" else None,
        },
    )


def resume(run: Run, run_dir: Path, rows: list, step_rows: list) -> tuple[int, tuple | None]:
    """Load a checkpoint left by an unfinished run in ``run_dir``.

    Fills ``rows`` and ``step_rows`` with the epochs up to the checkpoint (epochs logged after
    it are trained again) and returns the epoch to start at and the checkpoint's random states
    ``(cpu, cuda)`` (``None`` without a checkpoint), which :meth:`~freezelab.run.loop.Training.start` sets.
    """
    state = load_checkpoint(run_dir, map_location=run.device)
    if state is None:
        return 0, None
    run.model.load_state_dict(state["model"])
    run.freezer.load_state_dict(state["freezer"])
    done = int(state["epoch"])
    epochs = read_table(run_dir / EPOCHS)
    rows.extend(r for r in (epochs.to_dict("records") if epochs is not None else []) if r["epoch"] <= done)
    steps = read_table(run_dir / STEPS)
    if steps is not None:
        step_rows.append(steps[steps["epoch"] <= done].reset_index(drop=True))
    return done, (state["rng_cpu"], state.get("rng_cuda"))
