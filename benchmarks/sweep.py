"""Seed 004's whole study (6 activations x {SGD, Adam} x 5 seeds x 30 epochs = 60 runs) on one GPU.

The runs are small and launch-bound, so one run leaves most of the GPU idle. On a GPU the
runner trains up to ``--lockstep`` runs together in one process, each on its own CUDA stream
inside shared graphs (``freezelab.study.lockstep``); ``--jobs`` worker processes take whatever cannot
share (and everything on a CPU). The benchmark reports the wall time of the whole grid,
everything included (data loading, compiling, capturing, evaluation, logs, checkpoints), then
trains three of its runs again *alone* and compares their curves with the sweep's (same seed
-> same result). It can also run any other experiment file (``--config``), e.g. seed 001's,
and packs the run folders (without checkpoints) and their reports into one archive.

    FREEZELAB_DATA=.data python benchmarks/sweep.py --out $OUT
    FREEZELAB_DATA=.data python benchmarks/sweep.py --lockstep 1 --jobs 12 --out $OUT   # processes only
    FREEZELAB_DATA=../shared/data python benchmarks/sweep.py --epochs 1 --seeds 1 --jobs 2   # CPU smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import torch

from freezelab.config import RunConfig
from freezelab.report import write_report
from freezelab.run import train
from freezelab.study import load_experiment, run_experiment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", action="append", default=None, help="experiment file(s); default seed 004's study")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--lockstep", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--save-every", type=float, default=None,
                    help="seconds between a run's checkpoints (the run option save_every_s; 0 = every epoch)")
    ap.add_argument("--runs-dir", default="/tmp/freezelab_sweep")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--no-archive", action="store_true", help="skip the archive of run folders")
    args = ap.parse_args()
    root = os.environ.get("FREEZELAB_DATA")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for config in args.config or ["configs/seed004_fashion.yaml"]:
        overrides = {"data_root": root} if root else {}
        if args.epochs:
            overrides["epochs"] = args.epochs
        if args.seeds:
            overrides["seeds"] = args.seeds
        if args.save_every is not None:
            overrides["save_every_s"] = args.save_every
        exp = load_experiment(config, overrides)
        n = len(exp.configs())
        t0 = time.perf_counter()
        outcomes = run_experiment(exp, args.runs_dir, jobs=args.jobs, lockstep=args.lockstep)
        wall = time.perf_counter() - t0
        failed = [o for o in outcomes if o.status == "failed"]
        for o in failed[:3]:
            print(f"FAILED {o.run_dir}: {o.error}", flush=True)
        if len(failed) == len(outcomes):
            raise SystemExit(f"every run of {exp.name} failed")
        # Same seed, alone: three runs of the grid (first, middle, last) again, each by itself.
        configs = exp.configs()
        checked = [configs[0], configs[len(configs) // 2], configs[-1]]
        diff_loss = diff_acc = 0.0
        for cfg in checked:
            alone = train(cfg, progress=False).epochs
            together = pd.read_parquet(exp.run_dir(args.runs_dir, cfg) / "epochs.parquet")
            diff_loss = max(diff_loss, float((alone["train_loss"] - together["train_loss"]).abs().max()))
            diff_acc = max(diff_acc, float((alone["val_acc"] - together["val_acc"]).abs().max()))
        report = write_report(Path(args.runs_dir) / exp.name)
        records.append({"experiment": exp.name, "config": config, "runs": n, "jobs": args.jobs, "lockstep": args.lockstep,
                        "save_every_s": configs[0].save_every_s if configs else RunConfig().save_every_s,
                        "wall_s": wall, "failed": [f"{o.run_dir}: {o.error}" for o in failed],
                        "check_runs": [f"{c.variant}/seed{c.seed}" for c in checked],
                        "max_abs_diff_train_loss_alone_vs_sweep": diff_loss, "max_abs_diff_val_acc_alone_vs_sweep": diff_acc,
                        "report": str(report)})
        print(records[-1], flush=True)
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    record = {"benchmark": "sweep", "device": dev, "torch": torch.__version__,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "experiments": records}
    tag = "gpu" if torch.cuda.is_available() else "cpu"
    (out / f"sweep_{tag}.json").write_text(json.dumps(record, indent=2))
    lines = [f"# Sweeps on one device ({dev}, torch {torch.__version__}, {record['date']})", "",
             f"Command: `{record['command']}`", "",
             "| experiment | runs | lockstep | worker processes | checkpoint every (s) | wall time (s) | failed | 3 runs alone: max |Δ train loss| | max |Δ val acc| |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['experiment']} | {r['runs']} | {r['lockstep']} | {r['jobs']} | {r.get('save_every_s', 0):g} | {r['wall_s']:.1f} | {len(r['failed'])} | "
                     f"{r['max_abs_diff_train_loss_alone_vs_sweep']:.2e} | {r['max_abs_diff_val_acc_alone_vs_sweep']:.2e} |")
    (out / f"sweep_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.no_archive:
        with tarfile.open(out / f"sweep_runs_{tag}.tar.gz", "w:gz") as tar:
            tar.add(args.runs_dir, arcname="runs", filter=lambda t: None if t.name.endswith("checkpoint.pt") else t)


if __name__ == "__main__":
    main()
