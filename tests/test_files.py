"""atomic_write: whole files only, permissions from the umask, no litter from killed writers, kill points."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from freezelab.files import KILL_AT, atomic_write, remove_stale_temporaries
from freezelab.report import write_report
from freezelab.run import train


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda value: os.umask(value)
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_a_written_file_gets_the_permissions_the_umask_allows(tmp_path, umask, mask):
    umask(mask)
    atomic_write(tmp_path / "new" / "a.json", b"{}")
    assert mode(tmp_path / "new" / "a.json") == 0o666 & ~mask
    assert mode(tmp_path / "new") == 0o777 & ~mask


def test_run_and_report_files_are_readable_and_writable_by_the_group(tmp_path, umask):
    umask(0o002)  # a team's shared results folder
    train({"dataset": "digits", "subset": 200, "epochs": 2, "model_args": {"hidden": [8]}, "device": "cpu"},
          tmp_path / "exp" / "standard" / "seed0", progress=False)
    write_report(tmp_path / "exp")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"checkpoint.pt", "epochs.parquet", "summary.json", "report.html"} <= {p.name for p in files}
    assert {p.name: oct(mode(p)) for p in files if mode(p) != 0o664} == {}
    assert {p.name: oct(mode(p)) for p in tmp_path.rglob("*") if p.is_dir() and mode(p) != 0o775} == {}


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_dead_writers_are_removed_at_the_next_write_into_the_folder(tmp_path):
    gone = dead_pid()
    stale = [tmp_path / f".checkpoint.pt.{gone}-0a1b2c3d.tmp", tmp_path / ".epochs.parquet.k3j_x9zq.tmp"]  # ours, mkstemp's
    alive = tmp_path / f".summary.json.{os.getppid()}-00ff00ff.tmp"  # a live process may still rename it
    unrelated = [tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / ".x.y.tmp"]
    for path in (*stale, alive, *unrelated):
        path.write_bytes(b"half a file")
    atomic_write(tmp_path / "config.yaml", b"a: 1\n")
    assert not any(p.exists() for p in stale)
    assert alive.exists() and all(p.exists() for p in unrelated)
    assert remove_stale_temporaries(tmp_path) == []


def _write_three_times(path: str, spec: str) -> None:
    os.environ[KILL_AT] = spec
    for i in range(3):
        atomic_write(Path(path), f"version {i} ".encode() * 100)


@pytest.mark.parametrize("spec, landed, halves", [("a.bin:2", 0, 1), ("*.bin:2:after", 1, 0), ("a.bin:3:during", 1, 1)])
def test_a_kill_point_kills_the_process_at_the_named_write(tmp_path, spec, landed, halves):
    target = tmp_path / "a.bin"
    child = mp.get_context("fork").Process(target=_write_three_times, args=(str(target), spec))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == -signal.SIGKILL
    assert target.read_bytes() == f"version {landed} ".encode() * 100  # the file is always whole
    left = list(tmp_path.glob(".a.bin.*.tmp"))
    assert len(left) == halves
    if halves:
        assert len(left[0].read_bytes()) == 500  # killed half-way through the temporary
    atomic_write(tmp_path / "b.bin", b"")  # the folder is used again: the litter goes
    assert list(tmp_path.glob(".*.tmp")) == []


def test_a_kill_point_with_a_bad_moment_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(KILL_AT, "a.bin:1:later")
    with pytest.raises(ValueError, match="during or after"):
        atomic_write(tmp_path / "a.bin", b"x")
    assert list(tmp_path.iterdir()) == []
