"""Accuracy against wall time per variant: mean ± CI over seeds, and the non-dominated front.

Freezing is worth it only if it buys time without costing accuracy, so the question a study
answers is which variants no other variant beats on both axes at once. A variant is on the
*front* when no other variant has a mean time at most its own and a mean accuracy at least its
own, with one of the two strictly better. The front is computed on the means; the intervals
are drawn beside it so that a reader sees when two front points are within noise of each other
(the paired tests of the summary table say that precisely).

>>> summaries = pd.DataFrame({"variant": ["a", "a", "b", "b", "c", "c"], "seed": [0, 1] * 3,
...     "final_test_acc": [0.92, 0.94, 0.91, 0.91, 0.80, 0.82], "total_time_s": [10, 11, 7, 8, 9, 9]})
>>> pareto_table(summaries)["on_front"].to_dict()  # by mean time; c is slower and less accurate than b
{'b': True, 'c': False, 'a': True}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from freezelab.stats import mean_ci

__all__ = ["pareto_table", "pareto_front", "plot_pareto_variants", "format_pareto"]

ACCURACY = "final_test_acc"
TIME = "total_time_s"


def pareto_front(time: Sequence[float], acc: Sequence[float]) -> list[bool]:
    """Which points no other point dominates (time lower is better, accuracy higher).

    >>> pareto_front([1, 2, 3, 2], [0.5, 0.7, 0.6, 0.7])
    [True, True, False, True]
    """
    t, a = np.asarray(time, float), np.asarray(acc, float)
    out = []
    for i in range(len(t)):
        dominated = (t <= t[i]) & (a >= a[i]) & ((t < t[i]) | (a > a[i]))
        out.append(bool(np.isfinite(t[i]) and np.isfinite(a[i]) and not dominated.any()))
    return out


def pareto_table(summaries: pd.DataFrame, accuracy: str = ACCURACY, time: str = TIME,
                 confidence: float = 0.95, order: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per variant: seeds, accuracy and time as mean with CI bounds, and ``on_front``.

    ``accuracy`` and ``time`` are ``summary.json`` keys (accuracy as a fraction). Rows follow
    ``order`` (e.g. the summary table's) when given, else the variants sorted by mean time.
    """
    rows = {}
    for variant, runs in summaries.groupby("variant", sort=False):
        acc, acc_low, acc_high = mean_ci(runs[accuracy].to_numpy(float), confidence)
        t, t_low, t_high = mean_ci(runs[time].to_numpy(float), confidence)
        rows[variant] = {"seeds": len(runs), "acc": acc, "acc_low": acc_low, "acc_high": acc_high,
                         "time": t, "time_low": t_low, "time_high": t_high}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "variant"
    table["on_front"] = pareto_front(table["time"], table["acc"])
    table = table.reindex([v for v in order if v in table.index]) if order is not None else table.sort_values("time")
    table.attrs.update(accuracy=accuracy, time=time, confidence=confidence)
    return table


def format_pareto(table: pd.DataFrame) -> pd.DataFrame:
    """The printable table: accuracy in %, time in s, each as ``mean ± half-width``, the front flagged."""

    def cell(mean: float, low: float, high: float, scale: float, decimals: int) -> str:
        if not np.isfinite(low):
            return f"{mean * scale:.{decimals}f}"
        return f"{mean * scale:.{decimals}f} ± {(high - low) / 2 * scale:.{decimals}f}"

    return pd.DataFrame(
        {
            "seeds": table["seeds"],
            f"{table.attrs.get('accuracy', ACCURACY)} (%)": [cell(r.acc, r.acc_low, r.acc_high, 100, 2) for r in table.itertuples()],
            f"{table.attrs.get('time', TIME)} (s)": [cell(r.time, r.time_low, r.time_high, 1, 1) for r in table.itertuples()],
            "Pareto front": ["yes" if f else "" for f in table["on_front"]],
        },
        index=table.index,
    )


def plot_pareto_variants(table: pd.DataFrame) -> Figure:
    """Mean accuracy vs mean wall time per variant with CI bars on both axes; the front joined and ringed."""
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(table))]
    for (variant, r), color in zip(table.iterrows(), colors):
        xerr = [[r.time - r.time_low], [r.time_high - r.time]] if np.isfinite(r.time_low) else None
        yerr = [[100 * (r.acc - r.acc_low)], [100 * (r.acc_high - r.acc)]] if np.isfinite(r.acc_low) else None
        ax.errorbar(r.time, 100 * r.acc, xerr=xerr, yerr=yerr, fmt="o", color=color, capsize=3, label=variant)
        if r.on_front:
            ax.scatter([r.time], [100 * r.acc], s=160, facecolors="none", edgecolors="black", zorder=3)
    front = table[table["on_front"]].sort_values("time")
    if len(front):
        ax.step(front["time"], 100 * front["acc"], where="post", color="black", linestyle="--", linewidth=1,
                label="Pareto front (ringed)")
    level = int(round(100 * table.attrs.get("confidence", 0.95)))
    ax.set(title=f"accuracy vs wall time (mean, {level}% CI over seeds)",
           xlabel=f"{table.attrs.get('time', TIME)} (s)", ylabel=f"{table.attrs.get('accuracy', ACCURACY)} (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", loc="best")
    return fig
