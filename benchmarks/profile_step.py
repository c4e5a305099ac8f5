"""Where a FashionMLP epoch spends its time on the default GPU path (graphs + compiled step).

Prints the kernels of one profiled epoch (sorted by total device time), the device time per
step, and the host time of the per-epoch work around the steps (validation, test, the
gradient-statistics probe, the whole epoch row); writes it all to $OUT/profile_step_gpu.md
when $OUT is set. Used to decide what to fuse next. (Inductor's GEMM autotuning,
``max_autotune_gemm``, took 180 s for this 3-layer MLP and was dropped:
benchmarks/step_variants.py.)

    FREEZELAB_DATA=.data python benchmarks/profile_step.py
"""

import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

from freezelab.run import build_run
from freezelab.run.evaluate import epoch_row, evaluate, measure_epoch, probe_statistics
from freezelab.run.plan import process_settings
from freezelab.run.steppers import StepRecord, graphed, make_stepper

CFG = {"dataset": "fashion_mnist", "recipe": "fmnist_90_10", "data_root": os.environ.get("FREEZELAB_DATA", ".data"),
       "model": "fashion_mlp", "optimizer": "adam", "lr": 1e-3, "epochs": 10, "batch_size": 128, "seed": 42,
       "device": "cuda", "log_steps": False}


def epoch_times(stepper, run, epochs=(1, 2, 3)) -> list[float]:
    """Seconds of each of ``epochs`` (synchronised), stepped by ``stepper``."""
    times = []
    for e in epochs:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        stepper.run_epoch(e, run.batches.epoch(e))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    run = build_run(CFG)
    with process_settings(run.plan):  # cuBLASLt and Dynamo's settings, as in a run
        profile_run(run)


def profile_run(run) -> None:
    stepper = make_stepper(run)
    print(f"stepper {type(stepper).__name__}, compiled: {getattr(stepper, 'compiled', False)}")
    t1 = time.perf_counter()
    stepper.run_epoch(0, run.batches.epoch(0))
    torch.cuda.synchronize()
    print(f"first epoch (with graph capture) {time.perf_counter() - t1:.2f} s")
    print(f"steady epoch {min(epoch_times(stepper, run)):.4f} s for {run.steps_per_epoch} steps")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        stepper.run_epoch(4, run.batches.epoch(4))
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
    count = sum(e.count for e in kernels)
    total_ms = sum(e.device_time_total for e in kernels) / 1000
    lines = [f"# FashionMLP graph path: {count / run.steps_per_epoch:.1f} kernels and {total_ms / run.steps_per_epoch:.3f} ms "
             f"of GPU time per step ({torch.cuda.get_device_name()}, torch {torch.__version__})", "",
             "| kernel | calls per step | GPU ms per epoch |", "|---|---:|---:|"]
    for e in sorted(kernels, key=lambda e: -e.device_time_total)[:20]:
        lines.append(f"| {e.key[:90]} | {e.count / run.steps_per_epoch:.2f} | {e.device_time_total / 1000:.2f} |")
    lines += ["", "Per-epoch work around the steps (host time with a synchronisation, median of 20):", "",
              "| piece | ms |", "|---|---:|"]
    stepped = StepRecord(torch.zeros(run.steps_per_epoch, device=run.device), [run.freezer.trainable] * run.steps_per_epoch,
                         [1.0] * run.steps_per_epoch, [])
    pieces = {"evaluate val": lambda: evaluate(run.model, run.data.val.x, run.data.val.y),
              "evaluate test": lambda: evaluate(run.model, run.data.test.x, run.data.test.y),
              "probe (grad stats, dead units, cosine)": lambda: probe_statistics(run),
              "whole epoch row, eager (all of it + host copy)":
                  lambda: epoch_row(run, 5, stepped, 0.0, measure_epoch(run))}
    measure = graphed(lambda: measure_epoch(run), run.device)
    pieces["whole epoch row, graphed (the default)"] = lambda: epoch_row(run, 5, stepped, 0.0, measure())
    for name, fn in pieces.items():
        times = []
        for _ in range(20):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        lines.append(f"| {name} | {1000 * sorted(times)[10]:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "profile_step_gpu.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
