"""Turn a folder of runs into a comparison report that says only what it measured.

The flow is ``collect`` (run folders -> pandas: epochs, summaries, per-step log, failures,
timing probes, the experiment's manifest) -> ``table`` (paired tests vs the baseline, means,
costs) and ``plots`` (figures) -> ``render`` (files). The report's structure, top to bottom:

1. facts: run counts, the baseline, the seeds behind each variant;
2. warnings: runs left out of the comparison, variants whose clock was shared in a lockstep group;
3. summary, three narrow tables (``table.table_parts``), comparison first: Δ vs the baseline
   [95% CI], p (t; Wilcoxon with >= 6 seeds), significance ("no spread" / "tie" where the
   paired differences are equal up to float32 rounding); then means ± CI of accuracy and
   calibration; then "timing" (measured / probe / shared, not probed) and the cost columns,
   measured only where each run was timed alone, else from the variant's ``timing_probe.json``;
4. verdicts, one sentence per variant;
5. runs not in the comparison, or flagged: failed (with ``failed.json``'s error), unfinished,
   missing (in ``experiment.json`` but no folder) and exploded (``summary["exploded"]``);
6. figures (``plots.FIGURES``): curves with CI bands, LR, the trainable-set timeline (one row
   per run, from ``steps.parquet``), gradients, dead units, Pareto (runs timed alone only),
   reliability;
7. all runs, each finished one linked to its page ``runs/<run>.html``: its summary, its config
   diff against the baseline's run of the same seed, its curves beside that run's, its timeline.

The baseline is ``write_report(baseline=...)`` / ``freezelab report --baseline``, else the
experiment file's ``baseline:``, else the variant named or scheduled "standard".
Most users need only `write_report`:

>>> from freezelab.report import write_report
>>> write_report("runs/grid")  # doctest: +SKIP
PosixPath('runs/grid/report/report.html')
"""

from freezelab.report.collect import Collected, collect_all, collect_runs, find_finished_runs
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
    plot_run,
    plot_timeline,
)
from freezelab.report.render import write_report
from freezelab.report.table import format_table, markdown_table, resolve_baseline, summary_table, table_parts, verdicts

__all__ = [
    "FIGURES",
    "Collected",
    "collect_all",
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
    "plot_run",
    "plot_timeline",
    "resolve_baseline",
    "summary_table",
    "table_parts",
    "verdicts",
    "write_report",
]
