"""The README works exactly as written: its Python snippets run, its commands parse, its files exist.

A newcomer copies these verbatim, so the test reads them from README.md itself rather than
keeping a copy that could drift.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
import typer

from freezelab.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def commands(program: str) -> list[list[str]]:
    """The ``program ...`` lines of the README's bash blocks, split as a shell would (comments dropped)."""
    found = []
    for block in blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == program:
                found.append(words[1:])
    return found


def test_the_readme_has_the_snippet_and_commands_this_test_checks():
    assert len(blocks("python")) >= 1
    assert len(commands("freezelab")) >= 5 and len(commands("make")) >= 2


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_each_python_snippet_runs_as_written_and_its_schedule_advances(index):
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(blocks("python")[index], f"README.md python block {index}", "exec"), namespace)  # noqa: S102
    fz, epochs, loader = namespace.get("fz"), namespace.get("epochs"), namespace.get("loader")
    if fz is not None:  # the in-loop snippet: the clock counts steps over the whole run
        assert namespace["step"] == epochs * len(loader)
        # Alternate per epoch switches halves at every epoch boundary; a clock fed the
        # per-epoch enumerate index would never leave epoch 0 and switch 0 times.
        assert fz.switches == epochs - 1


@pytest.mark.parametrize("args", commands("freezelab"), ids=" ".join)
def test_each_freezelab_command_parses_and_names_files_that_exist(args):
    group = typer.main.get_command(app)
    parent = group.make_context("freezelab", [], resilient_parsing=True)
    sub = group.get_command(parent, args[0])
    assert sub is not None, f"README uses `freezelab {args[0]}`, which does not exist"
    with sub.make_context(args[0], args[1:], parent=parent):  # unknown options or bad values raise here
        pass
    for arg in args[1:]:
        if arg.endswith((".yaml", ".yml")):
            assert (ROOT / arg).is_file(), arg


def test_make_targets_exist_and_the_path_is_explained():
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    for args in commands("make"):
        assert args and args[0] in targets, args
    # `make` installs into .venv, which is not on the PATH: the README must say how to reach it.
    first_use = README.index("\nfreezelab ")
    assert "source .venv/bin/activate" in README[:first_use] and ".venv/bin/freezelab" in README[:first_use]
