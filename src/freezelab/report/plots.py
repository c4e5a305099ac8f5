"""Report figures: each function takes the collected tables and returns a matplotlib Figure.

Figures are built with `matplotlib.figure.Figure` directly rather than pyplot, so nothing is
kept in a global figure registry and no GUI backend is needed (saving uses Agg). Every figure
must draw for one run, one epoch, or a logger that skipped optional columns; what is missing
is shown as "not logged" in the panel instead of raising, so one gap never loses the report.

>>> epochs, summaries = collect_runs("runs/grid")  # doctest: +SKIP
>>> plot_accuracy(epochs, order=["standard", "alternate-epoch"]).savefig("accuracy.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from freezelab.stats import curve_band

__all__ = [
    "FIGURES",
    "plot_loss",
    "plot_accuracy",
    "plot_lr",
    "plot_grad_flow",
    "plot_grad_final",
    "plot_dead_units",
    "plot_timeline",
    "plot_pareto",
    "plot_reliability",
]

GRAD = "grad_mean_abs:"
DEAD = "dead_pct:"
PANEL = (4.2, 3.0)  # inches per panel; small enough that a grid of variants stays readable


def _order(variants: Sequence[str] | pd.Series, order: Sequence[str] | None) -> list[str]:
    """Variants in the caller's order (the table's, baseline first) or sorted."""
    present = set(variants)
    if order is None:
        return sorted(present)
    return [v for v in order if v in present]


def _color(variant: str, order: Sequence[str]) -> str:
    """The same variant gets the same colour in every figure, because ``order`` is shared."""
    return f"C{list(order).index(variant) % 10}"


def _figure(n_panels: int, ncols: int = 3, sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """A grid of panels with constrained layout; returns the axes as a flat list."""
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(PANEL[0] * ncols, PANEL[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey=sharey, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _not_logged(ax: Axes, what: str) -> None:
    """Placeholder for data the runs did not log, so the reader sees the gap, not an empty plot."""
    ax.text(0.5, 0.5, f"{what}: not logged", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _placeholder_figure(what: str) -> Figure:
    """A one-panel figure that only says ``what`` was not logged."""
    fig, (ax,) = _figure(1)
    _not_logged(ax, what)
    return fig


def _epoch_axis(ax: Axes) -> None:
    """Epochs are whole numbers; without this a one-epoch run gets ticks at 0.96, 0.98, ..."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _has(df: pd.DataFrame, column: str) -> bool:
    """True when ``column`` exists and holds at least one value."""
    return column in df and bool(df[column].notna().any())


def _band_panel(ax: Axes, epochs: pd.DataFrame, y: str, order: Sequence[str], scale: float, ylabel: str) -> None:
    """Mean over seeds with a 95% t band per variant; a single seed draws the mean alone."""
    ax.set_title(ylabel)
    if not _has(epochs, y):
        _not_logged(ax, y)
        return
    band = curve_band(epochs, "epoch", y, "variant")
    for variant in _order(band["variant"], order):
        b = band[band["variant"] == variant]
        n = int(epochs.loc[epochs["variant"] == variant, "seed"].nunique())
        color = _color(variant, order)
        ax.plot(b["epoch"], b["mean"] * scale, marker="o", markersize=3, color=color, label=f"{variant} (n={n})")
        ax.fill_between(b["epoch"], b["low"] * scale, b["high"] * scale, color=color, alpha=0.2, linewidth=0)
    _epoch_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_loss(epochs: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """Train and validation loss per variant: mean over seeds with 95% CI bands."""
    order = _order(epochs["variant"], order)
    fig, axes = _figure(2)
    _band_panel(axes[0], epochs, "train_loss", order, 1.0, "train loss")
    _band_panel(axes[1], epochs, "val_loss", order, 1.0, "val loss")
    return fig


def plot_accuracy(epochs: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """Validation and test accuracy (%) per variant: mean over seeds with 95% CI bands."""
    order = _order(epochs["variant"], order)
    fig, axes = _figure(2)
    _band_panel(axes[0], epochs, "val_acc", order, 100.0, "val accuracy (%)")
    _band_panel(axes[1], epochs, "test_acc", order, 100.0, "test accuracy (%)")
    return fig


def plot_lr(epochs: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """Learning rate per epoch and variant (log scale when positive: schedules span decades)."""
    if not _has(epochs, "lr"):
        return _placeholder_figure("learning rate")
    order = _order(epochs["variant"], order)
    fig, (ax,) = _figure(1)
    lr = epochs.groupby(["variant", "epoch"])["lr"].mean().dropna()
    for variant in order:
        if variant not in lr.index:
            continue
        curve = lr.loc[variant]
        ax.plot(curve.index, curve.to_numpy(), marker="o", markersize=3, color=_color(variant, order), label=variant)
    if (lr > 0).all():
        ax.set_yscale("log")
    ax.set(title="learning rate", ylabel="lr")
    _epoch_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _layer_columns(epochs: pd.DataFrame, prefix: str, suffix: str = "") -> list[str]:
    """Per-layer columns in logged order (input to output), e.g. ``grad_mean_abs:fc1.weight``."""
    return [c for c in epochs.columns if c.startswith(prefix) and c.endswith(suffix) and epochs[c].notna().any()]


def _positive(frame: pd.DataFrame | pd.Series) -> pd.DataFrame | pd.Series:
    """An exactly zero gradient means "no gradient" (e.g. frozen), not "tiny": log axes cannot show it."""
    return frame.where(frame > 0)


def _per_layer_panels(epochs: pd.DataFrame, columns: list[str], order: list[str], title: str, ylabel: str, log: bool) -> Figure:
    """One panel per variant, one line per layer: the layer's mean over seeds at each epoch."""
    fig, axes = _figure(len(order), sharey=True)
    means = epochs.groupby(["variant", "epoch"])[columns].mean()
    if log:
        means = _positive(means)
    for ax, variant in zip(axes, order):
        table = means.loc[variant]
        for column in columns:
            ax.plot(table.index, table[column], marker="o", markersize=3, label=column.split(":", 1)[1])
        if log and bool(table.notna().any().any()):
            ax.set_yscale("log")
        ax.set(title=f"{title}: {variant}", ylabel=ylabel)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return fig


def plot_grad_flow(epochs: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """Mean |grad| of each weight over epochs, one panel per variant (log scale; zeros not drawn)."""
    columns = _layer_columns(epochs, GRAD, "weight")
    if not columns:
        return _placeholder_figure("gradient flow (grad_mean_abs:*weight)")
    return _per_layer_panels(epochs, columns, _order(epochs["variant"], order), "gradient flow", "mean |grad|", log=True)


def plot_dead_units(epochs: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """Percentage of dead units per activation layer over epochs, one panel per variant."""
    columns = _layer_columns(epochs, DEAD)
    if not columns:
        return _placeholder_figure("dead units (dead_pct:*)")
    return _per_layer_panels(epochs, columns, _order(epochs["variant"], order), "dead units", "% dead", log=False)


def plot_grad_final(epochs: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """Final-epoch mean |grad| per weight, bars grouped by layer, one bar per variant (log scale).

    A missing bar means a zero gradient was logged (a frozen layer, if the logger records it so).
    """
    columns = _layer_columns(epochs, GRAD, "weight")
    if not columns:
        return _placeholder_figure("final gradients (grad_mean_abs:*weight)")
    order = _order(epochs["variant"], order)
    last = epochs[epochs["epoch"] == epochs.groupby("run")["epoch"].transform("max")]
    means = _positive(last.groupby("variant")[columns].mean())
    fig, (ax,) = _figure(1)
    width = 0.8 / len(order)
    x = np.arange(len(columns))
    for i, variant in enumerate(order):
        heights = means.loc[variant].to_numpy(float)
        shown = ~np.isnan(heights)
        ax.bar(x[shown] + i * width, heights[shown], width, color=_color(variant, order), label=variant)
    if bool(means.notna().any().any()):
        ax.set_yscale("log")
    ax.set_xticks(x + width * (len(order) - 1) / 2, [c.split(":", 1)[1] for c in columns], rotation=30)
    ax.set(title="final-epoch gradient magnitude", ylabel="mean |grad|")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    return fig


def _groups(trainable: pd.Series) -> list[str]:
    """Group names in order of first appearance across the ``a+b`` strings."""
    seen: dict[str, None] = {}
    for value in trainable.dropna():
        seen |= dict.fromkeys(g.strip() for g in str(value).split("+") if g.strip())
    return list(seen)


def plot_timeline(epochs: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """Which groups trained in which epoch, one panel per variant (its lowest seed).

    Drawn from the ``trainable`` column, i.e. the set at the end of each epoch; a schedule that
    switches within an epoch shows only where it ended.
    """
    if not _has(epochs, "trainable"):
        return _placeholder_figure("trainable groups (trainable)")
    order = _order(epochs["variant"], order)
    groups = _groups(epochs.sort_values("epoch")["trainable"])
    fig = Figure(figsize=(PANEL[0] * 1.6, 0.6 + (0.35 * len(groups) + 0.6) * len(order)), layout="constrained")
    axes = fig.subplots(len(order), 1, sharex=True, squeeze=False).ravel()
    for ax, variant in zip(axes, order):
        rows = epochs[epochs["variant"] == variant]
        seed = rows["seed"].min()
        first = rows[rows["seed"] == seed]
        for i, group in enumerate(groups):
            spans = [(e - 0.5, 1) for e, t in zip(first["epoch"], first["trainable"]) if group in str(t).split("+")]
            ax.broken_barh(spans, (i - 0.4, 0.8), color=_color(variant, order))
        ax.set_yticks(range(len(groups)), groups)
        ax.set_ylim(len(groups) - 0.4, -0.6)  # first group on top, as in the model
        ax.set_title(f"{variant} (seed {seed})", fontsize="medium", loc="left")
        ax.grid(alpha=0.3, axis="x")
    _epoch_axis(axes[-1])
    axes[-1].set_xlim(0.5, epochs["epoch"].max() + 0.5)
    return fig


def _pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """Final points no other run beats on both time (lower) and accuracy (higher)."""
    front, best = [], -np.inf
    for _, p in points.sort_values(["time", "acc"], ascending=[True, False]).iterrows():
        if p["acc"] > best:
            front.append(p)
            best = p["acc"]
    return pd.DataFrame(front)


def plot_pareto(epochs: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """Val accuracy vs cumulative training time for every run; final points and Pareto front.

    Freezing is only worth it if it buys time, so the question is which runs are not beaten on
    both axes at once; the front is drawn through the final points of all runs.
    """
    if not (_has(epochs, "epoch_time_s") and _has(epochs, "val_acc")):
        return _placeholder_figure("accuracy vs time (epoch_time_s, val_acc)")
    order = _order(epochs["variant"], order)
    fig, (ax,) = _figure(1)
    finals = []
    for (variant, _), run in epochs.sort_values("epoch").groupby(["variant", "run"], sort=False):
        time = run["epoch_time_s"].fillna(0).cumsum().to_numpy()
        acc = run["val_acc"].to_numpy(float) * 100
        ax.plot(time, acc, color=_color(variant, order), alpha=0.35, linewidth=1)
        finals.append({"variant": variant, "time": time[-1], "acc": acc[-1]})
    points = pd.DataFrame(finals)
    for variant in order:
        p = points[points["variant"] == variant]
        ax.scatter(p["time"], p["acc"], s=36, color=_color(variant, order), edgecolor="black", zorder=3, label=variant)
    front = _pareto_front(points.dropna())
    if not front.empty:
        ax.step(front["time"], front["acc"], where="post", color="black", linestyle="--", linewidth=1, label="Pareto front")
    ax.set(title="val accuracy vs training time", xlabel="cumulative epoch time (s)", ylabel="val accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def _pooled_bins(reliability: Sequence[dict]) -> pd.DataFrame:
    """Pool reliability bins over seeds, weighting each seed's bin by its count; drop empty bins."""
    frames = [pd.DataFrame({k: r[k] for k in ("conf", "acc", "count")}).rename_axis("bin").reset_index() for r in reliability]
    bins = pd.concat(frames)
    bins = bins[bins["count"] > 0]
    weighted = bins.assign(conf=bins["conf"] * bins["count"], acc=bins["acc"] * bins["count"]).groupby("bin").sum()
    return pd.DataFrame({"conf": weighted["conf"] / weighted["count"], "acc": weighted["acc"] / weighted["count"]})


def plot_reliability(summaries: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """Reliability diagram on the test set, bins pooled over seeds; mean test ECE in the legend."""
    has_bins = summaries["reliability"].map(lambda r: isinstance(r, dict)) if "reliability" in summaries else pd.Series(False, index=summaries.index)
    if not has_bins.any():
        return _placeholder_figure("reliability (summary.json reliability)")
    order = _order(summaries["variant"], order)
    fig, (ax,) = _figure(1)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="perfect calibration")
    for variant in order:
        rows = summaries[(summaries["variant"] == variant) & has_bins]
        if rows.empty:
            continue
        bins = _pooled_bins(rows["reliability"].tolist())
        ece = pd.to_numeric(rows["test_ece"], errors="coerce").mean() if "test_ece" in rows else np.nan
        label = f"{variant} (ECE {ece:.3f})" if not np.isnan(ece) else f"{variant} (ECE not logged)"
        ax.plot(bins["conf"], bins["acc"], marker="o", markersize=3, color=_color(variant, order), label=label)
    ax.set(title="reliability (test)", xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), aspect="equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


# (file stem, caption, function, table it reads): the renderer draws these in this order.
FIGURES: list[tuple[str, str, Callable[..., Figure], str]] = [
    ("loss", "Train and validation loss: mean over seeds, shaded 95% CI (t).", plot_loss, "epochs"),
    ("accuracy", "Validation and test accuracy: mean over seeds, shaded 95% CI (t).", plot_accuracy, "epochs"),
    ("lr", "Learning rate per epoch.", plot_lr, "epochs"),
    ("timeline", "Which parameter groups were trainable at the end of each epoch (lowest seed per variant).", plot_timeline, "epochs"),
    ("grad_flow", "Gradient flow: mean |grad| per weight over epochs, mean over seeds (log scale; zero gradients are not drawn).", plot_grad_flow, "epochs"),
    ("grad_final", "Final-epoch mean |grad| per weight, mean over seeds; a missing bar is a zero gradient.", plot_grad_final, "epochs"),
    ("dead_units", "Dead units (%) per activation layer over epochs, mean over seeds.", plot_dead_units, "epochs"),
    ("pareto", "Val accuracy vs cumulative training time per run; dots are final epochs, dashed line the Pareto front.", plot_pareto, "epochs"),
    ("reliability", "Reliability diagram on the test set, bins pooled over seeds; legend shows mean test ECE.", plot_reliability, "summaries"),
]
