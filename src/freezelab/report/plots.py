"""Report figures: each function takes the collected tables and returns a matplotlib Figure.

Figures are built with `matplotlib.figure.Figure` directly rather than pyplot, so nothing is
kept in a global figure registry and no GUI backend is needed (saving uses Agg). Every figure
must draw for one run, one epoch, or a logger that skipped optional columns; what is missing
is shown as "not logged" in the panel instead of raising, so one gap never loses the report.
Every figure must also stay readable from 1 to 60 runs: colours come from a palette as long
as the variant list (`_color`), a legend of more than a few entries moves beside the axes in
columns (`_legend`), and the timeline is one row per run.

>>> epochs, summaries = collect_runs("runs/grid")  # doctest: +SKIP
>>> plot_accuracy(epochs, order=["standard", "alternate-epoch"]).savefig("accuracy.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap, to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Patch
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
    "plot_run",
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


def _palette(n: int) -> list[str]:
    """``n`` distinct colours: tab10 up to 10, tab20 up to 20, then evenly spaced along turbo."""
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    if n <= 20:
        return [to_hex(colormaps["tab20"](i)) for i in range(n)]
    return [to_hex(colormaps["turbo"](x)) for x in np.linspace(0.05, 0.95, n)]


def _color(variant: str, order: Sequence[str]) -> str:
    """The same variant gets the same colour in every figure, because ``order`` is shared."""
    return _palette(len(order))[list(order).index(variant)]


#: Legends with more entries than this go beside the axes, in columns, so they hide no data.
LEGEND_INSIDE = 6


def _legend(ax: Axes, **kwargs: object) -> None:
    """A legend inside the axes for a few entries, beside it in columns of 20 for many."""
    n = len(ax.get_legend_handles_labels()[1])
    if n == 0:
        return
    if n <= LEGEND_INSIDE:
        ax.legend(fontsize="small", **kwargs)
    else:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0), ncols=math.ceil(n / 20),
                  borderaxespad=0, **kwargs)


def _figure(n_panels: int, ncols: int = 3, sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """A grid of panels with constrained layout; returns the axes as a flat list.

    Many panels (one per variant of a big grid) get more, smaller columns, so 60 variants make
    a page of thumbnails rather than a 60-inch strip.
    """
    if n_panels > 12:
        ncols = 6
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    scale = 0.7 if n_panels > 12 else 1.0
    fig = Figure(figsize=(PANEL[0] * ncols * scale, PANEL[1] * nrows * scale), layout="constrained")
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
    _legend(ax)


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
    _legend(ax)
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
    _legend(axes[0])
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
    _legend(ax)
    return fig


#: Columns of the timeline image at most: a switch per batch becomes a "several sets" column.
TIMELINE_BINS = 600
MIXED = "0.15"  # the colour of a column in which the trainable set changed


def _run_order(log: pd.DataFrame, order: Sequence[str]) -> list[tuple[str, str, int]]:
    """``(run, variant, seed)`` of every run, variants in ``order``, seeds ascending."""
    runs = log[["run", "variant", "seed"]].drop_duplicates()
    rank = {v: i for i, v in enumerate(order)}
    runs = runs.assign(rank=runs["variant"].map(rank)).sort_values(["rank", "seed", "run"])
    return list(runs[["run", "variant", "seed"]].itertuples(index=False, name=None))


def plot_timeline(log: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """The trainable set over training, one row per run (every seed), one colour per set.

    ``log`` is the per-step log (``steps``: a ``step`` column) or, for runs that kept none, the
    epoch log, which holds only the set at the end of each epoch (the axis label says so). Each
    column of the image covers an equal span of steps; a column in which the set changed is
    drawn dark ("several sets"), so alternation per batch reads as a dark band and alternation
    per epoch as blocks. Each row's label counts its switches.
    """
    if not _has(log, "trainable"):
        return _placeholder_figure("trainable groups (trainable)")
    n_runs = log["run"].nunique() if "run" in log else 1
    fig = Figure(figsize=(PANEL[0] * 2.4, 1.4 + 0.22 * n_runs), layout="constrained")
    _draw_timeline(fig.subplots(), log, _order(log["variant"], order))
    return fig


def _draw_timeline(ax: Axes, log: pd.DataFrame, order: Sequence[str]) -> None:
    """Draw :func:`plot_timeline`'s image into ``ax``."""
    per_step = "step" in log
    x = "step" if per_step else "epoch"
    log = log.dropna(subset=["trainable"]).sort_values(x)
    sets = list(dict.fromkeys(log["trainable"].astype(str)))
    set_id = {name: i for i, name in enumerate(sets)}
    first, total = int(log[x].min()), int(log[x].max() - log[x].min()) + 1
    per_bin = math.ceil(total / TIMELINE_BINS)  # whole steps per column, so no column is a lone step by rounding
    bins = math.ceil(total / per_bin)
    runs = _run_order(log, order)
    image = np.full((len(runs), bins), np.nan)
    labels = []
    for row, (run, variant, seed) in enumerate(runs):
        r = log[log["run"] == run]
        ids = r["trainable"].astype(str).map(set_id).to_numpy()
        where = (r[x].to_numpy() - first) // per_bin
        low, high = np.full(bins, len(sets)), np.full(bins, -1)
        np.minimum.at(low, where, ids)
        np.maximum.at(high, where, ids)
        image[row] = np.where(high < 0, np.nan, np.where(low == high, low, len(sets)))
        switches = int((ids[1:] != ids[:-1]).sum())
        labels.append(f"{variant}  seed {seed}  ({switches} switch{'es' if switches != 1 else ''})")
    colors = _palette(len(sets)) + [MIXED]
    extent = (first - 0.5, first + bins * per_bin - 0.5, len(runs) - 0.5, -0.5)
    ax.imshow(np.ma.masked_invalid(image), cmap=ListedColormap(colors), vmin=-0.5, vmax=len(sets) + 0.5,
              aspect="auto", interpolation="nearest", extent=extent)
    ax.set_yticks(range(len(runs)), labels, fontsize="x-small" if len(runs) > 16 else "small")
    for row in range(1, len(runs)):  # a line between variants groups their seeds
        if runs[row][1] != runs[row - 1][1]:
            ax.axhline(row - 0.5, color="white", linewidth=2)
    handles = [Patch(color=c, label=name) for c, name in zip(colors, sets)]
    if np.any(image == len(sets)):
        handles.append(Patch(color=MIXED, label="several sets per column (faster switching)"))
    ax.legend(handles=handles, fontsize="small", loc="lower left", bbox_to_anchor=(0, 1.0), ncols=min(len(handles), 4),
              borderaxespad=0.3, frameon=False)
    if per_step:
        ax.set_xlabel("optimizer step")
    else:
        ax.set_xlabel("epoch (the set at the end of each epoch: no per-step log, switches within an epoch are not shown)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


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
    title = "val accuracy vs training time"
    if "timed_alone" in epochs:  # a run timed in a lockstep group has the group's clock, not its own
        shared = epochs.loc[~epochs["timed_alone"].astype(bool), "run"].nunique()
        epochs = epochs[epochs["timed_alone"].astype(bool)]
        if epochs.empty:
            fig, (ax,) = _figure(1)
            ax.text(0.5, 0.5, "every run was timed in a lockstep group:\nits clock is the group's, so times compare nothing\n"
                    "(the table's cost columns use the timing probe)", ha="center", va="center",
                    transform=ax.transAxes, color="0.3")
            ax.set(title=title, xticks=[], yticks=[])
            return fig
        if shared:
            title += f" ({shared} runs timed in lockstep left out)"
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
    ax.set(title=title, xlabel="cumulative epoch time (s)", ylabel="val accuracy (%)")
    ax.grid(alpha=0.3)
    _legend(ax)
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
    _legend(ax)
    return fig


def plot_run(run: pd.DataFrame, baseline: pd.DataFrame | None, log: pd.DataFrame, label: str,
             baseline_label: str | None) -> Figure:
    """One run's page figure: train loss and val accuracy beside the baseline's run of the same
    seed, and the run's trainable-set timeline (``log``: its steps, or its epochs).

    A fixed layout rather than a constrained one: a report draws one of these per run, and
    constrained layout is most of a figure's drawing time.
    """
    fig = Figure(figsize=(PANEL[0] * 2, PANEL[1] + 1.6))
    grid = fig.add_gridspec(2, 2, height_ratios=[PANEL[1], 0.7], left=0.2, right=0.97, top=0.9, bottom=0.1,
                            hspace=0.9, wspace=0.25)
    for col, (column, scale, title) in enumerate((("train_loss", 1.0, "train loss"), ("val_acc", 100.0, "val accuracy (%)"))):
        ax = fig.add_subplot(grid[0, col])
        ax.set_title(title)
        for frame, name, color in ((baseline, baseline_label, "0.5"), (run, label, "C0")):
            if frame is not None and _has(frame, column):
                ax.plot(frame["epoch"], frame[column] * scale, marker="o", markersize=3, color=color, label=name)
        _epoch_axis(ax)
        ax.grid(alpha=0.3)
        _legend(ax)
    ax = fig.add_subplot(grid[1, :])
    if _has(log, "trainable"):
        _draw_timeline(ax, log, _order(log["variant"], None))
        ax.set_yticks([0], [ax.get_yticklabels()[0].get_text().split("(")[-1].rstrip(")")])  # the title names the run
    else:
        _not_logged(ax, "trainable groups (trainable)")
    return fig


# (file stem, caption, function, table it reads): the renderer draws these in this order; a table
# that is absent (no run kept a per-step log) falls back to "epochs".
FIGURES: list[tuple[str, str, Callable[..., Figure], str]] = [
    ("loss", "Train and validation loss: mean over seeds, shaded 95% CI (t).", plot_loss, "epochs"),
    ("accuracy", "Validation and test accuracy: mean over seeds, shaded 95% CI (t).", plot_accuracy, "epochs"),
    ("lr", "Learning rate per epoch.", plot_lr, "epochs"),
    ("timeline", "Trainable set over training, one row per run: from the per-step log where kept (every switch), "
     "else the set at the end of each epoch; dark columns hold several sets.", plot_timeline, "steps"),
    ("grad_flow", "Gradient flow: mean |grad| per weight over epochs, mean over seeds (log scale; zero gradients are not drawn).", plot_grad_flow, "epochs"),
    ("grad_final", "Final-epoch mean |grad| per weight, mean over seeds; a missing bar is a zero gradient.", plot_grad_final, "epochs"),
    ("dead_units", "Dead units (%) per activation layer over epochs, mean over seeds.", plot_dead_units, "epochs"),
    ("pareto", "Val accuracy vs cumulative training time per run; dots are final epochs, dashed line the Pareto front.", plot_pareto, "epochs"),
    ("reliability", "Reliability diagram on the test set, bins pooled over seeds; legend shows mean test ECE.", plot_reliability, "summaries"),
]
