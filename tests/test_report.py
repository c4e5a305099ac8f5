"""The report on synthetic run folders: collection, the table, every figure's edge cases, files.

Warnings are errors: a figure that warns on one epoch or a missing column would warn in CI.
Figures are drawn at a low dpi because only "renders without complaint" is being tested.
"""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from fake_runs import make_fake_runs
from freezelab.report import FIGURES, collect_runs, format_table, markdown_table, summary_table, verdicts, write_report
from freezelab.report.plots import _pareto_front
from freezelab.stats import paired_test

pytestmark = pytest.mark.filterwarnings("error")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three variants x three seeds x five epochs, every optional column logged."""
    root = tmp_path_factory.mktemp("grid")
    make_fake_runs(root, variants=("standard", "alternate-epoch", "warmup"), seeds=(0, 1, 2), epochs=5)
    return root


def _draw(fig: Figure) -> bytes:
    """Render the way the report does, so layout and log-scale warnings surface here."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    return buffer.getvalue()


def _texts(fig: Figure) -> str:
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts)


# --- collect ----------------------------------------------------------------------------------


def test_collect_joins_run_columns(grid: Path) -> None:
    epochs, summaries = collect_runs(grid)
    assert len(summaries) == 9 and len(epochs) == 45
    for column in ("run", "experiment", "variant", "seed", "schedule", "config.lr", "config.schedule.every"):
        assert column in epochs and column in summaries
    # Config fields that share a name with logged columns keep both, under different names.
    assert epochs["lr"].nunique() > 1 and set(epochs["config.lr"]) == {1e-3}
    assert set(summaries["device"]) == {"cpu"} and "config.device" in summaries
    assert set(summaries["schedule"]) == {"standard", "alternate-epoch", "warmup"}
    assert summaries.groupby("variant")["seed"].apply(sorted).tolist() == [[0, 1, 2]] * 3


def test_collect_skips_unfinished_runs_at_any_depth(tmp_path: Path) -> None:
    nested = tmp_path / "nested"  # nested/<experiment>/<variant>/seed<N>/
    runs = make_fake_runs(nested, variants=("standard",), seeds=(0, 1), epochs=2)
    (runs[1] / "summary.json").unlink()  # still training
    flat = tmp_path / "flat"  # flat/<run>/
    shutil.copytree(runs[0], flat / "only-run")
    assert collect_runs(nested)[1]["run"].tolist() == ["fake/standard/seed0"]
    assert collect_runs(nested / "fake")[1]["run"].tolist() == ["standard/seed0"]
    assert collect_runs(flat)[1]["run"].tolist() == ["only-run"]


def test_collect_labels_a_standalone_run_by_its_schedule(tmp_path: Path) -> None:
    run = make_fake_runs(tmp_path, variants=("standard",), seeds=(0,), epochs=1)[0]
    (run / "config.yaml").write_text("experiment: run\nvariant: ''\nseed: 0\nschedule: {name: alternate}\n")
    assert collect_runs(tmp_path)[1]["variant"].tolist() == ["alternate"]


def test_collect_names_the_folder_when_nothing_finished(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        collect_runs(tmp_path)


def test_collect_rejects_duplicate_seeds(tmp_path: Path) -> None:
    run = make_fake_runs(tmp_path, variants=("standard",), seeds=(0,), epochs=1)[0]
    shutil.copytree(run, run.parent / "copy-of-seed0")
    with pytest.raises(ValueError, match="copy-of-seed0"):
        collect_runs(tmp_path)


def test_collect_names_the_config_missing_a_key(tmp_path: Path) -> None:
    run = make_fake_runs(tmp_path, variants=("standard",), seeds=(0,), epochs=1)[0]
    (run / "config.yaml").write_text("experiment: x\nseed: 0\nschedule: {name: standard}\n")
    with pytest.raises(ValueError, match="config.yaml lacks \\['variant'\\]"):
        collect_runs(tmp_path)


# --- table ------------------------------------------------------------------------------------


def test_table_means_in_percent_and_paired_on_seed(grid: Path) -> None:
    _, summaries = collect_runs(grid)
    table = summary_table(summaries)
    assert table.index.tolist() == ["standard", "alternate-epoch", "warmup"]  # baseline first
    std = summaries[summaries["variant"] == "standard"]
    assert table.loc["standard", ("final val acc (%)", "mean")] == pytest.approx(100 * std["final_val_acc"].mean())
    assert table.loc["standard", ("peak mem (MiB)", "mean")] == pytest.approx(std["peak_mem_bytes"].mean() / 2**20)
    alt = summaries[summaries["variant"] == "alternate-epoch"]
    ref = paired_test(alt.set_index("seed")["final_val_acc"], std.set_index("seed")["final_val_acc"])
    delta = table.loc["alternate-epoch", "Δ final val acc (pp)"]
    assert delta["mean"] == pytest.approx(100 * ref["mean_diff"])
    assert (delta["low"], delta["high"]) == pytest.approx((100 * ref["ci_low"], 100 * ref["ci_high"]))
    assert delta["p_t"] == pytest.approx(ref["t_pvalue"]) and delta["n"] == 3
    assert np.isnan(delta["p_wilcoxon"])  # 3 seeds: too few for Wilcoxon
    assert np.isnan(table.loc["standard", ("Δ final val acc (pp)", "n")])  # the baseline is not paired with itself


def test_paired_difference_uses_only_shared_seeds(tmp_path: Path) -> None:
    make_fake_runs(tmp_path, variants=("standard",), seeds=(0, 1, 2, 3), epochs=2)
    make_fake_runs(tmp_path, variants=("alternate-epoch",), seeds=(1, 2, 3, 9), epochs=2)
    _, summaries = collect_runs(tmp_path)
    by_seed = summaries.pivot(index="seed", columns="variant", values="final_test_acc")
    shared = by_seed.loc[[1, 2, 3]]
    delta = summary_table(summaries).loc["alternate-epoch", "Δ final test acc (pp)"]
    assert delta["n"] == 3
    assert delta["mean"] == pytest.approx(100 * (shared["alternate-epoch"] - shared["standard"]).mean())


def test_table_without_baseline_says_so(grid: Path) -> None:
    _, summaries = collect_runs(grid)
    table = summary_table(summaries, baseline="lisa")
    assert table.attrs["baseline"] is None and "paired tests skipped" in table.attrs["note"]
    assert set(format_table(table)["Δ final val acc (pp)"]) == {"no baseline"}
    assert "paired tests skipped" in verdicts(table)[0]


def test_baseline_found_by_schedule_name(grid: Path) -> None:
    _, summaries = collect_runs(grid)
    summaries = summaries.assign(variant=summaries["variant"].replace({"standard": "relu_adam_0e001"}))
    assert summary_table(summaries).attrs["baseline"] == "relu_adam_0e001"


def test_formatted_table_and_verdicts(grid: Path) -> None:
    _, summaries = collect_runs(grid)
    table = summary_table(summaries)
    shown = format_table(table)
    assert shown.loc["standard", "Δ final val acc (pp)"] == "baseline"
    assert " ± " in shown.loc["standard", "final val acc (%)"]
    assert shown.loc["alternate-epoch", "Δ final val acc (pp)"].count("[") == 1
    lines = verdicts(table)
    assert len(lines) == 2 and lines[0].startswith("alternate-epoch vs standard: ")
    assert "95% CI" in lines[0] and "p=" in lines[0] and "significant" in lines[0]


def test_markdown_table_is_a_valid_pipe_table() -> None:
    df = pd.DataFrame({"a (%)": ["1 ± 2"], "b": ["x|y"]}, index=pd.Index(["v"], name="variant"))
    assert markdown_table(df).splitlines() == ["| variant | a (%) | b |", "| :--- | ---: | ---: |", "| v | 1 ± 2 | x\\|y |"]


def test_pareto_front_keeps_undominated_points() -> None:
    points = pd.DataFrame({"time": [1.0, 2.0, 3.0, 2.5], "acc": [80.0, 85.0, 84.0, 90.0]})
    assert _pareto_front(points)[["time", "acc"]].values.tolist() == [[1.0, 80.0], [2.0, 85.0], [2.5, 90.0]]


# --- figures ----------------------------------------------------------------------------------


def _fixture_tables(root: Path, **kwargs: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    make_fake_runs(root, **kwargs)
    return collect_runs(root)


CASES = {
    "one_run": {"variants": ("standard",), "seeds": (0,), "epochs": 4},
    "one_epoch": {"variants": ("standard", "alternate-epoch"), "seeds": (0, 1), "epochs": 1},
    "no_optional": {"variants": ("standard", "alternate-epoch"), "seeds": (0, 1), "epochs": 3, "with_optional": False},
}


@pytest.mark.parametrize("case", CASES)
def test_every_figure_renders_in_edge_cases(tmp_path: Path, case: str) -> None:
    epochs, summaries = _fixture_tables(tmp_path, **CASES[case])
    for stem, _, plot, source in FIGURES:
        fig = plot(epochs if source == "epochs" else summaries)
        assert _draw(fig).startswith(PNG_MAGIC), stem


def test_missing_columns_draw_not_logged(tmp_path: Path) -> None:
    epochs, summaries = _fixture_tables(tmp_path, **CASES["no_optional"])
    placeholders = {stem for stem, _, plot, source in FIGURES if "not logged" in _texts(plot(epochs if source == "epochs" else summaries))}
    assert placeholders == {"lr", "timeline", "grad_flow", "grad_final", "dead_units", "reliability"}


def test_figures_draw_data_when_logged(grid: Path) -> None:
    epochs, summaries = collect_runs(grid)
    for stem, _, plot, source in FIGURES:
        assert "not logged" not in _texts(plot(epochs if source == "epochs" else summaries)), stem


# --- files ------------------------------------------------------------------------------------


def test_write_report_is_self_contained(grid: Path, tmp_path: Path) -> None:
    html_path = write_report(grid, tmp_path / "out", dpi=40)
    assert html_path == tmp_path / "out" / "report.html"
    html = html_path.read_text()
    images = html.split('src="data:image/png;base64,')[1:]
    assert len(images) == len(FIGURES) + 1  # and the per-variant accuracy-vs-time figure (report.pareto)
    assert all(base64.b64decode(img.split('"', 1)[0]).startswith(PNG_MAGIC) for img in images)
    assert "http://" not in html and "https://" not in html and "<link" not in html and "<script" not in html
    assert "<table>" in html and "final val acc (%)" in html and "alternate-epoch vs standard" in html
    assert "9 finished runs, 3 variants" in html and "warmup: seeds 0, 1, 2" in html
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| variant | seeds | final val acc (%)" in md
    for stem, *_ in FIGURES:
        assert f"]({stem}.png)" in md
        assert (tmp_path / "out" / f"{stem}.png").read_bytes().startswith(PNG_MAGIC)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_write_report_defaults_next_to_one_minimal_run(tmp_path: Path) -> None:
    make_fake_runs(tmp_path, variants=("standard",), seeds=(0,), epochs=1, with_optional=False)
    html_path = write_report(tmp_path, dpi=40)
    assert html_path == tmp_path / "report" / "report.html"
    assert "nothing to compare" in html_path.read_text()
    assert collect_runs(tmp_path)[1]["run"].tolist() == ["fake/standard/seed0"]  # report/ is not a run
