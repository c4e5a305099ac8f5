"""Accuracy vs wall time per variant: the front, the table, the figure, and its place in the report."""

import math

import pandas as pd
import pytest
from matplotlib.figure import Figure

from freezelab.report import write_report
from freezelab.report.pareto import format_pareto, pareto_front, pareto_table, plot_pareto_variants

from fake_runs import make_fake_runs


def summaries(rows):
    """rows: {variant: [(acc, time), ...]} -> a summaries frame with one row per seed."""
    return pd.DataFrame([{"variant": v, "seed": s, "final_test_acc": a, "total_time_s": t}
                         for v, runs in rows.items() for s, (a, t) in enumerate(runs)])


def test_front_is_the_non_dominated_points_and_ties_stay_on_it():
    assert pareto_front([10, 8, 9, 8], [0.9, 0.85, 0.8, 0.85]) == [True, True, False, True]
    assert pareto_front([1, 2], [0.5, float("nan")]) == [True, False]


def test_table_has_mean_ci_per_variant_and_flags_the_front():
    table = pareto_table(summaries({
        "standard": [(0.93, 100), (0.94, 102), (0.95, 98)],
        "faster": [(0.92, 80), (0.93, 79), (0.93, 81)],
        "worse": [(0.90, 90), (0.91, 91), (0.90, 92)],   # slower than "faster" and less accurate
    }), order=["standard", "faster", "worse"])
    assert list(table.index) == ["standard", "faster", "worse"]
    assert table.loc["standard", "acc"] == pytest.approx(0.94) and table.loc["faster", "time"] == 80
    assert table.loc["standard", "acc_low"] < 0.94 < table.loc["standard", "acc_high"]
    assert table["on_front"].tolist() == [True, True, False]
    printed = format_pareto(table)
    assert printed.loc["standard", "final_test_acc (%)"].startswith("94.00 ± ")
    assert printed["Pareto front"].tolist() == ["yes", "yes", ""]


def test_one_seed_has_no_interval_and_still_plots():
    table = pareto_table(summaries({"a": [(0.9, 10)], "b": [(0.8, 5)]}))
    assert list(table.index) == ["b", "a"]  # by time without an order
    assert math.isnan(table.loc["a", "acc_low"])
    assert format_pareto(table).loc["a", "final_test_acc (%)"] == "90.00"
    assert isinstance(plot_pareto_variants(table), Figure)


def test_the_report_shows_the_front_when_there_are_several_variants(tmp_path):
    make_fake_runs(tmp_path / "many", variants=("standard", "alternate-epoch"), seeds=(0, 1, 2), epochs=3)
    write_report(tmp_path / "many")
    page = (tmp_path / "many" / "report" / "report.md").read_text()
    assert "## Accuracy vs wall time" in page and "Pareto front" in page
    assert (tmp_path / "many" / "report" / "pareto_variants.png").exists()
    assert "Accuracy vs wall time" in (tmp_path / "many" / "report" / "report.html").read_text()
    make_fake_runs(tmp_path / "one", variants=("standard",), seeds=(0, 1), epochs=2)
    write_report(tmp_path / "one")
    assert "## Accuracy vs wall time" not in (tmp_path / "one" / "report" / "report.md").read_text()
