"""Epoch time with a frozen prefix cached (``cache_frozen_prefix``) against recomputing it each step.

A prefix frozen for the whole run costs no backward pass either way; the cache also removes its
forward pass, computing its outputs once per example (``freezelab.run.prefix_cache``). This
trains seed 001's MLP (784-256-256-256-10, four depth blocks) on MNIST with ``freeze`` of the
first k blocks for k = 1..3, once with the cache off and once on, same seed, and reports the
median ``train_time_s`` over the epochs after the first (the steps alone: evaluation and the
gradient probe run the whole model either way), the saving, and whether the final weights
are equal. On a shared CPU the two settings alternate ``--repeats`` times and the estimate is
the *minimum* epoch time (the least-disturbed epoch); the load average is recorded with it.

    FREEZELAB_DATA=/work/shared/data PYTHONPATH=src python benchmarks/prefix_cache.py --device cpu --out benchmarks/results
    python benchmarks/prefix_cache.py --device cuda --out $OUT     # GPU: eager stepper (fast: off), as the cache needs

Last result: benchmarks/results/prefix_cache_cpu.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

import torch

from freezelab.run import train

BLOCKS = ["block0", "block1", "block2", "block3"]


def run(k: int, cache: str, args: argparse.Namespace):
    cfg = {"dataset": "mnist", "recipe": "mnist10k_80_20", "data_root": os.environ.get("FREEZELAB_DATA"),
           "model": "seed001_mlp", "groups": {"by": "depth", "blocks": 4}, "optimizer": "adam", "lr": 1e-3,
           "epochs": args.epochs, "batch_size": args.batch_size, "seed": 42, "device": args.device, "fast": "off",
           "log_steps": False, "grad_stats": False, "schedule": {"name": "freeze", "groups": BLOCKS[:k]},
           "cache_frozen_prefix": cache}
    return train(cfg, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="alternations of cache off/on per k")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    rows = []
    for k in (0, 1, 2, 3):
        times: dict[str, list[float]] = {}
        models = {}
        for _ in range(args.repeats):
            for cache in ("off", "on") if k else ("off",):
                result = run(k, cache, args)
                times.setdefault(cache, []).extend(result.epochs["train_time_s"].tolist()[1:])
                models[cache] = result.model.state_dict()
        times = {cache: min(values) for cache, values in times.items()}
        equal = all(torch.equal(v, models["on"][n]) for n, v in models["off"].items()) if k else None
        row = {"frozen_blocks": k, "off_s": times["off"], "on_s": times.get("on"),
               "saving": 1 - times["on"] / times["off"] if k else None, "weights_equal": equal}
        rows.append(row)
        print(row, flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    meta = {"device": device, "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "repeats": args.repeats, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python " + " ".join(sys.argv), "epochs": args.epochs, "batch_size": args.batch_size}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if args.device.startswith("cuda") else "cpu"
    (out / f"prefix_cache_{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# Frozen-prefix cache: epoch time ({device}, torch {meta['torch']}, {meta['threads']} threads)", "",
             f"{meta['date']}; `{meta['command']}`", "",
             "seed001_mlp on MNIST (mnist10k_80_20: 8,000 training images), batch "
             f"{args.batch_size}, Adam, `freeze` of the first k of 4 depth blocks for the whole run; fastest "
             f"`train_time_s` of epochs 2..{args.epochs} over {args.repeats} alternating runs per setting "
             f"(load average at the end: {meta['load_average']}).", "",
             "| frozen blocks | no cache (s/epoch) | cached (s/epoch) | saving | final weights equal |", "|---:|---:|---:|---:|:---|"]
    for r in rows:
        on = f"{r['on_s']:.3f}" if r["on_s"] is not None else "-"
        saving = f"{r['saving']:.0%}" if r["saving"] is not None else "-"
        equal = {None: "-", True: "yes (bit-identical)", False: "no"}[r["weights_equal"]]
        lines.append(f"| {r['frozen_blocks']} | {r['off_s']:.3f} | {on} | {saving} | {equal} |")
    (out / f"prefix_cache_{tag}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
