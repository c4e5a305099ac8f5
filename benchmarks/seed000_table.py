"""Seed 000's table: each schedule against standard training *under the same optimizer policy*, paired by seed.

The experiment report pairs every variant with one baseline; seed 000's grid has two policies
(the seed's ``recreate`` and ``keep``), and the fair comparison for an alternating schedule is
standard training with the same policy. This script reads the runs' ``summary.json`` files (or
the ``summaries.json`` that ``benchmarks/gpu_image_session.sh`` collects) and writes that table.

    python benchmarks/seed000_table.py runs/seed000_cifar10            # run folders
    python benchmarks/seed000_table.py summaries.json --out benchmarks/results/seed000_cifar10_gpu.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from freezelab.stats import mean_ci, paired_test


def load(source: Path) -> pd.DataFrame:
    if source.is_dir():
        rows = [json.loads(p.read_text()) for p in sorted(source.glob("*/*/summary.json"))]
    else:
        rows = json.loads(source.read_text())
    return pd.DataFrame(rows)


def table(df: pd.DataFrame) -> str:
    df = df.assign(schedule=df["variant"].str.rsplit("_", n=1).str[0], policy=df["variant"].str.rsplit("_", n=1).str[1])
    lines = ["| policy | schedule | seeds | final test acc (%) | Δ vs standard, same policy (pp) [95% CI] | p (paired t) | "
             "s / epoch | total time (s) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for policy in ("recreate", "keep"):
        base = df[(df.policy == policy) & (df.schedule == "standard")].set_index("seed")["final_test_acc"]
        for schedule in ("standard", "alternate-epoch", "alternate-batch"):
            cell = df[(df.policy == policy) & (df.schedule == schedule)].set_index("seed")
            if cell.empty:
                continue
            m, lo, hi = mean_ci(cell["final_test_acc"] * 100)
            acc = f"{m:.2f} ± {(hi - lo) / 2:.2f}"
            if schedule == "standard":
                delta, p = "—", "—"
            else:
                r = paired_test(cell["final_test_acc"] * 100, base * 100)
                delta = f"{r['mean_diff']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
                p = f"{r['t_pvalue']:.3f}" if r["t_pvalue"] == r["t_pvalue"] else "no spread"
            lines.append(f"| {policy} | {schedule} | {len(cell)} | {acc} | {delta} | {p} | "
                         f"{cell['avg_epoch_time_s'].mean():.2f} | {cell['total_time_s'].mean():.1f} |")
    first = df.iloc[0]
    lines += ["", f"Data: {first.get('data_source')}; device: {first.get('device')}. Mean ± 95% CI half-width over seeds; "
              "Δ is paired by seed against standard training with the same policy."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = table(load(args.source))
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
