"""Run folders: written atomically, read back by the runner, a resume and the report.

A run folder holds ``config.yaml``, ``plan.json``, ``epochs.parquet``, optional
``steps.parquet``, ``summary.json`` and ``checkpoint.pt`` (with ``checkpoint.prev.pt``; see
docs/design.md for the columns); a run that stopped with an error also holds ``failed.json``
(the error and how many epochs finished, so the report can list it with its reason), and a run
timed by :mod:`freezelab.run.probe` holds ``timing_probe.json``. Every file is written to a temporary name and renamed into place
(:func:`freezelab.files.atomic_write`), so an interrupted run never leaves a half-written file
that a later resume or report would trust. ``summary.json`` is written last: its presence is
what "finished" means.

Checkpoints are checked, not trusted. A checkpoint file is a header line, the SHA-256 of the
payload in hex, a newline, then the payload (``torch.save`` bytes of the state)::

    freezelab-checkpoint 1\n<64 hex digits>\n<torch.save bytes>

The checksum covers every byte of the payload, so a garbled byte inside a tensor (which torch's
zip reader does not notice) is detected as surely as a truncated or empty file; a file that
passes is loaded with ``weights_only=True`` (tensors and plain containers, never arbitrary
objects). Before a new checkpoint is written, the last one is renamed to ``checkpoint.prev.pt``;
a kill between the two leaves the previous one, never nothing. On resume a checkpoint that fails
the check is named in one warning line and renamed to ``<name>.corrupt``, and the run resumes
from the previous one, or from scratch when none is good: never from broken weights.

Files a person or another program may have put in the folder are read with one-line
:class:`RunFolderError` lines that name the file and the fix (a malformed ``config.yaml``, a
``summary.json`` that is not JSON, a folder that cannot be written).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import yaml

from ..files import atomic_write, seal, unseal

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
    "encode_checkpoint",
    "decode_checkpoint",
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
    "PREVIOUS",
    "RunFolderError",
    "CheckpointError",
    "check_writable",
    "FAILED",
    "TIMING_PROBE",
]

CONFIG, PLAN, EPOCHS, STEPS, SUMMARY, CHECKPOINT, PREVIOUS = (
    "config.yaml", "plan.json", "epochs.parquet", "steps.parquet", "summary.json", "checkpoint.pt", "checkpoint.prev.pt")
FAILED, TIMING_PROBE = "failed.json", "timing_probe.json"

log = logging.getLogger("freezelab")


class RunFolderError(ValueError):
    """A run folder that cannot be written or holds a file that cannot be read; the message names it."""


class CheckpointError(RunFolderError):
    """A checkpoint file that fails its check (empty, truncated, garbled, not a freezelab checkpoint)."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path} {problem}; remove it (a resume then uses {PREVIOUS}, or starts over)")


def check_writable(run_dir: str | Path) -> Path:
    """Create ``run_dir`` and prove a file can be written in it, or one :class:`RunFolderError` line.

    Checked before any training, so a wrong output path costs nothing (``os.access`` is not
    enough: it says yes to root on a read-only mount).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is a file, not a folder; choose another output folder or remove the file")
    _write(run_dir / ".write-test", b"")
    (run_dir / ".write-test").unlink(missing_ok=True)
    return run_dir


def _file_in_the_way(path: Path) -> RunFolderError | None:
    """The error for a file where ``path`` needs a folder (``--out`` naming a file), if there is one."""
    for folder in path.parents:
        if folder.exists():
            if folder.is_dir():
                return None
            return RunFolderError(f"{folder} is a file, not a folder; choose another output folder or remove the file")
    return None


def _write(path: Path, data: bytes) -> None:
    """:func:`atomic_write`, with an unwritable place as one line that names it."""
    try:
        atomic_write(path, data)
    except OSError as e:
        raise _file_in_the_way(path) or RunFolderError(
            f"cannot write {path} ({e.strerror or e}); choose a writable output folder "
            "(--out for train, --runs-dir for run) or fix its permissions"
        ) from None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise _file_in_the_way(path) or RunFolderError(
            f"cannot read {path} ({e}); remove it (or its run folder) to rerun that run") from None


def write_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    _write(Path(run_dir) / CONFIG, yaml.safe_dump(config, sort_keys=False).encode())


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The saved config, ``None`` without one; a file that is no YAML mapping is a :class:`RunFolderError`."""
    path = Path(run_dir) / CONFIG
    text = _read_text(path)
    if text is None:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RunFolderError(f"{path} is not valid YAML{where}, so {run_dir} is not a run folder freezelab can resume; "
                             "choose another output folder or remove that one") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} is not a run config (a mapping of run options); choose another output folder "
                             "or remove that one")
    return data


def write_plan(run_dir: str | Path, plan: dict[str, Any]) -> None:
    _write(Path(run_dir) / PLAN, json.dumps(plan, indent=2).encode())


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); remove it, or its run folder, "
                             "to rerun that run") from None


def read_plan(run_dir: str | Path) -> dict[str, Any] | None:
    return _read_json(Path(run_dir) / PLAN)


def write_table(path: str | Path, rows: list[dict[str, Any]] | pd.DataFrame) -> None:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    _write(Path(path), buf.getvalue())


def read_table(path: str | Path) -> pd.DataFrame | None:
    """The table at ``path``, ``None`` without one; an unreadable file is a :class:`RunFolderError`."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise RunFolderError(f"{path} is not a readable table ({type(e).__name__}: {e}); remove it, or its run "
                             "folder, to rerun that run") from None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> None:
    _write(Path(run_dir) / SUMMARY, json.dumps(_json_safe(summary), indent=2).encode())
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
    """The run's summary, ``None`` if unfinished; a damaged file is a :class:`RunFolderError` naming it."""
    summary = _read_json(Path(run_dir) / SUMMARY)
    if summary is not None and not isinstance(summary, dict):
        raise RunFolderError(f"{Path(run_dir) / SUMMARY} is not a run summary (a JSON object); remove it, or its run "
                             "folder, to rerun that run")
    return summary


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / SUMMARY).exists()




def encode_checkpoint(state: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint file: header, SHA-256 of the payload, payload (see the module docstring)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return seal(buf.getvalue())


def decode_checkpoint(data: bytes, path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state in a checkpoint file's bytes, or :class:`CheckpointError` saying what is wrong with ``path``."""
    try:
        payload = unseal(data)
    except ValueError as e:
        raise CheckpointError(path, str(e)) from None
    # The bytes are the ones written; a failure to load them now is a bug, not a damaged file.
    state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or "epoch" not in state:
        raise CheckpointError(path, "holds no run state")
    return state


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` as the run's checkpoint, keeping the last one as ``checkpoint.prev.pt``.

    The order is what makes a kill harmless: the new bytes are ready, the last checkpoint is
    renamed to the previous one, then the new one is written atomically. A kill at any point
    leaves at least one whole, checked checkpoint.
    """
    run_dir = Path(run_dir)
    data = encode_checkpoint(state)
    current = run_dir / CHECKPOINT
    if current.exists():
        os.replace(current, run_dir / PREVIOUS)
    _write(current, data)


def load_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest checkpoint in ``run_dir`` that passes its check, ``None`` if there is none.

    A checkpoint that fails is named in one warning line and renamed to ``<name>.corrupt`` (kept
    for a look, never loaded again); the previous checkpoint is tried next.
    """
    run_dir = Path(run_dir)
    for name in (CHECKPOINT, PREVIOUS):
        path = run_dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        try:
            return decode_checkpoint(data, path, map_location)
        except CheckpointError as e:
            with contextlib.suppress(OSError):  # a read-only folder: skipped all the same
                os.replace(path, path.with_name(path.name + ".corrupt"))
            fallback = PREVIOUS if name == CHECKPOINT and (run_dir / PREVIOUS).exists() else "scratch (epoch 1)"
            log.warning("warning: %s %s; moved it to %s.corrupt, resuming from %s", path, e.problem, name, fallback)
    return None


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
    A checkpoint whose epochs the tables do not hold (or unreadable tables) restarts the run
    from scratch, with a warning: the summary must describe every epoch the weights saw.
    """
    state = load_checkpoint(run_dir, map_location=run.device)
    if state is None:
        return 0, None
    done = int(state["epoch"])
    try:
        epochs = read_table(run_dir / EPOCHS)
        steps = read_table(run_dir / STEPS)
    except RunFolderError as e:
        log.warning("warning: %s; restarting the run from scratch (epoch 1)", e)
        return 0, None
    kept = [r for r in (epochs.to_dict("records") if epochs is not None else []) if r["epoch"] <= done]
    if len(kept) != done:
        log.warning("warning: %s logs %d of the %d epochs its checkpoint has trained; restarting the run from "
                    "scratch (epoch 1)", run_dir / EPOCHS, len(kept), done)
        return 0, None
    run.model.load_state_dict(state["model"])
    run.freezer.load_state_dict(state["freezer"])
    rows.extend(kept)
    if steps is not None:
        step_rows.append(steps[steps["epoch"] <= done].reset_index(drop=True))
    return done, (state["rng_cpu"], state.get("rng_cuda"))
