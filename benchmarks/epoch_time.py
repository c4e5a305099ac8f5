"""Seed 004's recipe: seconds per epoch, the notebook's loop vs freezelab's eager and graph paths.

What it measures: one epoch of Fashion-MNIST (54k train / 6k val, batch 128, Adam 1e-3,
FashionMLP 784-256-128-10) *including* the per-epoch validation accuracy and per-layer
gradient statistics that seed 004 computes, timed with a device synchronisation at the end
of each epoch. Three implementations run side by side in one process:

* ``seed-loop``: the notebook's structure (torchvision dataset with per-sample transforms,
  DataLoader, ``loss.item()`` every step, gradient stats through ``.cpu().numpy()``),
  re-implemented here as the baseline;
* ``freezelab-eager``: ``freezelab.run.train`` with ``fast: off`` (device-resident data, one sync
  per epoch, full logging: val/test NLL and accuracy, ECE, gradient stats, dead units, cosine);
* ``freezelab-graph``: the same with ``fast: auto``, the default: CUDA graphs per trainable set
  replaying a compiled loss/backward and a compiled optimizer update (``freezelab.run.compiled``);
* ``freezelab-graph-nocompile``: the graph path with ``compile: off`` (torch's fused Adam and
  the eager modules' kernels), to show what compiling adds.

"Same accuracy curve": the graph path and the eager path train the whole 30-epoch recipe from
the same seed; the table gives each one's final and best validation accuracy and the largest
per-epoch difference between the two curves (float rounding differs between their kernels,
so the curves are equal in distribution, not bit for bit; tests/test_run_steppers.py bounds the
per-step difference).

Command (GPU, through the device tool, data staged into .data):
    FREEZELAB_DATA=.data python benchmarks/epoch_time.py --out $OUT
CPU:
    FREEZELAB_DATA=../shared/data python benchmarks/epoch_time.py --device cpu --seed-epochs 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def seed_loop_epochs(root: str, device: torch.device, epochs: int) -> list[dict]:
    """The notebook's loop: DataLoader over a per-sample-transformed dataset, host syncs everywhere."""
    from torch.utils.data import DataLoader, random_split
    from torchvision import datasets, transforms

    torch.manual_seed(42)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    full = datasets.FashionMNIST(root, train=True, download=True, transform=tf)
    train_set, val_set = random_split(full, [54000, 6000], generator=torch.Generator().manual_seed(42))
    train_loader = DataLoader(train_set, batch_size=128, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=128, shuffle=False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        total = 0.0
        for xb, yb in train_loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item()
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for xb, yb in val_loader:
                pred = model(xb.to(device)).argmax(1)
                correct += (pred == yb.to(device)).sum().item()
                seen += len(yb)
        model.train()
        xb, yb = next(iter(train_loader))
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb.to(device)), yb.to(device)).backward()
        for _, p in model.named_parameters():
            g = p.grad.detach().cpu().numpy().ravel()
            _ = (np.abs(g).mean(), g.std(), (g == 0).mean())
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append({"epoch": epoch + 1, "epoch_time_s": time.perf_counter() - t0, "val_acc": correct / seen,
                    "train_loss": total / len(train_loader)})
    return out


def freezelab_epochs(root: str, device: str, epochs: int, fast: str, compile_: str = "auto") -> list[dict]:
    from freezelab.run import train

    result = train(
        {"dataset": "fashion_mnist", "recipe": "fmnist_90_10", "data_root": root, "model": "fashion_mlp",
         "optimizer": "adam", "lr": 1e-3, "epochs": epochs, "batch_size": 128, "seed": 42, "device": device, "fast": fast,
         "compile": compile_},
        progress=False,
    )
    cols = ["epoch", "epoch_time_s", "train_time_s", "val_acc", "train_loss"]
    return result.epochs[cols].to_dict("records")


def steady(rows: list[dict], key: str = "epoch_time_s") -> float:
    """Median over epochs after the first (which includes warm-up and graph capture)."""
    values = [r[key] for r in rows[1:]] or [rows[0][key]]
    return statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed-epochs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the recipe for the graph and eager paths (GPU)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    root = os.environ.get("FREEZELAB_DATA", "../shared/data")
    device = torch.device(args.device)
    rows = {}
    if args.seed_epochs:
        rows["seed-loop"] = seed_loop_epochs(root, device, args.seed_epochs)
    if device.type == "cuda":
        rows["freezelab-graph"] = freezelab_epochs(root, args.device, args.epochs, "auto")
        rows["freezelab-graph-nocompile"] = freezelab_epochs(root, args.device, 10, "auto", "off")
        rows["freezelab-eager"] = freezelab_epochs(root, args.device, args.epochs, "off")
    else:
        rows["freezelab-eager"] = freezelab_epochs(root, args.device, max(3, args.epochs // 6), "off")
    base = steady(rows["seed-loop"]) if "seed-loop" in rows else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    table = []
    for label, r in rows.items():
        t = steady(r)
        table.append({"implementation": label, "s_per_epoch": t, "train_s_per_epoch": steady(r, "train_time_s") if "train_time_s" in r[0] else None,
                      "first_epoch_s": r[0]["epoch_time_s"], "speedup_vs_seed_loop": base / t if base else None,
                      "final_val_acc": r[-1]["val_acc"], "best_val_acc": max(x["val_acc"] for x in r), "epochs": len(r)})
    curves = {}
    if "freezelab-graph" in rows and "freezelab-eager" in rows:
        g, e = rows["freezelab-graph"], rows["freezelab-eager"]
        curves = {"epochs_compared": min(len(g), len(e)),
                  "max_abs_diff_val_acc": max(abs(a["val_acc"] - b["val_acc"]) for a, b in zip(g, e)),
                  "max_abs_diff_train_loss": max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(g, e))}
    record = {"benchmark": "epoch_time", "device": name, "torch": torch.__version__, "python": sys.version.split()[0],
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "table": table, "graph_vs_eager_curve": curves, "epochs": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if device.type == "cuda" else "cpu"
    (out / f"epoch_time_{tag}.json").write_text(json.dumps(record, indent=2))
    lines = [f"# Seed 004 recipe: seconds per epoch ({name}, torch {torch.__version__}, {record['date']})", "",
             f"Command: `{record['command']}`", "",
             "| implementation | s/epoch (whole epoch) | s/epoch (train steps) | first epoch (s) | speed-up vs seed loop | final val acc | best val acc | epochs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in table:
        train_s = f"{t['train_s_per_epoch']:.4f}" if t["train_s_per_epoch"] is not None else "-"
        speed = f"{t['speedup_vs_seed_loop']:.0f}x" if t["speedup_vs_seed_loop"] else "-"
        lines.append(f"| {t['implementation']} | {t['s_per_epoch']:.4f} | {train_s} | {t['first_epoch_s']:.2f} | {speed} | "
                     f"{t['final_val_acc']:.2%} | {t['best_val_acc']:.2%} | {t['epochs']} |")
    if curves:
        lines += ["", f"Graph path vs eager path, same seed, {curves['epochs_compared']} epochs: largest per-epoch difference "
                      f"{100 * curves['max_abs_diff_val_acc']:.2f} pp of val accuracy, {curves['max_abs_diff_train_loss']:.4f} of train loss."]
    (out / f"epoch_time_{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
