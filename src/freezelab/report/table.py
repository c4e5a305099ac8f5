"""The headline table: paired differences vs the baseline first, then per-variant means and costs.

The numeric table (`summary_table`) and its printable form (`format_table`, `markdown_table`)
are kept apart so code can test or re-plot the numbers while people read the strings.

What the table refuses to say: a p-value where the paired differences have no spread (equal
on every seed up to float32 rounding; the cell reads "no spread"), and a speed or memory
figure that is not a run's own. Runs trained in a lockstep group share one clock and one
device, so their measured times are the group's; for those variants the cost columns come
from the variant's timing probe (`freezelab.run.probe`) and the "timing" column says
"probe", or read "—" with "shared, not probed" when there is none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from freezelab.stats import mean_ci, paired_test

__all__ = [
    "METRICS",
    "QUALITY",
    "COST",
    "PAIRED",
    "resolve_baseline",
    "summary_table",
    "format_table",
    "table_parts",
    "markdown_table",
    "verdicts",
]


@dataclass(frozen=True)
class Metric:
    """A `summary.json` key shown in the table: ``scale`` converts to the unit in ``label``."""

    key: str
    label: str
    scale: float = 1.0
    decimals: int = 2
    probe: str | None = None  # the key of timing_probe.json that estimates it (cost metrics only)


#: What a run learned: means over seeds.
QUALITY = [
    Metric("final_val_acc", "final val acc (%)", 100),
    Metric("best_val_acc", "best val acc (%)", 100),
    Metric("final_test_acc", "final test acc (%)", 100),
    Metric("epoch_to_90pct_best", "epoch to 90% best", 1, 1),
    Metric("stability", "stability", 1, 3),
    Metric("test_ece", "test ECE", 1, 4),
]
#: What it cost: measured where each run was timed alone, else from the variant's timing probe.
COST = [
    Metric("step_time_ms", "step time (ms)", 1, 3, probe="step_ms"),
    Metric("throughput_samples_per_s", "throughput (samples/s)", 1, 0, probe="throughput_samples_per_s"),
    Metric("peak_mem_bytes", "peak mem (MiB)", 1 / 2**20, 0, probe="peak_mem_bytes"),
    Metric("avg_epoch_time_s", "epoch time (s)", 1, 2),
    Metric("total_time_s", "total time (s)", 1, 1),
]
METRICS = QUALITY + COST
# Paired differences vs the baseline, in percentage points.
PAIRED = [
    Metric("final_val_acc", "Δ final val acc (pp)", 100),
    Metric("final_test_acc", "Δ final test acc (pp)", 100),
]
STATS = ["mean", "low", "high"]
PAIRED_STATS = ["mean", "low", "high", "p_t", "p_wilcoxon", "n", "no_spread"]
DASH = "—"
#: The "timing" column: where a variant's cost figures come from.
TIMING = {"measured": "measured", "probe": "probe", "shared": "shared, not probed"}


def resolve_baseline(summaries: pd.DataFrame, baseline: str = "standard") -> tuple[str | None, str]:
    """Find the baseline variant: a variant label, or the schedule name of exactly one variant.

    Returns ``(variant or None, note)``; the note says why paired tests are skipped when no
    single baseline exists (e.g. every cell of an activation grid uses schedule "standard").

    >>> resolve_baseline(pd.DataFrame({"variant": ["a", "b"], "schedule": ["standard", "alternate"]}))
    ('a', "baseline: variant 'a' (schedule 'standard')")
    """
    variants = sorted(summaries["variant"].unique())
    if baseline in variants:
        return baseline, f"baseline: variant {baseline!r}"
    matches = sorted(summaries.loc[summaries["schedule"] == baseline, "variant"].unique())
    if len(matches) == 1:
        return matches[0], f"baseline: variant {matches[0]!r} (schedule {baseline!r})"
    if not matches:
        return None, f"no variant named or scheduled {baseline!r}; paired tests skipped (choose a baseline from {variants})"
    return None, f"several variants use schedule {baseline!r} ({', '.join(matches)}); paired tests skipped, pass one of them as the baseline"


def _check_pairable(summaries: pd.DataFrame) -> None:
    """Pairing is by (variant, seed); the same pair from two experiments would be ambiguous."""
    dup = summaries[summaries.duplicated(["variant", "seed"], keep=False)]
    if not dup.empty:
        raise ValueError(
            f"variant/seed pairs appear in several experiments ({sorted(dup['experiment'].unique())}); "
            "report one experiment folder at a time"
        )


def _per_seed(summaries: pd.DataFrame, variant: str, key: str) -> pd.Series:
    """One metric of one variant as a Series indexed by seed (NaN where the run did not log it)."""
    rows = summaries[summaries["variant"] == variant]
    values = rows[key] if key in rows else pd.Series(np.nan, index=rows.index)
    return pd.Series(pd.to_numeric(values, errors="coerce").to_numpy(float), index=rows["seed"].to_numpy())


def timing_source(summaries: pd.DataFrame, variant: str, probes: dict[str, dict] | None) -> str:
    """``measured`` if every run of the variant was timed alone, else ``probe`` or ``shared`` (no probe)."""
    rows = summaries[summaries["variant"] == variant]
    alone = rows["timed_alone"] if "timed_alone" in rows else pd.Series(True, index=rows.index)
    if bool(alone.fillna(False).astype(bool).all()):
        return "measured"
    return "probe" if probes and variant in probes else "shared"


def _cost_cells(summaries: pd.DataFrame, variant: str, source: str, probe: dict | None, confidence: float) -> dict:
    """Cost columns of one variant from the source :func:`timing_source` chose; NaN where it has none."""
    cells = {}
    for m in COST:
        if source == "measured":
            values = np.multiply(mean_ci(_per_seed(summaries, variant, m.key), confidence), m.scale)
        elif source == "probe" and m.probe and probe and probe.get(m.probe) is not None:
            values = (float(probe[m.probe]) * m.scale, float("nan"), float("nan"))
        else:
            values = (float("nan"),) * 3
        cells |= {(m.label, s): float(v) for s, v in zip(STATS, values)}
    return cells


def summary_table(summaries: pd.DataFrame, baseline: str = "standard", confidence: float = 0.95,
                  probes: dict[str, dict] | None = None) -> pd.DataFrame:
    """Numeric headline table: one row per variant (baseline first), columns in display units.

    Columns are a MultiIndex: ``("seeds", "n")``; ``(Δ label, "mean"|"low"|"high"|"p_t"|
    "p_wilcoxon"|"n"|"no_spread")`` for each of `PAIRED`, computed on the seeds shared with the
    baseline; ``(metric label, "mean"|"low"|"high")`` for each of `QUALITY` and `COST`. Cost
    columns are measured means where the variant's runs were timed alone, the probe's figure
    (no interval) where they shared a lockstep group and ``probes`` has the variant, else NaN.
    ``attrs`` holds ``baseline`` (variant or None), ``note``, ``confidence`` and ``timing``
    (variant -> "measured" | "probe" | "shared").

    >>> table = summary_table(summaries)  # doctest: +SKIP
    >>> table.loc["alternate-epoch", ("Δ final val acc (pp)", "p_t")]  # doctest: +SKIP
    """
    _check_pairable(summaries)
    base, note = resolve_baseline(summaries, baseline)
    others = sorted(v for v in summaries["variant"].unique() if v != base)
    order = ([base] if base else []) + others
    rows, timing = {}, {}
    for variant in order:
        row: dict[tuple[str, str], float] = {("seeds", "n"): float((summaries["variant"] == variant).sum())}
        for m in PAIRED:
            row |= _paired_cells(summaries, variant, base, m, confidence)
        for m in QUALITY:
            mean_low_high = np.multiply(mean_ci(_per_seed(summaries, variant, m.key), confidence), m.scale)
            row |= {(m.label, s): float(v) for s, v in zip(STATS, mean_low_high)}
        timing[variant] = timing_source(summaries, variant, probes)
        row |= _cost_cells(summaries, variant, timing[variant], (probes or {}).get(variant), confidence)
        rows[variant] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "variant"
    table.attrs |= {"baseline": base, "note": note, "confidence": confidence, "timing": timing}
    return table


def _paired_cells(summaries: pd.DataFrame, variant: str, base: str | None, m: Metric, confidence: float) -> dict[tuple[str, str], float]:
    """Paired-difference cells of one variant; NaN for the baseline itself or without a baseline."""
    cells = {(m.label, s): float("nan") for s in PAIRED_STATS}
    if base is None or variant == base:
        return cells
    r = paired_test(_per_seed(summaries, variant, m.key), _per_seed(summaries, base, m.key), confidence)
    wilcoxon = r["wilcoxon_pvalue"]
    return {
        (m.label, "mean"): r["mean_diff"] * m.scale,
        (m.label, "low"): r["ci_low"] * m.scale,
        (m.label, "high"): r["ci_high"] * m.scale,
        (m.label, "p_t"): r["t_pvalue"],
        (m.label, "p_wilcoxon"): float("nan") if wilcoxon is None else wilcoxon,
        (m.label, "n"): float(r["n"]),
        (m.label, "no_spread"): float(r["no_spread"]),
    }


def _fmt_p(p: float) -> str:
    """p-values to two significant digits; tiny ones as an inequality, which is all they mean."""
    if np.isnan(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.2g}"


def _fmt_mean_ci(mean: float, low: float, high: float, decimals: int) -> str:
    """``mean ± half-width``; the mean alone when there is one seed (no interval to show)."""
    if np.isnan(mean):
        return DASH
    if np.isnan(low):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {(high - low) / 2:.{decimals}f}"


def _significance(row: pd.Series, alpha: float) -> str:
    """The verdict cell of one paired comparison, saying why when there is no test."""
    n = int(row["n"])
    if n == 0:
        return "no seeds in common"
    if n < 2:
        return "1 seed: no test"
    if row["no_spread"]:
        return "tie: same Δ on every seed"
    return "significant" if row["p_t"] < alpha else "not significant"


def format_table(table: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Strings for people, comparison first: ``Δ [low, high]``, p-values, significance; then means.

    The baseline row reads "baseline" in the comparison columns; without a baseline they read
    "no baseline", so a missing comparison is visible in the table itself. A p-value cell reads
    "no spread" where the differences are equal on every seed (up to float32 rounding), and
    the Wilcoxon column is left out when no variant has the 6 paired seeds it needs. The
    "timing" column says where each row's cost columns come from (`TIMING`).

    >>> print(markdown_table(format_table(summary_table(summaries))))  # doctest: +SKIP
    """
    base = table.attrs.get("baseline")
    out = pd.DataFrame(index=table.index)
    out["seeds"] = table[("seeds", "n")].astype(int).astype(str)
    for m in PAIRED:
        c = table[m.label]
        name = m.label.split(" (")[0].removeprefix("Δ final ")
        cells: dict[str, list[str]] = {m.label: [], f"p {name} (t)": [], f"p {name} (W)": [], f"{name}: significance": []}
        for variant, row in c.iterrows():
            if base is None or variant == base:
                own = "no baseline" if base is None else "baseline"
                for column, value in zip(cells, (own, DASH, DASH, own)):
                    cells[column].append(value)
                continue
            no_spread = bool(row["no_spread"])
            cells[m.label].append(_fmt_diff(row["mean"], row["low"], row["high"], m.decimals))
            cells[f"p {name} (t)"].append("no spread" if no_spread else _fmt_p(row["p_t"]))
            cells[f"p {name} (W)"].append(_fmt_p(row["p_wilcoxon"]))
            cells[f"{name}: significance"].append(_significance(row, alpha))
        if not (c["p_wilcoxon"].notna().any()):
            del cells[f"p {name} (W)"]
        for column, values in cells.items():
            out[column] = values
    for m in QUALITY:
        c = table[m.label]
        out[m.label] = [_fmt_mean_ci(a, b, d, m.decimals) for a, b, d in zip(c["mean"], c["low"], c["high"])]
    timing = table.attrs.get("timing", {})
    out["timing"] = [TIMING[timing.get(v, "measured")] for v in table.index]
    for m in COST:
        c = table[m.label]
        out[m.label] = [_fmt_mean_ci(a, b, d, m.decimals) for a, b, d in zip(c["mean"], c["low"], c["high"])]
    return out


def table_parts(shown: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """`format_table`'s columns as three narrow tables a page shows one under the other.

    ``(title, table)`` for the comparison with the baseline, the means, and the costs (with
    the "timing" column saying where they come from); each keeps the seeds column.
    """
    quality = [m.label for m in QUALITY]
    cost = ["timing", *(m.label for m in COST)]
    comparison = [c for c in shown.columns if c not in quality and c not in cost]
    return [
        ("Comparison with the baseline", shown[comparison]),
        ("Means over seeds", shown[["seeds", *quality]]),
        ("Cost", shown[["seeds", *cost]]),
    ]


def _fmt_diff(mean: float, low: float, high: float, decimals: int) -> str:
    """Signed difference with its interval, e.g. ``-0.40 [-0.90, +0.10]``."""
    if np.isnan(mean):
        return DASH
    if np.isnan(low):
        return f"{mean:+.{decimals}f}"
    return f"{mean:+.{decimals}f} [{low:+.{decimals}f}, {high:+.{decimals}f}]"


def markdown_table(df: pd.DataFrame) -> str:
    """GitHub Markdown for a DataFrame of strings (index first), without needing `tabulate`.

    >>> print(markdown_table(pd.DataFrame({"acc": ["91.0"]}, index=pd.Index(["a"], name="variant"))))
    | variant | acc |
    | :--- | ---: |
    | a | 91.0 |
    """
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [df.index.name or "", *map(str, df.columns)]
    lines = [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "| " + " | ".join([":---"] + ["---:"] * len(df.columns)) + " |",
    ]
    lines += ["| " + " | ".join(cell(v) for v in (index, *row)) + " |" for index, row in zip(df.index, df.itertuples(index=False))]
    return "\n".join(lines)


def verdicts(table: pd.DataFrame, alpha: float = 0.05) -> list[str]:
    """One sentence per non-baseline variant on final val acc, paired over seeds.

    >>> verdicts(summary_table(summaries))  # doctest: +SKIP
    ['alternate-epoch: -0.40 pp (95% CI -0.90 to +0.10, 3 paired seeds), p=0.12 — not significant']
    """
    base = table.attrs.get("baseline")
    if base is None:
        return [table.attrs.get("note", "no baseline; paired tests skipped")]
    if len(table.index) == 1:
        return [f"only the baseline {base!r} was run; nothing to compare"]
    level = f"{table.attrs.get('confidence', 0.95):.0%}"
    m = PAIRED[0]
    out = []
    for variant, row in table[m.label].iterrows():
        if variant == base:
            continue
        n = int(row["n"])
        if n == 0:
            out.append(f"{variant} vs {base}: no seeds in common, nothing to pair")
            continue
        head = f"{variant} vs {base}: {row['mean']:+.2f} pp final val acc"
        if n < 2 or row["no_spread"] or np.isnan(row["p_t"]):
            why = ("too few paired seeds for a test" if n < 2 else
                   "the same difference on every seed (equal up to float32 rounding): no spread, so no p-value")
            out.append(f"{head} ({n} paired seed{'s' if n != 1 else ''}) — {why}")
            continue
        significant = "significant" if row["p_t"] < alpha else "not significant"
        out.append(
            f"{head} ({level} CI {row['low']:+.2f} to {row['high']:+.2f}, {n} paired seeds), "
            f"p={_fmt_p(row['p_t'])} — {significant}"
        )
    return out
