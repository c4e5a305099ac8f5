"""Every bad input in tests/bad_inputs.py gets one line that names the problem and the fix.

One workspace holds finished and interrupted runs; each case of the table runs against it in
turn, and after each the finished results must be byte for byte as they were.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from freezelab import files
from freezelab.cli import app
from freezelab.run import record, train

from bad_inputs import CASES, EXPERIMENT, TRAIN, Case

INTERRUPTED = {"dataset": "digits", "epochs": 3, "subset": 100, "grad_stats": False, "model_args": {"hidden": [16]},
               "save_every_s": 0}


#: Words with which a line goes on to say what to do (after "; ", or "must be ...", "choose from ...").
FIX_WORDS = ("; ", "Fix:", "choose", "must be", "expects", "Build ", "did you mean")


def invoke(args: list[str], env: dict[str, str]):
    return CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1", **env})


def build_workspace(ws: Path) -> None:
    """A finished train run, a finished experiment run and an interrupted run (see bad_inputs.py)."""
    result = invoke(["train", "--out", str(ws / "finished"), *TRAIN], {})
    assert result.exit_code == 0, result.output
    (ws / "tiny.yaml").write_text(EXPERIMENT)
    result = invoke(["run", str(ws / "tiny.yaml"), "--runs-dir", str(ws / "runs"), "--no-report"], {})
    assert result.exit_code == 0, result.output
    save = record.save_progress

    def save_and_snapshot(run, run_dir, rows, step_rows, epoch):
        save(run, run_dir, rows, step_rows, epoch)
        if epoch == 1:  # what a kill after the 2nd epoch leaves
            shutil.copytree(run_dir, ws / "interrupted")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(record, "save_progress", save_and_snapshot)
        train(INTERRUPTED, ws / "full", progress=False)
    shutil.rmtree(ws / "full")


PROGRESS = re.compile(r"^\S+ epoch \d+/\d+ loss ")


def fingerprint(ws: Path) -> dict[str, str]:
    """The bytes of every file of the finished and interrupted runs."""
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in ("finished", "runs", "interrupted") for p in sorted((ws / folder).rglob("*")) if p.is_file()}


def unwritable(mp: pytest.MonkeyPatch, root: Path) -> None:
    """Every file write below ``root`` fails as on a read-only mount (chmod cannot stop root, who runs CI here)."""
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).is_relative_to(root):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    mp.setattr(files.os, "open", refuse)  # atomic_write creates its temporary file with os.open


def check(case: Case, ws: Path) -> str | None:
    """What is wrong with how ``case`` was answered, or ``None``."""
    fill = lambda text: text.replace("{ws}", str(ws)).replace("{out}", str(ws / "out" / case.id))  # noqa: E731
    if case.setup:
        case.setup(ws)
    with pytest.MonkeyPatch.context() as mp:
        if case.unwritable:
            unwritable(mp, Path(fill(case.unwritable)))
        if case.api is not None:
            try:
                case.api(ws)
            except Exception as e:  # noqa: BLE001 - the class is what is checked
                if not isinstance(e, case.error):
                    return f"raised {type(e).__name__}, not {case.error.__name__}: {e}"
                line = str(e)
            else:
                return f"no {case.error.__name__} raised"
            lines = line.splitlines()
        else:
            result = invoke([fill(a) for a in case.cli], {k: fill(v) for k, v in case.env.items()})
            if "Traceback" in result.output or result.exception and not isinstance(result.exception, SystemExit):
                return f"a traceback: {result.exception!r}"
            # Training's one progress line per epoch (no terminal here) is not a message about the input.
            lines = [ln for ln in result.stderr.strip().splitlines() if not PROGRESS.match(ln)]
            if case.recovers:
                if result.exit_code != 0:
                    return f"exit status {result.exit_code}, not 0 after recovering: {result.output}"
                if len(lines) != 1 or not lines[0].startswith("warning: "):
                    return f"not one warning line: {result.stderr!r}"
            elif result.exit_code != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
                return f"exit status {result.exit_code} with stderr {result.stderr!r}, not 2 and one 'error:' line"
    if len(lines) != 1:
        return f"{len(lines)} lines: {lines}"
    if case.fragment not in lines[0]:
        return f"{case.fragment!r} not in {lines[0]!r}"
    if not any(word in lines[0] for word in FIX_WORDS):
        return f"no fix named in {lines[0]!r}"
    return None


def test_every_bad_input_gets_one_line_and_loses_no_finished_result(tmp_path):
    assert len(CASES) >= 50 and len({c.id for c in CASES}) == len(CASES)
    build_workspace(tmp_path)
    before = fingerprint(tmp_path)
    problems = []
    for case in CASES:
        problem = check(case, tmp_path)
        if problem:
            problems.append(f"{case.id} ({case.what}): {problem}")
        if fingerprint(tmp_path) != before:
            problems.append(f"{case.id} ({case.what}): changed a finished or interrupted run")
            before = fingerprint(tmp_path)
    assert not problems, "\n".join(problems)


def test_an_internal_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only freezelab's error classes are the user's to fix: a plain ValueError is a bug and is not hidden."""

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr("freezelab.run.train", broken)
    result = invoke(["train", "--out", str(tmp_path / "x"), *TRAIN], {})
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    assert "error: an internal bug" not in result.output
