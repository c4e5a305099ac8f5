"""Run folders: written atomically, read back by the runner and the report.

A run folder holds ``config.yaml``, ``epochs.parquet``, optional ``steps.parquet``,
``summary.json`` and ``checkpoint.pt`` (see docs/design.md for the columns). Every file is
written to a temporary name and renamed into place, so an interrupted run never leaves a
half-written file that a later ``resume`` or report would trust. ``summary.json`` is written
last: its presence is what "finished" means.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

__all__ = [
    "atomic_write",
    "write_config",
    "read_config",
    "write_table",
    "read_table",
    "write_summary",
    "read_summary",
    "is_finished",
    "save_checkpoint",
    "load_checkpoint",
    "CONFIG",
    "EPOCHS",
    "STEPS",
    "SUMMARY",
    "CHECKPOINT",
]

CONFIG, EPOCHS, STEPS, SUMMARY, CHECKPOINT = "config.yaml", "epochs.parquet", "steps.parquet", "summary.json", "checkpoint.pt"


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / CONFIG, yaml.safe_dump(config, sort_keys=False).encode())


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / CONFIG
    return yaml.safe_load(path.read_text()) if path.exists() else None


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
