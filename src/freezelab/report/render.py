"""Write the report: PNGs, a Markdown page, a self-contained HTML page, and one HTML page per run.

The HTML pages embed their images as base64 data URIs and their CSS inline, so ``report.html``
can be mailed, attached to an issue or opened from a laptop without the run folder next to it;
only its links to the per-run pages (``runs/<run>.html``, written beside it) need the folder.
Every file is written to a temporary name and moved into place, so a report that crashes
half-way never leaves a truncated file that looks finished.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from freezelab.files import atomic_write
from freezelab.report.collect import Collected, collect_all
from freezelab.report.pareto import format_pareto, pareto_table, plot_pareto_variants
from freezelab.report.plots import FIGURES, plot_run
from freezelab.report.table import format_table, markdown_table, resolve_baseline, summary_table, table_parts, verdicts

__all__ = ["write_report", "render", "render_markdown", "render_html", "Rendered", "RunPage"]

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1300px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
h3 { font-size: 1rem; margin: 1.2rem 0 0.4rem; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85rem; white-space: nowrap; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.text { text-align: left; white-space: normal; max-width: 40rem; }
th { background: #f4f4f4; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9rem; }
.note { color: #555; font-size: 0.9rem; }
.warn { background: #fff4e5; border-left: 4px solid #e69500; padding: 0.5rem 1rem; }
"""
TABLE_NOTE = (
    "Comparison first: Δ is the paired difference vs the baseline on the seeds both ran, [95% CI]; "
    "t: paired t-test; W: Wilcoxon signed-rank (only with ≥ 6 seeds); \"no spread\": the difference is "
    "the same on every seed (equal up to float32 rounding), so there is no p-value and no significance. "
    "Then mean ± 95% CI half-width over seeds (Student t). Timing \"measured\": every run of the variant "
    "was timed alone; \"probe\": its runs shared a lockstep group (one clock, one GPU), so the cost columns "
    "are the variant's timing probe, a few steps of each trainable set timed alone on the same device "
    "(no interval; epoch and total time not estimated); \"shared, not probed\": no figure is the variant's own."
)
RUN_COLUMNS = ["run", "variant", "seed", "status", "epochs", "final val acc (%)", "timing", "reason"]


@dataclass(frozen=True)
class RunPage:
    """One run's drill-down page: where it goes (relative to the report) and its HTML."""

    path: str
    html: str

PARETO_NOTE = (
    "mean ± 95% CI half-width over seeds; on the Pareto front: no other variant is at least as fast and at "
    "least as accurate (on the means), and better on one; whether two front points differ beyond noise is "
    "the paired test of the summary table."
)


@dataclass(frozen=True)
class Rendered:
    """Everything the pages show, computed once and shared by the Markdown and HTML writers."""

    title: str
    facts: list[str]
    warnings: list[str]
    table: pd.DataFrame
    note: str
    verdicts: list[str]
    runs: pd.DataFrame  # RUN_COLUMNS, strings; "run" is the run folder
    links: dict[str, str]  # run folder -> its page, for the runs that have one
    figures: list[tuple[str, str, bytes]]  # (png file name, caption, png bytes)
    pages: list[RunPage]
    pareto: pd.DataFrame | None = None  # accuracy vs wall time per variant, the front flagged (> 1 variant)


def _png(fig: Figure, dpi: int) -> bytes:
    """Render a figure to PNG bytes (once: the same bytes go to disk and into the HTML)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _facts(c: Collected, order: list[str], experiments: str, note: str) -> list[str]:
    """Run counts, the seeds behind each variant, and the baseline, so a reader can judge the CIs."""
    summaries = c.summaries
    seeds = summaries.groupby("variant")["seed"].apply(lambda s: ", ".join(map(str, sorted(s))))
    lines = [f"{len(summaries)} finished runs, {len(order)} variants (experiment: {experiments}); {note}"]
    if "data_source" in summaries:  # which copy of the data (a lossy JPEG copy of CIFAR-10 scores 1-3 pp lower)
        sources = sorted(str(s) for s in summaries["data_source"].dropna().unique())
        if sources:
            lines.append(f"data: {'; '.join(sources)}")
    return lines + [f"{variant}: seeds {seeds[variant]}" for variant in order]


def _warnings(c: Collected, timing: dict[str, str]) -> list[str]:
    """What the reader must know before trusting a number: runs left out, clocks shared."""
    out = []
    if not c.flagged.empty:
        counts = c.flagged["status"].value_counts()
        what = ", ".join(f"{n} {status}" for status, n in counts.items())
        out.append(f"{what}: see \"Runs not in the comparison, or flagged\"; failed, unfinished and missing runs "
                   "are left out of the means and tests; exploded runs stay in them, flagged")
    shared = sorted(v for v, source in timing.items() if source != "measured")
    if shared:
        probed = [v for v in shared if timing[v] == "probe"]
        out.append(f"{len(shared)} variants trained in lockstep groups (one clock and one GPU per group), so their "
                   f"measured times and peak memory are the group's; the cost columns show the timing probe for "
                   f"{len(probed)} of them" + ("" if len(probed) == len(shared) else ", and nothing for the others"))
    return out


def _slug(run: str) -> str:
    """A file name for a run folder path: ``exp/variant/seed0`` -> ``exp__variant__seed0``."""
    return run.replace("/", "__")


def _runs_table(c: Collected) -> pd.DataFrame:
    """Every run, finished or not: status, epochs, final accuracy, how it was timed, and why it is flagged."""
    s = c.summaries
    groups = s["lockstep_group"] if "lockstep_group" in s else pd.Series([None] * len(s), index=s.index)
    finished = pd.DataFrame({
        "run": s["run"], "variant": s["variant"], "seed": s["seed"].astype(str), "status": "finished",
        "epochs": s["config.epochs"].astype(str) if "config.epochs" in s else "",
        "final val acc (%)": [f"{100 * v:.2f}" for v in pd.to_numeric(s["final_val_acc"], errors="coerce")],
        "timing": ["alone" if alone else f"lockstep group of {len(g) if isinstance(g, list) else '?'}"
                   for alone, g in zip(s["timed_alone"], groups)],
        "reason": "",
    })
    flagged = c.flagged.assign(seed=c.flagged["seed"].astype(str), epochs=c.flagged["epochs"].astype(str),
                               **{"final val acc (%)": "—", "timing": "—"})
    exploded = flagged[flagged["status"] == "exploded"].set_index("run")
    finished = finished.set_index("run")
    finished.loc[exploded.index, ["status", "reason"]] = exploded[["status", "reason"]]
    rest = flagged[flagged["status"] != "exploded"].set_index("run")
    table = pd.concat([finished, rest[finished.columns]]).reset_index()
    return table[RUN_COLUMNS].sort_values(["variant", "seed", "run"], ignore_index=True)


def _config_diff(summaries: pd.DataFrame, run: pd.Series, base: pd.Series | None) -> pd.DataFrame:
    """The config fields where a run differs from its baseline run (``seed`` excluded: pairs share it)."""
    keys = [k for k in summaries.columns if k.startswith("config.")]
    rows = {}
    for key in keys:
        mine = run[key]
        theirs = base[key] if base is not None else None
        if base is None or str(mine) != str(theirs):
            rows[key.removeprefix("config.")] = {"this run": str(mine), "baseline": "—" if base is None else str(theirs)}
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=["this run", "baseline"])
    frame.index.name = "config"
    return frame


def _cell(value: object) -> str:
    """A summary value for people: floats to 4 significant digits, a lockstep group as its size and members."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return f"{len(value)} runs: {', '.join(map(str, value))}" if value else "none"
    return str(value)


def _run_pages(c: Collected, base: str | None, dpi: int) -> list[tuple[str, RunPage]]:
    """A page per finished run: summary values, config diff and curves against the baseline's seed."""
    s = c.summaries
    pages = []
    for _, run in s.iterrows():
        base_run = None
        if base is not None and run["variant"] != base:
            same_seed = s[(s["variant"] == base) & (s["seed"] == run["seed"])]
            base_run = same_seed.iloc[0] if not same_seed.empty else None
        mine = c.epochs[c.epochs["run"] == run["run"]]
        theirs = c.epochs[c.epochs["run"] == base_run["run"]] if base_run is not None else None
        label = f"{run['variant']} seed {run['seed']}"
        base_label = f"{base_run['variant']} seed {base_run['seed']}" if base_run is not None else None
        steps = c.steps[c.steps["run"] == run["run"]] if c.steps is not None else None
        log = steps if steps is not None and not steps.empty else mine
        curves = _png(plot_run(mine, theirs, log, label, base_label), dpi)
        diff = _config_diff(s, run, base_run)
        if base_run is None:
            against = "the baseline variant itself" if run["variant"] == base else "no baseline run of this seed"
            diff_title = f"Config (compared with: {against}; every field shown)"
        else:
            diff_title = f"Config: fields that differ from {base_label} ({len(diff)} of them)"
        scalars = {k: run[k] for k in ("final_val_acc", "best_val_acc", "final_test_acc", "step_time_ms",
                                       "avg_epoch_time_s", "total_time_s", "peak_mem_bytes", "switches",
                                       "timed_alone", "lockstep_group", "device") if k in run}
        values = pd.DataFrame({"value": [_cell(v) for v in scalars.values()]}, index=pd.Index(list(scalars), name="summary"))
        e = html.escape
        body = (
            f'<p><a href="../report.html">← back to the report</a></p><h1>{e(run["run"])}</h1>'
            f"<h2>Summary</h2>{_html_table(values, text=('value',))}<h2>{e(diff_title)}</h2>{_html_table(diff)}"
            f"<h2>Curves</h2><figure>{_img(curves, 'curves')}<figcaption>{e(label)} (blue) and "
            f"{e(base_label or 'no baseline run')} (grey); below, its trainable set over training.</figcaption></figure>"
        )
        pages.append((run["run"], RunPage(f"runs/{_slug(run['run'])}.html", _page(run["run"], body))))
    return pages


def render(runs_dir: Path | str, baseline: str | None = None, dpi: int = 110, *, run_pages: bool = True) -> Rendered:
    """Collect the runs and compute the table, verdicts, figures and per-run pages.

    ``baseline``: a variant label or the schedule of exactly one variant. Without one, the
    experiment file's ``baseline`` (from ``experiment.json``) is used, else "standard". A
    baseline named here that matches no single variant is an error; the default is not.
    """
    c = collect_all(runs_dir)
    chosen = baseline or (c.manifest or {}).get("baseline") or "standard"
    if baseline is not None and resolve_baseline(c.summaries, baseline)[0] is None:
        raise ValueError(f"--baseline {baseline!r} names no single variant; choose one of {sorted(c.summaries['variant'].unique())}")
    table = summary_table(c.summaries, chosen, probes=c.probes)
    order = list(table.index)
    figures = []
    for stem, caption, plot, source in FIGURES:
        data = getattr(c, source)
        fig = plot(data if data is not None else c.epochs, order)
        figures.append((f"{stem}.png", caption, _png(fig, dpi)))
    pareto = None
    if c.summaries["variant"].nunique() > 1:
        front = pareto_table(c.summaries, order=order)
        pareto = format_pareto(front)
        figures.append(("pareto_variants.png", "final test accuracy vs wall time per variant (mean, 95% CI over seeds); "
                        "the non-dominated front is ringed", _png(plot_pareto_variants(front), dpi)))
    experiments = ", ".join(sorted(c.summaries["experiment"].unique()))
    pages = _run_pages(c, table.attrs["baseline"], dpi) if run_pages else []
    return Rendered(
        title=f"freezelab report: {experiments}",
        facts=_facts(c, order, experiments, table.attrs["note"]),
        warnings=_warnings(c, table.attrs["timing"]),
        table=format_table(table),
        note=table.attrs["note"],
        verdicts=verdicts(table),
        runs=_runs_table(c),
        links={run: page.path for run, page in pages},
        figures=figures,
        pages=[page for _, page in pages],
        pareto=pareto,
    )


def _not_compared(r: Rendered) -> pd.DataFrame:
    return r.runs[r.runs["status"] != "finished"]


def render_markdown(r: Rendered) -> str:
    """Markdown page: facts, warnings, the headline table, verdicts, runs, and links to the PNGs."""
    parts = [f"# {r.title}", "", *[f"- {fact}" for fact in r.facts], ""]
    parts += [f"> **Note:** {w}" for w in r.warnings] + ([""] if r.warnings else [])
    parts += ["## Summary", ""]
    for title, table in table_parts(r.table):
        parts += [f"### {title}", "", markdown_table(table), ""]
    parts += [f"{TABLE_NOTE} {r.note}.", "", "## Verdicts", ""]
    parts += [f"- {v}" for v in r.verdicts] + [""]
    flagged = _not_compared(r)
    if not flagged.empty:
        parts += ["## Runs not in the comparison, or flagged", "", markdown_table(flagged.set_index("run")), ""]
    if r.pareto is not None:
        parts += ["## Accuracy vs wall time", "", markdown_table(r.pareto), "", PARETO_NOTE, ""]
    parts += ["## Figures", ""]
    for name, caption, _ in r.figures:
        parts += [f"![{Path(name).stem}]({name})", "", f"_{caption}_", ""]
    runs = r.runs.assign(run=[f"[{run}]({r.links[run]})" if run in r.links else run for run in r.runs["run"]])
    parts += ["## All runs", "", markdown_table(runs.set_index("run")), ""]
    return "\n".join(parts)


def _html_table(df: pd.DataFrame, links: dict[str, str] | None = None, text: tuple[str, ...] = ()) -> str:
    """A plain HTML table of strings (index first), every cell escaped; index cells in ``links`` link there."""
    links = links or {}
    e = html.escape

    def first(index: object) -> str:
        label = e(str(index))
        return f'<a href="{e(links[index])}">{label}</a>' if index in links else label

    head = "".join(f"<th>{e(str(c))}</th>" for c in [df.index.name or "", *df.columns])
    cls = ['class="text"' if c in text else "" for c in df.columns]
    body = "".join(
        f"<tr><td>{first(index)}</td>" + "".join(f"<td {k}>{e(str(v))}</td>" for k, v in zip(cls, row)) + "</tr>"
        for index, row in zip(df.index, df.itertuples(index=False))
    )
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _page(title: str, body: str) -> str:
    e = html.escape
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


def render_html(r: Rendered) -> str:
    """Self-contained HTML page: inline CSS, images as base64 data URIs; links only to the run pages."""
    e = html.escape
    figures = "".join(f"<figure>{_img(png, caption)}<figcaption>{e(caption)}</figcaption></figure>" for _, caption, png in r.figures)
    variant_links = {}  # a variant's name links to its lowest seed's page
    for run, variant in zip(r.runs["run"], r.runs["variant"]):
        if run in r.links:
            variant_links.setdefault(variant, r.links[run])
    flagged = _not_compared(r)
    flagged_html = ("<h2>Runs not in the comparison, or flagged</h2>"
                    + _html_table(flagged.set_index("run"), r.links, text=("reason",))) if not flagged.empty else ""
    body = (
        f"<h1>{e(r.title)}</h1><ul>{''.join(f'<li>{e(f)}</li>' for f in r.facts)}</ul>"
        + "".join(f'<p class="warn">{e(w)}</p>' for w in r.warnings)
        + "<h2>Summary</h2>"
        + "".join(f"<h3>{e(title)}</h3>{_html_table(table, variant_links)}" for title, table in table_parts(r.table))
        + f"<p class=\"note\">{e(TABLE_NOTE)} {e(r.note)}.</p>"
        f"<h2>Verdicts</h2><ul>{''.join(f'<li>{e(v)}</li>' for v in r.verdicts)}</ul>"
        + (f"<h2>Accuracy vs wall time</h2>{_html_table(r.pareto)}<p class=\"note\">{e(PARETO_NOTE)}</p>"
           if r.pareto is not None else "")
        + f"{flagged_html}<h2>Figures</h2>{figures}"
        f"<h2>All runs</h2><p class=\"note\">Each finished run links to its page: config diff against the baseline's "
        f"run of the same seed, its curves and its timeline.</p>{_html_table(r.runs.set_index('run'), r.links, text=('reason',))}"
    )
    return _page(r.title, body)


def write_report(runs_dir: Path | str, out_dir: Path | str | None = None, *, baseline: str | None = None,
                 dpi: int = 110, run_pages: bool = True) -> Path:
    """Write ``report.html``, ``report.md``, one PNG per figure and ``runs/<run>.html``; return the HTML path.

    ``out_dir`` defaults to ``runs_dir/report``. ``baseline`` is a variant label or the schedule
    name of exactly one variant; by default the experiment file's ``baseline``, else "standard"
    (without a match, paired tests are skipped and the table says so).

    >>> write_report("runs/grid")  # doctest: +SKIP
    PosixPath('runs/grid/report/report.html')
    """
    r = render(runs_dir, baseline, dpi, run_pages=run_pages)
    out = Path(out_dir) if out_dir is not None else Path(runs_dir) / "report"
    (out / "runs").mkdir(parents=True, exist_ok=True)
    for name, _, png in r.figures:
        atomic_write(out / name, png)
    for page in r.pages:
        atomic_write(out / page.path, page.html.encode())
    atomic_write(out / "report.md", render_markdown(r).encode())
    atomic_write(out / "report.html", render_html(r).encode())
    return out / "report.html"
