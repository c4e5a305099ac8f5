"""Freezing under DDP on CPUs (gloo): step time of rebuilding the wrapper per trainable set vs the alternatives.

Two processes train an MLP of ``--depth`` square ``--width`` layers (8 x 1024: 8.4 M parameters,
one group per layer) under three schedules, each with several ways of running DDP:

* ``rebuild``      ``FreezingDDP(cache_size=1)``: a DDP wrapper over exactly the trainable set,
                   rebuilt at every switch (freezelab's default);
* ``cached``       ``FreezingDDP(cache_size=2)``: the two most recent wrappers kept, so an
                   alternation reuses them instead of rebuilding;
* ``find_unused``  one DDP wrapper over everything with ``find_unused_parameters=True`` (what
                   Composer forces), the Freezer toggling ``requires_grad`` underneath;
* ``plain``        plain DDP, nothing frozen (the reference: what a step costs without freezing).

Schedules: ``standard``, ``alternate`` (halves of the layers, switching every 10 steps) and
``progressive`` (Composer's, per batch, from 30% of the segment). Configurations are run in
interleaved rounds and step times are pooled, so background load hits all of them alike; the
table gives the median step, the mean step (which includes the switches), and the cost of one
rebuild: DDP construction without the initial broadcast (``init_sync=False``), and with it.

    python benchmarks/ddp_freezing.py                     # writes benchmarks/results/ddp_freezing_cpu.{json,md}
    python benchmarks/ddp_freezing.py --quick --out /tmp  # smoke test

Both processes run on the same machine (``--threads`` intra-op threads each): on a 2-core
machine they share its cores, so compute and the gloo all-reduce over loopback compete.
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

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from freezelab import Freezer, groups
from freezelab.distributed import FreezingDDP, launch
from freezelab.schedules import Alternate, Clock, Progressive, Standard

SCHEDULES = {
    "standard": lambda n: Standard(),
    "alternate": lambda n: Alternate(groups=("first", "second"), every=10, unit="batch"),
    "progressive": lambda n: Progressive(freeze_start=0.3, unit="batch"),
}
# (method, schedule) pairs; plain DDP only makes sense with nothing frozen.
CONFIGS = [
    ("plain", "standard"),
    ("rebuild", "standard"),
    ("find_unused", "standard"),
    *[(m, s) for s in ("alternate", "progressive") for m in ("rebuild", "cached", "find_unused")],
]


def build_model(width: int, depth: int) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _groups(model: nn.Sequential, schedule: str):
    if schedule == "alternate":
        return groups.depth(model, 2)
    return groups.layers(model)


def run_config(method: str, schedule: str, args, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Train one configuration for ``args.steps`` steps; per-step wall times on this rank."""
    model = build_model(args.width, args.depth)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    freezer = Freezer(model, _groups(model, schedule), SCHEDULES[schedule](args.depth), opt)
    engine = None
    if method in ("rebuild", "cached"):
        engine = FreezingDDP(model, freezer, cache_size=1 if method == "rebuild" else 2)
        forward = engine
    else:  # wrapped once, before anything is frozen
        forward = DistributedDataParallel(model, find_unused_parameters=method == "find_unused")
    times, switches, first_build = [], [], 0.0
    for step in range(args.steps):
        clock = Clock.at(step, args.steps, 1)
        dist.barrier()
        start = time.perf_counter()
        changed = engine.step(clock) if engine is not None else freezer.step(clock)
        F.cross_entropy(forward(x), y).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
        switches.append(bool(changed) and step > 0)
        if step == 0 and engine is not None:
            first_build = engine.build_seconds  # the first wrapper broadcasts; rebuilds do not
    return {
        "times": times,
        "switches": switches,
        "builds": engine.builds if engine is not None else 1,
        "rebuild_seconds": engine.build_seconds - first_build if engine is not None else 0.0,
    }


def build_cost(args, repeats: int = 5) -> dict:
    """Seconds to construct DDP over the whole model, with and without the initial broadcast."""
    model = build_model(args.width, args.depth)
    out = {}
    for sync in (True, False):
        samples = []
        for _ in range(repeats):
            dist.barrier()
            start = time.perf_counter()
            wrapper = DistributedDataParallel(model, init_sync=sync)
            samples.append(time.perf_counter() - start)
            del wrapper
        out["with_broadcast" if sync else "without_broadcast"] = statistics.median(samples)
    return out


def worker(rank: int, world: int, args, out: Path) -> None:
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(args.batch, args.width, generator=g), torch.randint(0, args.width, (args.batch,), generator=g)
    for method, schedule in CONFIGS[:2]:  # warm-up: first DDP construction, allocator, gloo
        run_config(method, schedule, argparse.Namespace(**{**vars(args), "steps": 3}), x, y)
    pooled: dict[str, dict] = {}
    for round_ in range(args.rounds):
        if rank == 0:
            print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for method, schedule in CONFIGS:
            result = run_config(method, schedule, args, x, y)
            entry = pooled.setdefault(
                f"{method}/{schedule}", {"times": [], "switches": [], "builds": 0, "rebuild_seconds": 0.0}
            )
            entry["times"] += result["times"][args.skip:]
            entry["switches"] += result["switches"][args.skip:]
            entry["builds"] += result["builds"]
            entry["rebuild_seconds"] += result["rebuild_seconds"]
    cost = build_cost(args)
    if rank == 0:
        torch.save({"pooled": pooled, "build_cost": cost}, out / "raw.pt")


def summarise(raw: dict, args) -> list[dict]:
    rows = []
    reference = statistics.median(raw["pooled"]["plain/standard"]["times"])
    for method, schedule in CONFIGS:
        entry = raw["pooled"][f"{method}/{schedule}"]
        times = entry["times"]
        at_switch = [t for t, s in zip(times, entry["switches"]) if s]
        between = [t for t, s in zip(times, entry["switches"]) if not s]
        rows.append({
            "method": method,
            "schedule": schedule,
            "median_step_ms": 1e3 * statistics.median(times),
            "mean_step_ms": 1e3 * statistics.fmean(times),
            "median_switch_step_ms": 1e3 * statistics.median(at_switch) if at_switch else None,
            "median_other_step_ms": 1e3 * statistics.median(between),
            "vs_plain": statistics.median(times) / reference,
            "builds_per_run": entry["builds"] / args.rounds,
            "rebuild_ms": 1e3 * entry["rebuild_seconds"] / rebuilds if (rebuilds := entry["builds"] - args.rounds) else None,
            "steps": len(times),
        })
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def write(rows: list[dict], raw: dict, args, out_dir: Path, meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    cost = raw["build_cost"]
    payload = {**meta, "build_cost_s": cost, "table": rows}
    (out_dir / "ddp_freezing_cpu.json").write_text(json.dumps(payload, indent=2) + "\n")
    params = sum(p.numel() for p in build_model(args.width, args.depth).parameters())
    lines = [
        f"# Freezing under DDP: gloo, 2 processes on CPU ({meta['cpu']}, torch {meta['torch']}, {meta['date']})",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"MLP {args.depth} x {args.width} ({params / 1e6:.1f} M parameters), {args.batch} examples per rank, SGD; "
        f"{args.rounds} interleaved rounds of {args.steps} steps per configuration (first {args.skip} of each dropped). "
        f"Two processes with {args.threads} thread(s) each on a machine with {os.cpu_count()} cores, so they share "
        f"its compute. Load average before/after: {meta['load_before']} / {meta['load_after']} (other jobs ran "
        "on the machine).",
        "",
        "| method | schedule | median step (ms) | mean step (ms) | switch step (ms) | other steps (ms) | median vs plain "
        "| wrappers built per run | one rebuild (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['schedule']} | {r['median_step_ms']:.1f} | {r['mean_step_ms']:.1f} | "
            f"{_fmt(r['median_switch_step_ms'], '.1f')} | {r['median_other_step_ms']:.1f} | {r['vs_plain']:.2f}x | "
            f"{r['builds_per_run']:.0f} | {_fmt(r['rebuild_ms'], '.2f')} |"
        )
    lines += [
        "",
        f"One DDP construction over the whole model: {1e3 * cost['without_broadcast']:.1f} ms without the initial "
        f"broadcast (what a rebuild does), {1e3 * cost['with_broadcast']:.1f} ms with it (the first wrapper only). "
        "\"one rebuild\" is FreezingDDP's own time per rebuild (construction plus the all-reduce that checks the "
        "ranks agree on the set), the first wrapper excluded.",
        "",
        "\"switch step\" is the median time of the steps at which the trainable set changed (for `rebuild` and "
        "`cached` it includes building or picking the wrapper, and DDP's bucket re-ordering after a new wrapper's "
        "first backward); \"other steps\" the median of the rest.",
    ]
    (out_dir / "ddp_freezing_cpu.md").write_text("\n".join(lines) + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="examples per rank (small: the all-reduce matters)")
    parser.add_argument("--steps", type=int, default=30, help="steps per configuration and round")
    parser.add_argument("--skip", type=int, default=2, help="first steps of each segment left out (first build)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.quick:
        args.width, args.depth, args.batch, args.steps, args.rounds = 64, 4, 8, 22, 1
    command = "python benchmarks/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    load_before = " ".join(f"{v:.1f}" for v in os.getloadavg())
    raw_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"ddp_freezing_{os.getpid()}"
    raw_dir.mkdir(parents=True, exist_ok=True)
    launch(worker, 2, args, raw_dir, timeout_s=3600)
    raw = torch.load(raw_dir / "raw.pt")
    meta = {
        "benchmark": "ddp_freezing",
        "device": "cpu",
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "processes": 2,
        "backend": "gloo",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "load_before": load_before,
        "load_after": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    rows = summarise(raw, args)
    write(rows, raw, args, args.out, meta)
    print((args.out / "ddp_freezing_cpu.md").read_text())


if __name__ == "__main__":
    main()
