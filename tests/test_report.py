"""The report on synthetic run folders: collection, the table, every figure's edge cases, files.

Warnings are errors: a figure that warns on one epoch or a missing column would warn in CI.
Figures are drawn at a low dpi because only "renders without complaint" is being tested.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from fake_runs import fail_run, make_fake_runs, tie_with, write_probe
from freezelab.report import FIGURES, collect_all, collect_runs, format_table, markdown_table, summary_table, verdicts, write_report
from freezelab.report.plots import TIMELINE_BINS, _palette, _pareto_front, plot_pareto, plot_timeline
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


def _figures(root: Path) -> dict[str, Figure]:
    """Every report figure of the runs under ``root``, fed the table the renderer feeds it."""
    c = collect_all(root)
    return {stem: plot(getattr(c, source) if getattr(c, source) is not None else c.epochs) for stem, _, plot, source in FIGURES}


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


CASES = {
    "one_run": {"variants": ("standard",), "seeds": (0,), "epochs": 4},
    "one_epoch": {"variants": ("standard", "alternate-epoch"), "seeds": (0, 1), "epochs": 1},
    "no_optional": {"variants": ("standard", "alternate-epoch"), "seeds": (0, 1), "epochs": 3, "with_optional": False},
}


@pytest.mark.parametrize("case", CASES)
def test_every_figure_renders_in_edge_cases(tmp_path: Path, case: str) -> None:
    make_fake_runs(tmp_path, **CASES[case])
    for stem, fig in _figures(tmp_path).items():
        assert _draw(fig).startswith(PNG_MAGIC), stem


def test_missing_columns_draw_not_logged(tmp_path: Path) -> None:
    make_fake_runs(tmp_path, **CASES["no_optional"])
    placeholders = {stem for stem, fig in _figures(tmp_path).items() if "not logged" in _texts(fig)}
    assert placeholders == {"lr", "timeline", "grad_flow", "grad_final", "dead_units", "reliability"}


def test_figures_draw_data_when_logged(grid: Path) -> None:
    for stem, fig in _figures(grid).items():
        assert "not logged" not in _texts(fig), stem


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
    assert "| variant | seeds | Δ final val acc (pp) | p val acc (t) | val acc: significance |" in md  # comparison first
    for stem, *_ in FIGURES:
        assert f"]({stem}.png)" in md
        assert (tmp_path / "out" / f"{stem}.png").read_bytes().startswith(PNG_MAGIC)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]


def test_write_report_defaults_next_to_one_minimal_run(tmp_path: Path) -> None:
    make_fake_runs(tmp_path, variants=("standard",), seeds=(0,), epochs=1, with_optional=False)
    html_path = write_report(tmp_path, dpi=40)
    assert html_path == tmp_path / "report" / "report.html"
    assert "nothing to compare" in html_path.read_text()
    assert collect_runs(tmp_path)[1]["run"].tolist() == ["fake/standard/seed0"]  # report/ is not a run


# --- what the report may claim ----------------------------------------------------------------


def test_equal_differences_on_every_seed_are_a_tie_with_no_p_value(tmp_path: Path) -> None:
    base = make_fake_runs(tmp_path, variants=("standard",), seeds=(0, 1), epochs=2)
    other = make_fake_runs(tmp_path, variants=("alternate-epoch",), seeds=(0, 1), epochs=2)
    tie_with(other, base, -0.0722)  # the case: -7.22 pp on both seeds, in float32
    table = summary_table(collect_runs(tmp_path)[1])
    assert table.loc["alternate-epoch", ("Δ final val acc (pp)", "no_spread")] == 1.0
    shown = format_table(table).loc["alternate-epoch"]
    assert shown["p val acc (t)"] == "no spread" and shown["val acc: significance"] == "tie: same Δ on every seed"
    (line,) = verdicts(table)
    assert "-7.22 pp" in line and "float32" in line and "no p-value" in line and "significant" not in line


def _lockstep_grid(root: Path, probed: tuple[str, ...]) -> list[Path]:
    """A lockstep group of three variants x two seeds, a timing probe for the ``probed`` variants."""
    runs = make_fake_runs(root, variants=("standard", "alternate-epoch", "warmup"), seeds=(0, 1), epochs=3, lockstep=True)
    for run in runs:
        if run.parent.name in probed and run.name == "seed0":
            write_probe(run, {"standard": 1.2, "alternate-epoch": 0.8, "warmup": 1.0}[run.parent.name])
    return runs


def test_lockstep_runs_show_the_probe_never_the_shared_clock(tmp_path: Path) -> None:
    _lockstep_grid(tmp_path, probed=("standard", "alternate-epoch"))
    c = collect_all(tmp_path)
    assert not c.summaries["timed_alone"].any() and set(c.probes) == {"standard", "alternate-epoch"}
    table = summary_table(c.summaries, probes=c.probes)
    assert table.attrs["timing"] == {"standard": "probe", "alternate-epoch": "probe", "warmup": "shared"}
    assert table.loc["alternate-epoch", ("step time (ms)", "mean")] == pytest.approx(0.8)
    shown = format_table(table)
    assert shown["timing"].tolist() == ["probe", "probe", "shared, not probed"]
    assert "82506" not in markdown_table(shown)  # the group's throughput is nobody's
    assert shown.loc["warmup", "throughput (samples/s)"] == "—" and shown.loc["standard", "epoch time (s)"] == "—"
    assert shown.loc["standard", "throughput (samples/s)"] == f"{128_000 / 1.2:.0f}"


def test_runs_timed_alone_keep_their_measured_costs(grid: Path) -> None:
    table = summary_table(collect_runs(grid)[1])
    assert set(table.attrs["timing"].values()) == {"measured"}
    assert table.loc["standard", ("epoch time (s)", "mean")] > 0.9  # the fake standard epoch takes ~1 s


def test_an_old_folder_that_could_have_joined_a_group_is_not_trusted_alone(tmp_path: Path) -> None:
    run = make_fake_runs(tmp_path, variants=("standard",), seeds=(0,), epochs=1, lockstep=True)[0]
    summary = json.loads((run / "summary.json").read_text())
    del summary["timed_alone"]  # written before the lockstep driver recorded it
    (run / "summary.json").write_text(json.dumps(summary))
    assert collect_runs(tmp_path)[1]["timed_alone"].tolist() == [False]


def test_pareto_leaves_out_runs_timed_in_lockstep(tmp_path: Path) -> None:
    _lockstep_grid(tmp_path / "all", probed=())
    assert "lockstep" in _texts(plot_pareto(collect_runs(tmp_path / "all")[0]))
    make_fake_runs(tmp_path / "mixed", variants=("standard",), seeds=(0, 1), epochs=2)
    make_fake_runs(tmp_path / "mixed", variants=("warmup",), seeds=(0,), epochs=2, lockstep=True)
    fig = plot_pareto(collect_runs(tmp_path / "mixed")[0])
    assert "(1 runs timed in lockstep left out)" in fig.axes[0].get_title()


def _timeline_rows(fig: Figure) -> tuple[list[str], np.ndarray]:
    ax = fig.axes[0]
    return [t.get_text() for t in ax.get_yticklabels()], np.asarray(ax.get_images()[0].get_array())


@pytest.mark.parametrize("spe", [10, 400])  # 30 or 1200 steps: one image column per step, or several
def test_timeline_shows_every_seed_and_tells_per_batch_from_per_epoch(tmp_path: Path, spe: int) -> None:
    make_fake_runs(tmp_path, variants=("alternate-batch", "alternate-epoch"), seeds=(0, 1), epochs=3, steps_per_epoch=spe)
    labels, image = _timeline_rows(plot_timeline(collect_all(tmp_path).steps))
    steps = 3 * spe
    assert labels == [f"alternate-batch  seed {s}  ({steps - 1} switches)" for s in (0, 1)] + [
        f"alternate-epoch  seed {s}  (2 switches)" for s in (0, 1)]
    assert image.shape == (4, min(steps, TIMELINE_BINS))
    batch, epoch = image[0], image[2]
    assert len(np.unique(epoch)) == 2 and int((np.diff(epoch) != 0).sum()) == 2  # three blocks
    if steps <= TIMELINE_BINS:
        assert int((np.diff(batch) != 0).sum()) == steps - 1  # every switch is a column boundary
    else:
        assert set(np.unique(batch)) == {2}  # every column holds both sets: the "several sets" colour
    assert _draw(plot_timeline(collect_all(tmp_path).steps)).startswith(PNG_MAGIC)


def test_timeline_without_a_step_log_says_it_shows_epoch_ends(grid: Path) -> None:
    fig = plot_timeline(collect_all(grid).epochs)
    assert "end of each epoch" in fig.axes[0].get_xlabel() and len(_timeline_rows(fig)[0]) == 9


def test_failed_unfinished_missing_and_exploded_runs_are_listed_with_their_reason(tmp_path: Path) -> None:
    runs = make_fake_runs(tmp_path, variants=("standard", "alternate-epoch"), seeds=(0, 1, 2), epochs=4)
    fail_run(runs[3], "TrainingDiverged: loss became nan in epoch 3", 2)
    (runs[4] / "summary.json").unlink()  # killed, nothing recorded
    summary = json.loads((runs[1] / "summary.json").read_text())
    (runs[1] / "summary.json").write_text(json.dumps(summary | {"exploded": "loss 1e22 (start 2.3), accuracy at chance"}))
    manifest = {"experiment": "fake", "baseline": None, "variants": ["standard", "alternate-epoch"], "seeds": [0, 1, 2, 3]}
    (tmp_path / "fake" / "experiment.json").write_text(json.dumps(manifest))
    flagged = collect_all(tmp_path).flagged.set_index("run")
    assert flagged.loc["fake/alternate-epoch/seed0", ["status", "epochs"]].tolist() == ["failed", 2]
    assert "loss became nan" in flagged.loc["fake/alternate-epoch/seed0", "reason"]
    assert flagged.loc["fake/alternate-epoch/seed1", "status"] == "unfinished"
    assert flagged.loc["fake/standard/seed1", ["status", "reason"]].tolist() == ["exploded", "loss 1e22 (start 2.3), accuracy at chance"]
    assert sorted(flagged.index[flagged["status"] == "missing"]) == ["alternate-epoch/seed3", "standard/seed3"]
    html = write_report(tmp_path, tmp_path / "out", dpi=30, run_pages=False).read_text()
    assert "Runs not in the comparison, or flagged" in html and "loss became nan in epoch 3" in html
    assert "accuracy at chance" in html and "1 failed" in html


def test_baseline_from_the_option_or_the_experiment_file(tmp_path: Path) -> None:
    make_fake_runs(tmp_path, variants=("relu_standard", "tanh_standard"), seeds=(0, 1), epochs=2)
    for run in tmp_path.glob("fake/*/seed*"):  # every cell uses schedule standard, as in seed 004
        (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(f"name: {run.parent.name}", "name: standard"))
    assert "several variants use schedule 'standard'" in verdicts(summary_table(collect_runs(tmp_path)[1]))[0]
    html = write_report(tmp_path, tmp_path / "a", baseline="relu_standard", dpi=30, run_pages=False).read_text()
    assert "tanh_standard vs relu_standard" in html
    (tmp_path / "fake" / "experiment.json").write_text(json.dumps({"baseline": "tanh_standard", "variants": [], "seeds": []}))
    assert "relu_standard vs tanh_standard" in write_report(tmp_path, tmp_path / "b", dpi=30, run_pages=False).read_text()
    with pytest.raises(ValueError, match="--baseline 'gelu' names no single variant; choose one of"):
        write_report(tmp_path, tmp_path / "c", baseline="gelu", run_pages=False)


def test_every_run_has_a_page_with_its_config_diff_and_curves(tmp_path: Path) -> None:
    make_fake_runs(tmp_path, variants=("standard", "alternate-batch"), seeds=(0, 1), epochs=2, steps_per_epoch=5)
    out = tmp_path / "out"
    html = write_report(tmp_path, out, dpi=30).read_text()
    links = sorted(set(re.findall(r'href="(runs/[^"]+)"', html)))
    assert links == [f"runs/fake__{v}__seed{s}.html" for v in ("alternate-batch", "standard") for s in (0, 1)]
    page = (out / "runs/fake__alternate-batch__seed1.html").read_text()
    assert 'href="../report.html"' in page and "fields that differ from standard seed 1" in page
    assert "<td>schedule.name</td><td >alternate-batch</td><td >standard</td>" in page
    assert page.count('src="data:image/png;base64,') == 1
    assert "the baseline variant itself" in (out / "runs/fake__standard__seed0.html").read_text()


@pytest.mark.parametrize("variants,seeds", [(1, 1), (4, 2), (12, 5)])  # 1, 8 and 60 runs
def test_figures_stay_readable_from_1_to_60_runs(tmp_path: Path, variants: int, seeds: int) -> None:
    names = ["standard"] + [f"alternate-epoch-{i}" for i in range(variants - 1)]
    make_fake_runs(tmp_path, variants=names, seeds=tuple(range(seeds)), epochs=3, steps_per_epoch=4)
    for stem, fig in _figures(tmp_path).items():
        width, height = fig.get_size_inches()
        assert width <= 30 and height <= 30, (stem, width, height)  # no strip the browser shrinks to nothing
        for ax in fig.axes:  # a legend of many entries sits beside the data, not on it
            legend = ax.get_legend()
            if legend is not None and len(legend.get_texts()) > 6:
                assert legend.get_bbox_to_anchor().x0 >= ax.bbox.x1, stem
    assert len(set(_palette(60))) == 60  # every variant of a 60-variant grid its own colour


def test_the_report_names_the_data_copy(tmp_path):
    from freezelab.report.render import render

    from freezelab.run import train

    train({"dataset": "digits", "epochs": 1, "grad_stats": False, "experiment": "e", "variant": "standard"},
          tmp_path / "e" / "standard" / "seed0", progress=False)
    assert any(f.startswith("data: ") for f in render(tmp_path / "e", run_pages=False).facts)
