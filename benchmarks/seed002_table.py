"""Seed 002's accuracy / calibration table: every LoRA + Norm schedule against the baseline, paired by seed.

Reads the fine-tuning runs' ``summary.json`` files (``freezelab run configs/seed002_lora_norm.yaml``)
and writes, per schedule: test Acc@1, ECE (15 bins) and NLL as mean ± 95% CI half-width over
seeds, the paired differences against ``baseline`` (same seed, same pretrained base, same
batches) with their 95% CI and paired-t p value, and the two interference measures averaged
over the run's epochs (function-space cosine of the LoRA and Norm steps; the loss interaction's
share of the predicted gain). Then the seed's two claims, and whether lower interference goes
with better calibration (Spearman over all runs, and over the schedules' means).

    python benchmarks/seed002_table.py runs/seed002_lora_norm
    python benchmarks/seed002_table.py benchmarks/results/seed002_summaries_gpu.json   # the pinned GPU runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from scipy import stats as sps

from freezelab.stats import mean_ci, paired_test

ORDER = ["baseline", "warmup-lora-200", "warmup-norm-200", "symmetric-100-100", "warmup-lora-200-alt-25",
         "alt-lora-first-25", "alt-lora-first-50", "alt-lora-first-100", "alt-norm-first-25", "alt-norm-first-50",
         "alt-norm-first-100"]


def load(source: Path) -> pd.DataFrame:
    """The fine-tuning runs' summaries: from the experiment's run folders, or a saved list of them."""
    if source.is_dir():
        rows = [json.loads(p.read_text()) for p in sorted(source.glob("*/*/summary.json"))]
    else:
        rows = json.loads(source.read_text())
    df = pd.DataFrame(rows)
    return df[df["experiment"] == "seed002_lora_norm"] if "experiment" in df else df


def _ci(values: pd.Series, scale: float, digits: int) -> str:
    m, lo, hi = mean_ci(values * scale)
    return f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def _paired(cell: pd.Series, base: pd.Series, scale: float, digits: int) -> tuple[str, str]:
    r = paired_test(cell * scale, base.loc[cell.index] * scale)
    p = f"{r['t_pvalue']:.3f}" if r["t_pvalue"] == r["t_pvalue"] else "no spread"
    return f"{r['mean_diff']:+.{digits}f} [{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]", p


def table(df: pd.DataFrame) -> str:
    base = df[df.variant == "baseline"].set_index("seed")
    lines = ["| schedule | seeds | test Acc@1 (%) | Δ acc vs baseline (pp) [95% CI] | p | ECE-15 (%) | Δ ECE (pp) [95% CI] | p | "
             "NLL | grad cosine | interference share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in [v for v in ORDER if v in set(df.variant)] + sorted(set(df.variant) - set(ORDER)):
        cell = df[df.variant == variant].set_index("seed")
        if variant == "baseline":
            d_acc = p_acc = d_ece = p_ece = "—"
        else:
            d_acc, p_acc = _paired(cell["final_test_acc"], base["final_test_acc"], 100, 2)
            d_ece, p_ece = _paired(cell["test_ece"], base["test_ece"], 100, 2)
        lines.append(f"| {variant} | {len(cell)} | {_ci(cell['final_test_acc'], 100, 2)} | {d_acc} | {p_acc} | "
                     f"{_ci(cell['test_ece'], 100, 2)} | {d_ece} | {p_ece} | {cell['test_nll'].mean():.4f} | "
                     f"{cell['mean_grad_cosine'].mean():+.3f} | {cell['mean_interference_ratio'].mean():+.4f} |")
    first = df.iloc[0]
    lines += ["", f"Data: {first.get('data_source')}; device: {first.get('device')}; torch {first.get('torch_version')}. "
              "Mean ± 95% CI half-width over seeds; Δ paired by seed against the baseline (LoRA, Norm and head all training). "
              "grad cosine: function-space cosine of the LoRA and Norm steps on the probe batch, mean over epochs; "
              "interference share: the loss interaction of the two steps on a held-out batch over their predicted "
              "first-order gain (> 0: the joint step gains less than the two alone), mean over epochs."]
    return "\n".join(lines)


def interference_vs_calibration(df: pd.DataFrame) -> str:
    """Spearman rank correlations between each interference measure and ECE: over runs and over schedule means."""
    lines = ["", "| measure | ρ with ECE over 33 runs (p) | ρ over the 11 schedule means (p) |", "|---|---:|---:|"]
    means = df.groupby("variant")[["mean_grad_cosine", "mean_interference_ratio", "test_ece"]].mean()
    for column, name in (("mean_grad_cosine", "grad cosine"), ("mean_interference_ratio", "interference share")):
        runs = sps.spearmanr(df[column], df["test_ece"])
        schedules = sps.spearmanr(means[column], means["test_ece"])
        lines.append(f"| {name} | {runs.statistic:+.2f} ({runs.pvalue:.3f}) | {schedules.statistic:+.2f} ({schedules.pvalue:.3f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="runs/seed002_lora_norm, or a JSON list of its summaries")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    df = load(args.source)
    text = table(df) + "\n" + interference_vs_calibration(df)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
