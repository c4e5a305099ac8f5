"""Turn a folder of finished runs into a comparison report (tables, figures, HTML and Markdown).

The flow is ``collect`` (run folders -> pandas) -> ``table`` (means, CIs, paired tests) and
``plots`` (figures) -> ``render`` (files). Most users need only `write_report`:

>>> from freezelab.report import write_report
>>> write_report("runs/grid")  # doctest: +SKIP
PosixPath('runs/grid/report/report.html')
"""

from freezelab.report.collect import collect_runs, find_finished_runs
from freezelab.report.plots import (
    FIGURES,
    plot_accuracy,
    plot_dead_units,
    plot_grad_final,
    plot_grad_flow,
    plot_loss,
    plot_lr,
    plot_pareto,
    plot_reliability,
    plot_timeline,
)
from freezelab.report.render import write_report
from freezelab.report.table import format_table, markdown_table, resolve_baseline, summary_table, verdicts

__all__ = [
    "FIGURES",
    "collect_runs",
    "find_finished_runs",
    "format_table",
    "markdown_table",
    "plot_accuracy",
    "plot_dead_units",
    "plot_grad_final",
    "plot_grad_flow",
    "plot_loss",
    "plot_lr",
    "plot_pareto",
    "plot_reliability",
    "plot_timeline",
    "resolve_baseline",
    "summary_table",
    "verdicts",
    "write_report",
]
