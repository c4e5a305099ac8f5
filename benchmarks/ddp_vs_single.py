"""How far a 2-process DDP run lands from the 1-process run of the same config (same global batch).

Measures: for each schedule of the demo grid (digits, MLP 128-128, 20 epochs, global batch 64, Adam,
3 seeds), the largest absolute difference of any final weight, and the differences of the final
validation/test accuracy and train loss, between ``freezelab run`` in one process and
``torchrun --nproc_per_node 2 -m freezelab run`` (gloo, CPU). Rerunning one world size twice gives
identical bits, so every difference is DDP's summation order (two half-batch means averaged vs one
batch mean), grown over the run.

Command: ``python benchmarks/ddp_vs_single.py --out benchmarks/results/ddp_vs_single_cpu.md``

Last result (benchmarks/results/ddp_vs_single_cpu.md): see that file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from freezelab.cli import DEMO  # noqa: E402
from freezelab.run import record  # noqa: E402
from freezelab.study import Experiment, run_experiment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="Markdown file for the table")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    grid = {**DEMO, "experiment": "ddp_vs_single", "seeds": args.seeds}
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "grid.yaml").write_text(json.dumps(grid))
        run_experiment(Experiment.from_dict(grid), tmp / "one", lockstep=1)
        env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "CI": "true"}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "freezelab", "run", str(tmp / "grid.yaml"), "--runs-dir", str(tmp / "two"),
                        "--no-report"], check=True, env=env, capture_output=True)
        rows = []
        for variant in grid["schedules"]:
            for seed in range(args.seeds):
                a = tmp / "one" / grid["experiment"] / variant / f"seed{seed}"
                b = tmp / "two" / grid["experiment"] / variant / f"seed{seed}"
                wa, wb = record.load_checkpoint(a)["model"], record.load_checkpoint(b)["model"]
                sa, sb = record.read_summary(a), record.read_summary(b)
                rows.append((variant, seed, max((wa[k] - wb[k]).abs().max().item() for k in wa),
                             max(v.abs().max().item() for v in wa.values()),
                             sb["final_val_acc"] - sa["final_val_acc"], sb["final_test_acc"] - sa["final_test_acc"],
                             sb["final_train_loss"] - sa["final_train_loss"]))
    lines = [
        f"# 1 process vs 2 DDP processes (gloo, CPU, torch {torch.__version__}, {dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M}Z)",
        "",
        "Command: `python benchmarks/ddp_vs_single.py" + (f" --out {args.out}" if args.out else "") + "`",
        "",
        f"The demo grid: digits, MLP 128-128, {grid['base']['epochs']} epochs, global batch {grid['base']['batch_size']}, "
        f"lr {grid['base']['lr']}, {args.seeds} seeds; differences are 2 processes minus 1.",
        "",
        "| schedule | seed | max weight diff | max weight | val acc diff | test acc diff | train loss diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {v} | {s} | {d:.2e} | {m:.2f} | {va:+.4f} | {ta:+.4f} | {tl:+.2e} |" for v, s, d, m, va, ta, tl in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
