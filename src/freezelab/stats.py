"""Confidence intervals and paired tests for comparing schedules over seeds.

A freezing schedule rarely moves accuracy by more than a few tenths of a point, which is the
same size as seed-to-seed noise. So every number the report shows is a mean over seeds with a
Student-t interval (few seeds -> wide interval, honestly), and every comparison with the
baseline is *paired on the seed*: seed 3 of a variant is compared with seed 3 of the baseline,
because both share data order and initialisation and most of the noise cancels.

Nothing here knows about run folders; it works on plain numbers and DataFrames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["mean_ci", "paired_test", "curve_band"]

# Wilcoxon's signed-rank test cannot reach p < 0.05 below 6 pairs, so it is only reported from here.
WILCOXON_MIN_N = 6


def _t_halfwidth(values: np.ndarray, confidence: float) -> float:
    """Half-width of the Student-t interval for the mean; NaN when n < 2 (no spread to estimate)."""
    n = values.size
    if n < 2:
        return float("nan")
    sem = values.std(ddof=1) / np.sqrt(n)
    return float(sps.t.ppf(0.5 + confidence / 2, n - 1) * sem)


def mean_ci(values: Sequence[float] | np.ndarray | pd.Series, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of ``values``; NaNs are dropped first.

    NaNs are dropped because a metric a run did not log (e.g. peak memory on CPU) should not
    erase the runs that did. One value gives ``(x, nan, nan)``: a single seed says nothing
    about spread. No values gives all NaN. Identical values give a zero-width interval.

    >>> mean_ci([1.0, 2.0, 3.0])  # doctest: +ELLIPSIS
    (2.0, -0.48..., 4.48...)
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    half = _t_halfwidth(x, confidence)
    return mean, mean - half, mean + half


def _align(a: Sequence[float] | pd.Series, b: Sequence[float] | pd.Series) -> tuple[np.ndarray, np.ndarray, list[Any] | None]:
    """Pair ``a`` with ``b``: by index (seed) for two Series, by position otherwise; drop NaN pairs."""
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        both = pd.concat({"a": a, "b": b}, axis=1, join="inner").dropna().sort_index()
        return both["a"].to_numpy(float), both["b"].to_numpy(float), both.index.tolist()
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal lengths, got {x.size} and {y.size}; pass pandas Series indexed by seed to align them")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep], None


#: Differences whose spread is below this (relative to the values) are ties of float32 rounding.
_FLOAT32_TIES = 8 * float(np.finfo(np.float32).eps)


def paired_test(a: Sequence[float] | pd.Series, b: Sequence[float] | pd.Series, confidence: float = 0.95) -> dict[str, Any]:
    """Paired comparison of ``a - b`` over seeds: mean difference, t interval, t-test and Wilcoxon p.

    Pass two Series indexed by seed and only the seeds present in both are used (a variant
    whose seed 4 crashed is compared on the other seeds, never against a different seed).
    Plain sequences are paired by position. Returns a dict with ``n``, ``seeds`` (aligned
    index labels, or None for sequences), ``mean_diff``, ``ci_low``, ``ci_high``,
    ``t_pvalue`` (paired t-test, NaN when n < 2 or all differences are equal, where t is
    undefined), ``no_spread`` (True when n >= 2 and the differences are equal up to float32
    rounding: the reason ``t_pvalue`` is NaN, which the report states) and ``wilcoxon_pvalue``
    (None when n < 6; NaN when every difference is zero).

    >>> r = paired_test(pd.Series([0.90, 0.91, 0.92]), pd.Series([0.89, 0.91, 0.90]))
    >>> r["n"], round(r["mean_diff"], 4)
    (3, 0.01)
    """
    x, y, seeds = _align(a, b)
    d = x - y
    n = d.size
    mean, low, high = mean_ci(d, confidence)
    spread = d.std(ddof=1) if n >= 2 else 0.0
    # Differences equal up to rounding have no variance to test against: t would be +-inf or 0/0.
    # Run metrics are float32 (accuracies computed on the device), so "equal" means equal to
    # float32 rounding, not to float64's: two seeds both 7.22 pp apart differ by ~1e-8 here.
    degenerate = n < 2 or spread <= _FLOAT32_TIES * max(1.0, float(np.abs(x).max()), float(np.abs(y).max()))
    if degenerate:
        t_p = float("nan")
        low, high = (mean, mean) if n >= 2 else (low, high)
    else:
        t_stat = mean / (spread / np.sqrt(n))
        t_p = float(2 * sps.t.sf(abs(t_stat), n - 1))
    wilcoxon_p: float | None = None
    if n >= WILCOXON_MIN_N:
        wilcoxon_p = float("nan") if not np.any(d) else float(sps.wilcoxon(d).pvalue)
    return {
        "n": n,
        "seeds": seeds,
        "mean_diff": mean,
        "ci_low": low,
        "ci_high": high,
        "t_pvalue": t_p,
        "no_spread": bool(n >= 2 and degenerate),
        "wilcoxon_pvalue": wilcoxon_p,
    }


def curve_band(df: pd.DataFrame, x: str, y: str, by: str | Sequence[str], confidence: float = 0.95) -> pd.DataFrame:
    """Mean and t interval of ``y`` over seeds at each ``x`` for each ``by`` group, for band plots.

    Returns one row per (by..., x) with columns ``mean``, ``low``, ``high``, ``n``, sorted by
    group then ``x``. Rows where ``y`` is NaN are ignored, so a metric logged only on some
    epochs still plots.

    >>> df = pd.DataFrame({"variant": ["a"] * 4, "epoch": [1, 1, 2, 2], "val_acc": [0.5, 0.7, 0.8, 0.8]})
    >>> curve_band(df, "epoch", "val_acc", "variant")[["epoch", "mean", "n"]].to_numpy().tolist()
    [[1.0, 0.6, 2.0], [2.0, 0.8, 2.0]]
    """
    keys = [by] if isinstance(by, str) else list(by)
    rows = []
    for group, part in df.dropna(subset=[y]).groupby([*keys, x], sort=True):
        mean, low, high = mean_ci(part[y].to_numpy(float), confidence)
        rows.append((*group, mean, low, high, len(part)))
    return pd.DataFrame(rows, columns=[*keys, x, "mean", "low", "high", "n"])
