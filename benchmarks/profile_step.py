"""Where a FashionMLP training step spends its GPU time inside the CUDA-graph path.

Prints the kernels of one profiled epoch (sorted by total device time) and the device time
per step. Used to decide what to fuse next. (An earlier version also tried
torch.compile(mode="max-autotune-no-cudagraphs"): its autotuning alone took over six minutes
on an H100 for this 3-layer MLP, so it is no option for short sweeps.)

    FREEZELAB_DATA=.data python benchmarks/profile_step.py
"""

import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

from freezelab.fast import GraphStepper
from freezelab.train import build_run

CFG = {"dataset": "fashion_mnist", "recipe": "fmnist_90_10", "data_root": os.environ.get("FREEZELAB_DATA", ".data"),
       "model": "fashion_mlp", "optimizer": "adam", "lr": 1e-3, "epochs": 10, "batch_size": 128, "seed": 42,
       "device": "cuda", "log_steps": False}


def epoch_seconds(stepper, run, epochs=(1, 2, 3)):
    times = []
    for e in epochs:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        stepper.run_epoch(e, run.batches.epoch(e))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


for label, compiled in (("plain", False),):
    run = build_run(CFG)
    stepper = GraphStepper(run)
    t1 = time.perf_counter()
    stepper.run_epoch(0, run.batches.epoch(0))
    torch.cuda.synchronize()
    print(f"{label}: first epoch (capture{' + compile' if compiled else ''}) {time.perf_counter() - t1:.2f} s")
    print(f"{label}: steady epoch {epoch_seconds(stepper, run):.4f} s for {run.steps_per_epoch} steps")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        stepper.run_epoch(4, run.batches.epoch(4))
        torch.cuda.synchronize()
    events = prof.key_averages()
    total = sum(e.device_time_total for e in events if e.device_type.name == "CUDA") if hasattr(events[0], "device_type") else 0
    print(f"{label}: kernels {sum(e.count for e in events)} in epoch, {sum(e.count for e in events)/run.steps_per_epoch:.1f}/step")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))
