"""Image models at full speed: CIFAR ResNet-18 epochs and ViT-S/16 steps, freezelab's default path vs plain loops.

What it measures (issue 13, requirement 5), in one process so that the ratios share the GPU's state:

* ``matmul``: the GPU's measured bf16 matrix-product rate (8192^3 products, CUDA events after a
  warm-up), the yardstick for the TFLOP/s the training loops reach.
* ``resnet``: CIFAR ResNet-18 (3x3 stem, no max-pool), CIFAR-10 (50k train, 10k test), batch 512,
  bf16 autocast, channels-last, random crop (4 px) + flip on the device, SGD momentum 0.9 with
  weight decay 5e-4 and a one-cycle LR, ``--epochs`` epochs and ``--seeds`` seeds, two ways:
  - ``freezelab``: ``freezelab.run.train`` with the default options (``fast: auto``, ``compile:
    auto``: CUDA graphs per trainable set replaying a compiled loss/backward and update), with
    every end-of-epoch measurement freezelab logs (val/test accuracy, NLL, ECE, gradient probe);
  - ``plain``: the obvious eager loop (same data on the device, same batch order, same
    augmentation draws, same optimizer and LR), bf16 autocast and channels-last, torch's fused
    SGD, no logging but a test accuracy at the end.
  Seconds per epoch are the training steps only (synchronised); the median over the epochs after
  the first (the first compiles and captures). TFLOP/s counts the matrix products of a training
  step (``freezelab.flops``: forward + backward) times the steps of an epoch.
* ``vit``: timm ViT-S/16 at 224 px (CIFAR-10 resized on the device), batch 128, bf16: the median
  step time of freezelab's eager stepper vs its default (graph + compiled) path.

Command (GPU, through the device tool, CIFAR-10 JPEG staged into .data):
    FREEZELAB_DATA=.data python benchmarks/image_speed.py --out $OUT
CPU smoke test (tiny):
    FREEZELAB_DATA=../shared/data python benchmarks/image_speed.py --device cpu --parts resnet --epochs 1 --seeds 1 --subset 1024
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from freezelab.data import IndexBatches, augment_crop_flip, load_dataset
from freezelab.flops import step_flops
from freezelab.models import build_model
from freezelab.optim import lr_schedule
from freezelab.run import train

RESNET = {"dataset": "cifar10", "recipe": "train_test", "model": "cifar_resnet18", "augment": "crop_flip",
          "optimizer": "sgd_momentum", "lr": 0.2, "weight_decay": 5e-4, "lr_schedule": "onecycle",
          "batch_size": 512, "precision": "bf16", "log_steps": False}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, n: int = 8192, reps: int = 30) -> float:
    """Measured bf16 TFLOP/s of an n^3 matrix product (the best of ``reps`` after a warm-up)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * n**3 / min(times) / 1e12


def plain_loop(cfg: dict, device: torch.device, seed: int, epochs: int) -> dict:
    """The obvious eager bf16 channels-last loop over device-resident CIFAR-10."""
    data = load_dataset("cifar10", recipe=cfg["recipe"], seed=seed, flatten=False, device=device,
                        subset=cfg.get("subset"))
    torch.manual_seed(seed)
    model = build_model("cifar_resnet18", num_classes=10).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"],
                          fused=device.type == "cuda")
    batches = IndexBatches(len(data.train.y), cfg["batch_size"], seed=seed, device=device)
    lr_at = lr_schedule("onecycle", cfg["lr"], epochs=epochs, steps_per_epoch=batches.steps_per_epoch)
    x, y = data.train.x, data.train.y
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    times = []
    for epoch in range(epochs):
        model.train()
        sync(device)
        t0 = time.perf_counter()
        for step, idx in enumerate(batches.epoch_batches(epoch)):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * batches.steps_per_epoch + step)
            xb = augment_crop_flip(x[idx], seed=seed, epoch=epoch, step=step).contiguous(memory_format=layout)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(xb), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        for i in range(0, len(data.test.y), 2048):
            xb = data.test.x[i : i + 2048].contiguous(memory_format=layout)
            correct += (model(xb).argmax(1) == data.test.y[i : i + 2048]).sum().item()
    return {"epoch_train_s": times, "test_acc": correct / len(data.test.y)}


def resnet_flops_per_epoch(device: torch.device, batch: int, train_size: int) -> float:
    model = build_model("cifar_resnet18", num_classes=10).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    return step_flops(model, x, y).total * train_size / batch


def steady(times: list[float]) -> float:
    return statistics.median(times[1:] if len(times) > 1 else times)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for one value)."""
    from scipy import stats

    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def bench_resnet(args, device: torch.device) -> dict:
    cfg = {**RESNET, "device": str(device), "epochs": args.epochs}
    if args.subset:
        cfg["subset"] = args.subset
    rows = []
    for seed in range(args.seeds):
        result = train({**cfg, "seed": seed}, progress=False)
        fl = result.epochs["train_time_s"].tolist()
        plain = plain_loop(cfg, device, seed, args.epochs)
        rows.append({"seed": seed, "freezelab_epoch_train_s": fl, "freezelab_epoch_total_s": result.epochs["epoch_time_s"].tolist(),
                     "freezelab_test_acc": result.summary["final_test_acc"], "plain_epoch_train_s": plain["epoch_train_s"],
                     "plain_test_acc": plain["test_acc"]})
        print(f"resnet seed {seed}: freezelab {steady(fl):.3f} s/epoch acc {result.summary['final_test_acc']:.4f}; "
              f"plain {steady(plain['epoch_train_s']):.3f} s/epoch acc {plain['test_acc']:.4f}", flush=True)
    train_size = 50_000 if not args.subset else args.subset
    return {"config": cfg, "runs": rows, "flops_per_epoch": resnet_flops_per_epoch(device, cfg["batch_size"], train_size)}


def bench_vit(args, device: torch.device) -> dict:
    cfg = {"dataset": "cifar10", "recipe": "train_test", "model": "vit_s16", "augment": "crop_flip", "optimizer": "adamw",
           "lr": 1e-4, "batch_size": 128, "precision": "bf16", "epochs": 2, "subset": 128 * args.vit_steps,
           "grad_stats": False, "device": str(device)}
    out = {}
    for name, extra in (("eager", {"fast": "off"}), ("graph+compiled", {})):
        t0 = time.perf_counter()
        result = train({**cfg, **extra}, progress=False)
        steps = result.steps[result.steps["epoch"] == 2]["step_time_s"].tolist()
        out[name] = {"median_step_s": statistics.median(steps), "wall_s": time.perf_counter() - t0,
                     "peak_mem_bytes": result.summary["peak_mem_bytes"]}
        print(f"vit {name}: {out[name]['median_step_s'] * 1000:.1f} ms/step", flush=True)
    return {"config": cfg, "paths": out}


def markdown(res: dict) -> str:
    lines = [f"# Image models at full speed ({res['device']}, torch {res['torch']}, {res['date']})", "",
             f"Command: `{res['command']}`", ""]
    peak = res.get("matmul_tflops")
    if peak:
        lines += [f"Measured bf16 matmul rate (8192^3): **{peak:.0f} TFLOP/s**.", ""]
    if "resnet" in res:
        r = res["resnet"]
        runs = r["runs"]
        fl = [steady(x["freezelab_epoch_train_s"]) for x in runs]
        pl = [steady(x["plain_epoch_train_s"]) for x in runs]
        fa, fa_ci = mean_ci([x["freezelab_test_acc"] for x in runs])
        pa, pa_ci = mean_ci([x["plain_test_acc"] for x in runs])
        flops = r["flops_per_epoch"]
        lines += [f"CIFAR ResNet-18, batch 512, bf16, channels-last, crop+flip, {r['config']['epochs']} epochs, "
                  f"{len(runs)} seeds; {flops / 1e12:.1f} TFLOP of matrix products per epoch.", "",
                  "| path | s / epoch (median, after epoch 1) | first epoch (s) | TFLOP/s | of measured matmul rate | test acc (mean ± 95% CI) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, times, firsts, acc, ci in (
            ("freezelab default (graph + compiled)", fl, [x["freezelab_epoch_train_s"][0] for x in runs], fa, fa_ci),
            ("plain eager bf16 channels-last", pl, [x["plain_epoch_train_s"][0] for x in runs], pa, pa_ci),
        ):
            t = statistics.median(times)
            rate = flops / t / 1e12
            share = f"{rate / peak:.0%}" if peak else "-"
            lines.append(f"| {name} | {t:.3f} | {statistics.median(firsts):.2f} | {rate:.0f} | {share} | {acc:.4f} ± {ci:.4f} |")
        lines += ["", f"Speed-up of freezelab's default path over the plain loop: **{statistics.median(pl) / statistics.median(fl):.2f}x**. "
                  "Epoch times are the training steps only; freezelab's per-epoch evaluation and gradient probe add "
                  f"{statistics.median([statistics.median([b - a for a, b in zip(x['freezelab_epoch_train_s'], x['freezelab_epoch_total_s'])]) for x in runs]):.3f} s.", ""]
    if "vit" in res:
        v = res["vit"]["paths"]
        lines += ["ViT-S/16, 224 px (CIFAR-10 resized on the device), batch 128, bf16, AdamW:", "",
                  "| path | median step (ms) | images/s | peak memory (GB) |", "|---|---:|---:|---:|"]
        for name, row in v.items():
            mem = row["peak_mem_bytes"] / 1e9 if row["peak_mem_bytes"] else float("nan")
            lines.append(f"| {name} | {row['median_step_s'] * 1000:.1f} | {128 / row['median_step_s']:.0f} | {mem:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parts", default="matmul,resnet,vit")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--vit-steps", type=int, default=24)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    device = torch.device(args.device)
    parts = args.parts.split(",")
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
                 "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "command": "python " + " ".join(sys.argv)}
    if "matmul" in parts and device.type == "cuda":
        res["matmul_tflops"] = matmul_rate(device)
        print(f"matmul {res['matmul_tflops']:.0f} TFLOP/s", flush=True)
    for part, bench in (("resnet", bench_resnet), ("vit", bench_vit)):
        if part in parts:
            try:
                res[part] = bench(args, device)
            except Exception:  # keep the other part's numbers; the traceback goes to the log
                import traceback

                traceback.print_exc()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if device.type == "cuda" else "cpu"
    (out / f"image_speed_{tag}.json").write_text(json.dumps(res, indent=2, default=str))
    (out / f"image_speed_{tag}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
