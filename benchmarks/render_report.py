"""Screenshot check of the HTML report: a sweep with ties, a lockstep group and a failed run, rendered in Chromium.

What it measures: nothing numeric; it shows what a reader sees. It writes synthetic run folders
(tests/fake_runs.py: the run-folder contract, no training) for a GPU-like sweep in which every
run trained in one lockstep group: `standard` and `alternate-epoch` (the latter tied with the
baseline: -7.22 pp on every seed, in float32), `alternate-batch` (switches every step), `warmup`
(one seed failed with a NaN loss, no timing probe). It writes the report and screenshots its
top and one per-run page with headless Chromium (Debian package `chromium`; not a test
dependency).

    python benchmarks/render_report.py --out /tmp/report_check     # PNGs under --out
    python benchmarks/render_report.py --out benchmarks/results/reports/render_check --keep top

Last result (2026-12-01, CPU container, Chromium 1400x2000, benchmarks/results/reports/render_check/
report_top.png): two warnings on top (1 failed run; 4 variants timed in a lockstep group, 3
probed); the comparison table first and fully on screen, alternate-epoch "-7.22 [-7.22, -7.22]",
"no spread", "tie: same Δ on every seed"; the cost table with timing "probe" (1.100 / 0.770 /
0.740 ms per step) and "shared, not probed" (dashes) for warmup, no 82506 samples/s anywhere;
the failed warmup seed 2 with its TrainingDiverged reason and 4 finished epochs. The timeline
shows alternate-batch as a dark band ("several sets per column", 959 switches) and
alternate-epoch as 8 blocks (7 switches), one row per seed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from fake_runs import fail_run, make_fake_runs, tie_with, write_probe  # noqa: E402

from freezelab.report import write_report  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def make_sweep(root: Path) -> Path:
    """The sweep described in the module docstring; returns the experiment folder."""
    variants = ("standard", "alternate-epoch", "alternate-batch", "warmup")
    seeds = (0, 1, 2)
    runs = make_fake_runs(root, variants=variants, seeds=seeds, epochs=8, steps_per_epoch=120, lockstep=True,
                          experiment="sweep")
    by_variant = {v: runs[i * len(seeds):(i + 1) * len(seeds)] for i, v in enumerate(variants)}
    tie_with(by_variant["alternate-epoch"], by_variant["standard"], -0.0722)
    for variant, step_ms in (("standard", 1.10), ("alternate-epoch", 0.74), ("alternate-batch", 0.77)):
        write_probe(by_variant[variant][0], step_ms, peak_mib=310 if variant == "standard" else 240)
    fail_run(by_variant["warmup"][2], "TrainingDiverged: loss became nan in epoch 5 of run warmup (seed 2); "
             "lower lr (now 0.001) or pick another optimizer. The 4 finished epochs are kept.", 4)
    return root / "sweep"


def screenshot(page: Path, png: Path, size: str = "1400,2000") -> None:
    """Render ``page`` with headless Chromium into ``png``."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--screenshot={png}", f"--window-size={size}", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs, the report and the PNGs")
    parser.add_argument("--keep", choices=["all", "top"], default="all", help="top: keep only report_top.png")
    args = parser.parse_args()
    runs = args.out / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    html = write_report(make_sweep(runs))
    screenshot(html, args.out / "report_top.png")
    if args.keep == "all":
        screenshot(html.parent / "runs" / "alternate-batch__seed1.html", args.out / "run_page.png", "1400,1400")
    else:  # the committed copy: 64 colours are plenty for a page of text and line plots (~110 KB)
        from PIL import Image

        top = args.out / "report_top.png"
        Image.open(top).convert("RGB").quantize(colors=64).save(top, optimize=True)
        shutil.rmtree(runs)
    print(f"report: {html if args.keep == 'all' else '(removed)'}; screenshots in {args.out}")


if __name__ == "__main__":
    main()
