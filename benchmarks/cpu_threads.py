"""What the ``threads`` run option changes on a CPU: the result (weights) and the time per epoch.

Trains the same run (seed 004's Fashion-MNIST MLP, batch 128, Adam, 2 epochs on 12,000 training
images; and the demo's digits MLP, 20 epochs) with ``threads: 1`` and ``threads: 2``,
alternately, ``REPEATS`` times each, and prints the best epoch time of each and the largest
weight difference between the two. Why ``threads`` is a config field with default 1
(:mod:`freezelab.config`): the weights differ, so the thread count is part of a run's identity,
and the time a second thread buys is small next to running two runs at once (``--jobs 2``).

    FREEZELAB_DATA=../shared/data python benchmarks/cpu_threads.py

Last result (2 CPU cores shared with other jobs, load average about 8, so two threads fight for
cores; an idle machine was not available, where a second thread should help a little):
    fashion_mlp: threads 1: 2.79 s/epoch, threads 2: 34.5 s/epoch, max |w1 - w2| = 1.3e-07
    digits mlp: threads 1: 0.142 s/epoch, threads 2: 1.79 s/epoch, max |w1 - w2| = 1.1e-06
(One full Fashion-MNIST epoch without the subset: max |w1 - w2| = 0.043.)
"""

from __future__ import annotations

import os

import torch

from freezelab.run import train

REPEATS = 3
CASES = {
    "fashion_mlp": {"dataset": "fashion_mnist", "recipe": "fmnist_90_10", "model": "fashion_mlp", "subset": 12000,
                    "epochs": 2, "batch_size": 128, "seed": 42, "grad_stats": False},
    "digits mlp": {"dataset": "digits", "model_args": {"hidden": [128, 128]}, "epochs": 20, "batch_size": 64, "lr": 3e-3},
}


def main() -> None:
    root = os.environ.get("FREEZELAB_DATA")
    for name, cfg in CASES.items():
        cfg = {**cfg, "device": "cpu", "data_root": root}
        best, weights = {}, {}
        for _ in range(REPEATS):
            for threads in (1, 2):
                result = train({**cfg, "threads": threads}, progress=False)
                best[threads] = min(best.get(threads, float("inf")), result.summary["avg_epoch_time_s"])
                weights[threads] = torch.cat([p.detach().flatten() for p in result.model.parameters()])
        diff = (weights[1] - weights[2]).abs().max().item()
        print(f"{name}: threads 1: {best[1]:.3g} s/epoch, threads 2: {best[2]:.3g} s/epoch, max |w1 - w2| = {diff:.2g}")


if __name__ == "__main__":
    main()
