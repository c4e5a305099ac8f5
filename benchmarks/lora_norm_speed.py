"""Seed 002's shape on the GPU: deep LoRA + Norm schedules on ViT-S/16, per phase and per run (issue 14, req. 6).

Every variant is a ``freezelab.run.train`` run of the same config (ViT-S/16 at 224 px, CIFAR-10
classes 5-9 resized on the device, peft LoRA r 8 / alpha 16 on qkv, proj, fc1, fc2, groups lora,
norm and head, base frozen, batch 128, bf16, AdamW), in one process so that the ratios share
the GPU's state:

* ``eager baseline``: all three groups train, ``fast: off`` (freezelab's eager stepper, the
  plain loop's speed);
* ``baseline``, ``LoRA-first K=50`` (LoRA frozen first, so Norm trains first), ``Norm-first K=50``,
  ``warm-up LoRA 200``: freezelab's default path (CUDA graphs per trainable set replaying a
  compiled step), with frozen LoRA merged into the base weights (``merge_frozen_lora: auto``);
* ``LoRA-first K=50, unmerged``: the same with ``merge_frozen_lora: off``, to show what the merge buys.

Per trainable set ("phase") the median step time of the per-step log (CUDA events around the
graph replays; a set's first replay also waited for its compile and capture, so medians, not
means) and the phase's peak CUDA memory (``freezelab.run.memory``). A run's average step is the
phase medians weighted by the share of the schedule's steps each phase trains over seed 002's
five epochs (880 steps here); throughput is 128 images over it. A run's peak memory is its
costliest phase's. Seconds per epoch of the last epoch are given too (every graph compiled by then).

Command (GPU, through the device tool, CIFAR-10 JPEG staged into .data):
    FREEZELAB_DATA=.data python benchmarks/lora_norm_speed.py --out $OUT
CPU smoke test (tiny):
    FREEZELAB_DATA=../shared/data python benchmarks/lora_norm_speed.py --device cpu --model vit_tiny32 --subset 512 --epochs 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from freezelab.run import build_run, train
from freezelab.run.memory import set_label
from freezelab.run.probe import trainable_set_shares

BASE = {
    "dataset": "cifar10", "recipe": "classes_5_9", "model": "vit_s16", "augment": "crop_flip",
    "model_args": {"lora": {"r": 8, "alpha": 16, "targets": ["qkv", "proj", "fc1", "fc2"]}},
    "groups": {"by": "kind", "kinds": ["lora", "norm", "head"]}, "optimizer": "adamw", "lr": 5e-4,
    "weight_decay": 0.01, "batch_size": 128, "precision": "bf16", "grad_stats": False, "policy": "keep",
}
ALT = {"name": "alternate", "groups": ["norm", "lora"], "every": 50, "unit": "batch"}
VARIANTS = {
    "eager baseline": {"schedule": {"name": "standard"}, "fast": "off"},
    "baseline": {"schedule": {"name": "standard"}},
    "LoRA-first K=50": {"schedule": {**ALT, "first": "norm"}},
    "Norm-first K=50": {"schedule": {**ALT, "first": "lora"}},
    "warm-up LoRA 200": {"schedule": {"name": "warmup", "groups": ["lora"], "steps": 200}},
    "LoRA-first K=50, unmerged": {"schedule": {**ALT, "first": "norm"}, "merge_frozen_lora": "off"},
}
SEED_EPOCHS = 5  # seed 002's run length, over which the phase shares are counted
PHASE_NAMES = {"head+lora+norm": "all", "head+norm": "LoRA frozen", "head+lora": "Norm frozen"}


def phase_shares(cfg: dict) -> dict[str, float]:
    """Each trainable set's share of the steps of seed 002's five epochs under ``cfg``'s schedule.

    Schedules are pure, so this is the timing probe's scan of the clock over a run built (on the
    CPU, untrained) with five epochs; the labels are those of the per-step log.
    """
    run = build_run({**cfg, "epochs": SEED_EPOCHS, "device": "cpu"})
    return {set_label(names): share for names, (_, share) in trainable_set_shares(run).items()}


def bench(args) -> dict:
    device = torch.device(args.device)
    base = {**BASE, "model": args.model, "epochs": args.epochs, "device": args.device}
    if args.subset:
        base["subset"] = args.subset
    out = []
    for name, variant in VARIANTS.items():
        if args.variants and name not in args.variants:
            continue
        cfg = {**base, **variant}
        t0 = time.perf_counter()
        result = train(cfg, progress=False)
        wall = time.perf_counter() - t0
        s = result.summary
        shares = phase_shares(cfg)
        sets = s["trainable_sets"]
        phases = {}
        for label, share in shares.items():
            got = sets.get(label, {})
            phases[PHASE_NAMES.get(label, label)] = {
                "share": share, "steps_measured": got.get("steps"), "step_ms_median": got.get("step_time_ms_median"),
                "trainable_params": got.get("trainable_params"), "peak_mem_bytes": got.get("peak_mem_bytes"),
            }
        measured = [p for p in phases.values() if p["step_ms_median"] is not None]
        avg_ms = sum(p["share"] * p["step_ms_median"] for p in measured) / sum(p["share"] for p in measured)
        epochs = result.epochs["train_time_s"].tolist()
        out.append({
            "variant": name, "config": variant,
            "phases": phases, "avg_step_ms": avg_ms, "throughput_img_s": cfg["batch_size"] / avg_ms * 1000,
            "peak_mem_bytes": s["peak_mem_bytes"], "epoch_train_s": epochs, "wall_s": wall,
            "final_test_acc": s["final_test_acc"],
        })
        print(json.dumps(out[-1]), flush=True)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python " + " ".join(sys.argv), "base": base, "runs": out}


def markdown(res: dict) -> str:
    runs = {r["variant"]: r for r in res["runs"]}
    ref = runs.get("baseline")
    eager = runs.get("eager baseline")
    lines = [f"# Seed 002's shape: LoRA + Norm schedules on {res['base']['model']} ({res['device']}, torch {res['torch']}, {res['date']})",
             "", f"Command: `{res['command']}`", "",
             "| run | phase | share | median step (ms) | peak memory (GB) |", "|---|---|---:|---:|---:|"]
    for r in res["runs"]:
        for phase, p in r["phases"].items():
            ms = f"{p['step_ms_median']:.1f}" if p["step_ms_median"] is not None else "—"
            mem = f"{p['peak_mem_bytes'] / 1e9:.2f}" if p["peak_mem_bytes"] else "—"
            lines.append(f"| {r['variant']} | {phase} | {p['share']:.2f} | {ms} | {mem} |")
    lines += ["", "| run | avg step (ms) | images/s | vs compiled baseline | vs eager baseline | peak memory (GB) | last epoch (s) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["runs"]:
        vs = f"{r['throughput_img_s'] / ref['throughput_img_s'] - 1:+.1%}" if ref else "—"
        ve = f"{r['throughput_img_s'] / eager['throughput_img_s']:.2f}x" if eager else "—"
        mem = f"{r['peak_mem_bytes'] / 1e9:.2f}" if r["peak_mem_bytes"] else "—"
        lines.append(f"| {r['variant']} | {r['avg_step_ms']:.1f} | {r['throughput_img_s']:.0f} | {vs} | {ve} | {mem} | "
                     f"{r['epoch_train_s'][-1]:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="vit_s16")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--variants", nargs="*", default=None)
    args = parser.parse_args()
    res = bench(args)
    tag = "gpu" if args.device.startswith("cuda") else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"lora_norm_speed_{tag}.json").write_text(json.dumps(res, indent=1))
    (args.out / f"lora_norm_speed_{tag}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
