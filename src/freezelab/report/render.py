"""Write the report: PNGs, a Markdown page, and a self-contained HTML page.

The HTML embeds its images as base64 data URIs and its CSS inline, so the one file can be
mailed, attached to an issue or opened from a laptop without the run folder next to it.
Every file is written to a temporary name and moved into place, so a report that crashes
half-way never leaves a truncated file that looks finished.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from freezelab.files import atomic_write
from freezelab.report.collect import collect_runs
from freezelab.report.pareto import format_pareto, pareto_table, plot_pareto_variants
from freezelab.report.plots import FIGURES
from freezelab.report.table import format_table, markdown_table, summary_table, verdicts

__all__ = ["write_report", "render", "render_markdown", "render_html", "Rendered"]

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85rem; white-space: nowrap; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9rem; }
.note { color: #555; font-size: 0.9rem; }
"""
TABLE_NOTE = (
    "mean ± 95% CI half-width over seeds (Student t); Δ: paired difference vs the baseline on "
    "seeds both ran, [95% CI]; t: paired t-test; W: Wilcoxon signed-rank (only with ≥ 6 seeds)."
)

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
    table: pd.DataFrame
    note: str
    verdicts: list[str]
    figures: list[tuple[str, str, bytes]]  # (png file name, caption, png bytes)
    pareto: pd.DataFrame | None = None  # accuracy vs wall time per variant, the front flagged (> 1 variant)


def _png(fig: Figure, dpi: int) -> bytes:
    """Render a figure to PNG bytes (once: the same bytes go to disk and into the HTML)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _facts(summaries: pd.DataFrame, order: list[str], experiments: str) -> list[str]:
    """Run count and the seeds behind each variant, so a reader can judge the CIs."""
    seeds = summaries.groupby("variant")["seed"].apply(lambda s: ", ".join(map(str, sorted(s))))
    lines = [f"{len(summaries)} finished runs, {len(order)} variants (experiment: {experiments})"]
    return lines + [f"{variant}: seeds {seeds[variant]}" for variant in order]


def render(runs_dir: Path | str, baseline: str = "standard", dpi: int = 110) -> Rendered:
    """Collect the runs and compute the table, verdicts and figure PNGs for both pages."""
    epochs, summaries = collect_runs(runs_dir)
    table = summary_table(summaries, baseline)
    order = list(table.index)
    figures = []
    for stem, caption, plot, source in FIGURES:
        fig = plot(epochs if source == "epochs" else summaries, order)
        figures.append((f"{stem}.png", caption, _png(fig, dpi)))
    pareto = None
    if summaries["variant"].nunique() > 1:
        front = pareto_table(summaries, order=order)
        pareto = format_pareto(front)
        figures.append(("pareto_variants.png", "final test accuracy vs wall time per variant (mean, 95% CI over seeds); "
                        "the non-dominated front is ringed", _png(plot_pareto_variants(front), dpi)))
    experiments = ", ".join(sorted(summaries["experiment"].unique()))
    return Rendered(
        title=f"freezelab report: {experiments}",
        facts=_facts(summaries, order, experiments),
        table=format_table(table),
        note=table.attrs["note"],
        verdicts=verdicts(table),
        figures=figures,
        pareto=pareto,
    )


def render_markdown(r: Rendered) -> str:
    """Markdown page: facts, headline table, verdicts, and links to the PNGs beside it."""
    parts = [f"# {r.title}", "", *[f"- {fact}" for fact in r.facts], "", "## Summary", ""]
    parts += [markdown_table(r.table), "", f"{TABLE_NOTE} {r.note}.", "", "## Verdicts", ""]
    parts += [f"- {v}" for v in r.verdicts] + [""]
    if r.pareto is not None:
        parts += ["## Accuracy vs wall time", "", markdown_table(r.pareto), "", PARETO_NOTE, ""]
    parts += ["## Figures", ""]
    for name, caption, _ in r.figures:
        parts += [f"![{Path(name).stem}]({name})", "", f"_{caption}_", ""]
    return "\n".join(parts)


def _html_table(df: pd.DataFrame) -> str:
    """A plain HTML table of strings (index first), every cell escaped."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [df.index.name or "", *df.columns])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (index, *row)) + "</tr>"
        for index, row in zip(df.index, df.itertuples(index=False))
    )
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def render_html(r: Rendered) -> str:
    """Self-contained HTML page: inline CSS, images as base64 data URIs, no external assets."""
    e = html.escape
    figures = "".join(
        f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        f"<figcaption>{e(caption)}</figcaption></figure>"
        for _, caption, png in r.figures
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(r.title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{e(r.title)}</h1>"
        f"<ul>{''.join(f'<li>{e(f)}</li>' for f in r.facts)}</ul>"
        f"<h2>Summary</h2>{_html_table(r.table)}<p class=\"note\">{e(TABLE_NOTE)} {e(r.note)}.</p>"
        f"<h2>Verdicts</h2><ul>{''.join(f'<li>{e(v)}</li>' for v in r.verdicts)}</ul>"
        + (f"<h2>Accuracy vs wall time</h2>{_html_table(r.pareto)}<p class=\"note\">{e(PARETO_NOTE)}</p>"
           if r.pareto is not None else "")
        + f"<h2>Figures</h2>{figures}</body></html>\n"
    )


def write_report(runs_dir: Path | str, out_dir: Path | str | None = None, *, baseline: str = "standard", dpi: int = 110) -> Path:
    """Write ``report.html``, ``report.md`` and one PNG per figure; return the HTML path.

    ``out_dir`` defaults to ``runs_dir/report``. ``baseline`` is a variant label or the schedule
    name of exactly one variant; without one, paired tests are skipped and the table says so.

    >>> write_report("runs/grid")  # doctest: +SKIP
    PosixPath('runs/grid/report/report.html')
    """
    r = render(runs_dir, baseline, dpi)
    out = Path(out_dir) if out_dir is not None else Path(runs_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    for name, _, png in r.figures:
        atomic_write(out / name, png)
    atomic_write(out / "report.md", render_markdown(r).encode())
    atomic_write(out / "report.html", render_html(r).encode())
    return out / "report.html"
