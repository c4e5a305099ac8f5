"""Checkpoints are checked, not trusted: a damaged one is named and the run resumes from a good one.

One reference run (3 epochs, a checkpoint after every epoch) is snapshotted after its second
epoch, which leaves ``checkpoint.pt`` (epoch 2) and ``checkpoint.prev.pt`` (epoch 1) as a killed
run would. Each test damages a copy of that snapshot, resumes it, and compares the final weights
and log with the uninterrupted run's, bit for bit (CPU).
"""

from __future__ import annotations

import io
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from freezelab import files
from freezelab.run import record, train

CONFIG = {"dataset": "digits", "subset": 200, "epochs": 3, "batch_size": 50, "model_args": {"hidden": [16]},
          "schedule": {"name": "alternate", "unit": "batch"}, "policy": "recreate", "save_every_s": 0,
          "grad_stats": False, "device": "cpu", "lr": 1e-2}
TIMES = {"train_time_s", "epoch_time_s", "step_time_s"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(the uninterrupted run's result, a copy of its folder right after epoch 2's checkpoint)."""
    root = tmp_path_factory.mktemp("ckpt")
    snapshot = root / "snapshot"
    save = record.save_progress

    def save_and_snapshot(run, run_dir, rows, step_rows, epoch):
        save(run, run_dir, rows, step_rows, epoch)
        if epoch == 1:
            shutil.copytree(run_dir, snapshot)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(record, "save_progress", save_and_snapshot)
        result = train(CONFIG, root / "full", progress=False)
    assert sorted(p.name for p in snapshot.iterdir() if "checkpoint" in p.name) == [record.PREVIOUS, record.CHECKPOINT]
    return result, snapshot


def _resume(snapshot: Path, where: Path, damage=None, damage_previous=None):
    run_dir = where / "resumed"
    shutil.copytree(snapshot, run_dir)
    if damage:
        damage(run_dir / record.CHECKPOINT)
    if damage_previous:
        damage_previous(run_dir / record.PREVIOUS)
    return train(CONFIG, run_dir, progress=False), run_dir


def _assert_same_run(result, expected) -> None:
    got, want = result.model.state_dict(), expected.model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    columns = [c for c in expected.epochs.columns if c not in TIMES]
    assert result.epochs[columns].equals(expected.epochs[columns])


def garble_tensor_byte(path: Path) -> None:
    """Flip one byte inside the first weight matrix's data (not in a header or the zip directory)."""
    data = bytearray(path.read_bytes())
    head = len(files.SEAL) + 65
    state = torch.load(io.BytesIO(bytes(data[head:])), weights_only=True)
    weights = state["model"]["fc1.weight"].numpy().tobytes()
    at = bytes(data).find(weights[:64])
    assert at > head, "the weight bytes should be stored verbatim in the file"
    data[at + 10] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [garble_tensor_byte, truncate, empty], ids=lambda f: f.__name__)
def test_a_damaged_checkpoint_is_named_and_the_run_resumes_from_the_previous_one(reference, tmp_path, caplog, damage):
    expected, snapshot = reference
    with caplog.at_level(logging.WARNING, logger="freezelab"):
        result, run_dir = _resume(snapshot, tmp_path, damage)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(run_dir / record.CHECKPOINT) in warnings[0], warnings
    assert f"resuming from {record.PREVIOUS}" in warnings[0]
    assert (run_dir / (record.CHECKPOINT + ".corrupt")).exists()  # kept for a look, never loaded again
    _assert_same_run(result, expected)


def test_both_checkpoints_damaged_restarts_from_scratch_and_says_so(reference, tmp_path, caplog):
    expected, snapshot = reference
    with caplog.at_level(logging.WARNING, logger="freezelab"):
        result, _ = _resume(snapshot, tmp_path, garble_tensor_byte, truncate)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2 and "resuming from scratch (epoch 1)" in warnings[1], warnings
    _assert_same_run(result, expected)


def test_a_kill_between_keeping_the_previous_and_writing_the_new_one_resumes_from_the_previous(reference, tmp_path):
    expected, snapshot = reference
    result, _ = _resume(snapshot, tmp_path, damage=lambda path: path.unlink())
    _assert_same_run(result, expected)


def test_a_checkpoint_ahead_of_its_epochs_table_restarts_from_scratch(reference, tmp_path, caplog):
    """The summary must describe every epoch the weights saw: a table missing one is not resumed past."""
    expected, snapshot = reference
    run_dir = tmp_path / "resumed"
    shutil.copytree(snapshot, run_dir)
    epochs = record.read_table(run_dir / record.EPOCHS)
    record.write_table(run_dir / record.EPOCHS, epochs[epochs["epoch"] == 1])
    with caplog.at_level(logging.WARNING, logger="freezelab"):
        result = train(CONFIG, run_dir, progress=False)
    assert "restarting the run from scratch" in caplog.text
    _assert_same_run(result, expected)


def test_the_checksum_catches_a_garbled_tensor_byte_that_torch_alone_loads_silently(reference, tmp_path):
    _, snapshot = reference
    path = tmp_path / record.CHECKPOINT
    shutil.copy(snapshot / record.CHECKPOINT, path)
    garble_tensor_byte(path)
    payload = path.read_bytes()[len(files.SEAL) + 65 :]
    silently = torch.load(io.BytesIO(payload), weights_only=True)  # the failure this format exists for
    good = record.decode_checkpoint((snapshot / record.CHECKPOINT).read_bytes(), path)
    assert not torch.equal(silently["model"]["fc1.weight"], good["model"]["fc1.weight"])
    with pytest.raises(record.CheckpointError, match="fails its SHA-256 check"):
        record.decode_checkpoint(path.read_bytes(), path)


class _NotAWeight:
    pass


def test_checkpoints_load_with_weights_only():
    """A payload that would run arbitrary unpickling is refused even with a valid checksum."""
    data = record.encode_checkpoint({"epoch": 1, "thing": _NotAWeight()})
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        record.decode_checkpoint(data, Path("checkpoint.pt"))
