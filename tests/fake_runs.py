"""Synthetic run folders that follow the run-folder contract in docs/design.md.

The report is tested against these instead of real training so the tests take milliseconds and
can create the awkward cases on purpose: one run, one epoch, unlogged optional columns.
Curves are shaped like real ones (loss decays, accuracy saturates, frozen layers get zero
gradient) so the plots exercise log scales and bands the way real data does.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

# Parameter groups of the fake 3-layer MLP: "first" holds fc1 and fc2, "second" holds fc3.
GROUPS = {"first": ("fc1", "fc2"), "second": ("fc3",)}
PARAMS = [f"{layer}.{kind}" for layer in ("fc1", "fc2", "fc3") for kind in ("weight", "bias")]
DEAD_LAYERS = ("act1", "act2")
N_BINS = 15


def _trainable(variant: str, epoch: int) -> str:
    """Alternating variants train one group per epoch; every other variant trains both."""
    if variant.startswith("alternate"):
        return "first" if epoch % 2 == 1 else "second"
    return "first+second"


def _step_trainable(variant: str, step: int, spe: int) -> str:
    """The per-step set: ``alternate-batch`` switches every step, other variants as :func:`_trainable`."""
    if variant.startswith("alternate-batch"):
        return "first" if step % 2 == 0 else "second"
    return _trainable(variant, step // spe + 1)


def _steps_table(variant: str, epochs: int, spe: int, rng: np.random.Generator) -> pd.DataFrame:
    """The per-step log the training loop writes (steps.parquet)."""
    step = np.arange(epochs * spe)
    return pd.DataFrame({
        "step": step,
        "epoch": step // spe + 1,
        "loss": 1.8 * np.exp(-step / (2.0 * spe)) + 0.25 + rng.normal(0, 0.02, step.size),
        "trainable": [_step_trainable(variant, int(i), spe) for i in step],
        "trainable_fraction": 1.0,
        "step_time_s": rng.uniform(0.001, 0.002, step.size),
    })


def _epochs_table(variant: str, seed: int, epochs: int, with_optional: bool, rng: np.random.Generator) -> pd.DataFrame:
    """One row per epoch; the variant shifts accuracy slightly so paired tests have a signal."""
    e = np.arange(1, epochs + 1)
    offset = -0.004 if variant != "standard" else 0.0
    val_acc = np.clip(0.90 - 0.35 * np.exp(-e / 1.5) + offset + rng.normal(0, 0.003, epochs), 0, 1)
    table: dict[str, object] = {
        "epoch": e,
        "train_loss": 1.8 * np.exp(-e / 2.0) + 0.25 + rng.normal(0, 0.01, epochs),
        "val_loss": 1.7 * np.exp(-e / 2.0) + 0.32 + rng.normal(0, 0.01, epochs),
        "val_acc": val_acc,
        "test_loss": 1.7 * np.exp(-e / 2.0) + 0.33 + rng.normal(0, 0.01, epochs),
        "test_acc": np.clip(val_acc - 0.005 + rng.normal(0, 0.002, epochs), 0, 1),
        "epoch_time_s": (1.0 if variant == "standard" else 0.8) + rng.uniform(0, 0.05, epochs),
    }
    if not with_optional:
        return pd.DataFrame(table)
    trainable = [_trainable(variant, int(i)) for i in e]
    table |= {
        "lr": 1e-3 * 0.5 * (1 + np.cos(np.pi * (e - 1) / max(epochs, 1))),
        "trainable": trainable,
        "trainable_fraction": [0.5 if "+" not in t else 1.0 for t in trainable],
        "opt_state_bytes": np.full(epochs, 2 * 4 * 200_000),
        "val_ece": 0.05 * np.exp(-e / 3.0) + 0.02,
        "grad_cosine": rng.uniform(-0.1, 0.3, epochs),
    }
    for param in PARAMS:
        layer = param.split(".")[0]
        group = next(g for g, layers in GROUPS.items() if layer in layers)
        depth_scale = 10.0 ** -(3 - int(layer[-1]))  # earlier layers get smaller gradients
        grad = depth_scale * 0.05 * np.exp(-e / 4.0) * rng.uniform(0.8, 1.2, epochs)
        frozen = np.array([group not in t.split("+") for t in trainable])
        table[f"grad_mean_abs:{param}"] = np.where(frozen, 0.0, grad)
        table[f"grad_std:{param}"] = np.where(frozen, 0.0, 1.5 * grad)
        table[f"grad_pct_zero:{param}"] = np.where(frozen, 100.0, rng.uniform(0, 5, epochs))
    for i, layer in enumerate(DEAD_LAYERS):
        table[f"dead_pct:{layer}"] = np.clip(2.0 + 3.0 * i + 0.5 * e + rng.normal(0, 0.3, epochs), 0, 100)
    return pd.DataFrame(table)


def _reliability(rng: np.random.Generator) -> dict[str, list[float]]:
    """15 equal-width bins, slightly over-confident, empty bins at low confidence like real models."""
    centers = (np.arange(N_BINS) + 0.5) / N_BINS
    count = np.where(centers < 0.3, 0, rng.integers(5, 400, N_BINS))
    conf = np.where(count > 0, centers, 0.0)
    acc = np.where(count > 0, np.clip(centers - 0.03 + rng.normal(0, 0.01, N_BINS), 0, 1), 0.0)
    return {"conf": conf.tolist(), "acc": acc.tolist(), "count": count.tolist()}


def _summary(ep: pd.DataFrame, with_optional: bool, rng: np.random.Generator) -> dict[str, object]:
    """Scalars computed from the epoch table the way the training loop defines them."""
    acc = ep["val_acc"].to_numpy()
    best = float(acc.max())
    target = 0.85
    reached = np.flatnonzero(acc >= target)
    cum_time = ep["epoch_time_s"].cumsum().to_numpy()
    summary: dict[str, object] = {
        "final_val_acc": float(acc[-1]),
        "best_val_acc": best,
        "best_epoch": int(acc.argmax()) + 1,
        "epoch_to_90pct_best": int(np.flatnonzero(acc >= 0.9 * best)[0]) + 1,
        "final_test_acc": float(ep["test_acc"].iloc[-1]),
        "final_train_loss": float(ep["train_loss"].iloc[-1]),
        "stability": float(1 / (1 + ep["train_loss"].var(ddof=0))),
        "mean_early_grad": 1e-4,
        "avg_epoch_time_s": float(ep["epoch_time_s"].mean()),
        "total_time_s": float(cum_time[-1]),
        "target_acc": target,
        "time_to_target_s": float(cum_time[reached[0]]) if reached.size else None,
        "peak_mem_bytes": None,
        "throughput_samples_per_s": float(54_000 / ep["epoch_time_s"].mean()),
        "step_time_ms": float(ep["epoch_time_s"].mean() / 422 * 1000),
        "device": "cpu",
        "torch_version": "2.4.0",
    }
    if with_optional:
        summary |= {
            "peak_mem_bytes": int(rng.integers(200, 300) * 2**20),
            "test_ece": float(rng.uniform(0.02, 0.05)),
            "reliability": _reliability(rng),
        }
    return summary


def make_fake_runs(
    root: Path | str,
    variants: Sequence[str] = ("standard", "alternate-epoch"),
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 5,
    with_optional: bool = True,
    experiment: str = "fake",
    steps_per_epoch: int = 0,
    lockstep: bool = False,
) -> list[Path]:
    """Write finished run folders ``root/<experiment>/<variant>/seed<N>/`` (the runner's layout).

    Each variant's schedule is named after the variant, so "standard" is the default baseline.
    ``with_optional=False`` leaves out everything a minimal logger might skip: lr, trainable,
    per-layer columns, ECE and the reliability bins. ``steps_per_epoch > 0`` writes a per-step
    log (``alternate-batch*`` variants switch every step). ``lockstep=True`` makes every run one
    of a lockstep group, as the lockstep driver records it (``plan.json`` key, ``timed_alone:
    false``, ``lockstep_group``), with the group's shared time and memory; `write_probe` adds
    the timing probe.

    Example: ``make_fake_runs(tmp_path, variants=("standard",), seeds=(0,), epochs=1)``.
    """
    paths = []
    for variant in variants:
        for seed in seeds:
            rng = np.random.default_rng(zlib.crc32(f"{variant}/{seed}".encode()))
            run_dir = Path(root) / experiment / variant / f"seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            config = {
                "experiment": experiment,
                "variant": variant,
                "seed": int(seed),
                "schedule": {"name": variant, "every": 1},
                "dataset": "fashion_mnist",
                "model": "mlp3",
                "activation": "relu",
                "optimizer": "adam",
                "lr": 1e-3,
                "scheduler": "cosine",
                "epochs": epochs,
                "batch_size": 128,
                "device": "cpu",
            }
            (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            ep = _epochs_table(variant, seed, epochs, with_optional, rng)
            summary = _summary(ep, with_optional, rng)
            plan = {"device": "cuda:0" if lockstep else "cpu", "lockstep_key": ["fashion_mnist", 128, epochs] if lockstep else None}
            if lockstep:  # the group's clock and the process-wide peak: the same for every member
                ep["epoch_time_s"] = 0.5
                summary |= {"avg_epoch_time_s": 0.5, "total_time_s": 0.5 * epochs, "throughput_samples_per_s": 82506.0,
                            "step_time_ms": 1.18, "peak_mem_bytes": 900 * 2**20, "timed_alone": False,
                            "lockstep_group": [f"{v}/seed{s}" for v in variants for s in seeds]}
            ep.to_parquet(run_dir / "epochs.parquet", index=False)
            (run_dir / "plan.json").write_text(json.dumps(plan))
            if steps_per_epoch:
                _steps_table(variant, epochs, steps_per_epoch, rng).to_parquet(run_dir / "steps.parquet", index=False)
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            paths.append(run_dir)
    return paths


def write_probe(run_dir: Path, step_ms: float, peak_mib: float = 250.0) -> None:
    """A ``timing_probe.json`` as :func:`freezelab.run.probe.write_timing_probe` writes it."""
    probe = {"method": "eager steps timed alone with CUDA events after warm-up", "device": "fake GPU", "steps": 20,
             "warmup": 5, "batch_size": 128, "sets": [{"trainable": "first+second", "share": 1.0, "step_ms": step_ms,
                                                      "peak_mem_bytes": int(peak_mib * 2**20)}],
             "step_ms": step_ms, "throughput_samples_per_s": 128_000 / step_ms, "peak_mem_bytes": int(peak_mib * 2**20)}
    (run_dir / "timing_probe.json").write_text(json.dumps(probe))


def fail_run(run_dir: Path, error: str, epochs_finished: int) -> None:
    """Turn a finished fake run into one that failed after ``epochs_finished`` epochs, as the runner records it."""
    (run_dir / "summary.json").unlink()
    ep = pd.read_parquet(run_dir / "epochs.parquet").head(epochs_finished)
    ep.to_parquet(run_dir / "epochs.parquet", index=False)
    (run_dir / "failed.json").write_text(json.dumps({"error": error, "epochs_finished": epochs_finished}))


def tie_with(run_dirs: Sequence[Path], base_dirs: Sequence[Path], delta: float) -> None:
    """Make each run's final accuracies the baseline's plus ``delta``, computed in float32 as devices do.

    The differences are then equal up to float32 rounding on every seed: a tie, with no spread.
    """
    for run_dir, base_dir in zip(run_dirs, base_dirs):
        base = json.loads((base_dir / "summary.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        for key in ("final_val_acc", "final_test_acc"):
            summary[key] = float(np.float32(base[key]) + np.float32(delta))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
