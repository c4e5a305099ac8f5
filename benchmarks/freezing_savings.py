"""Does freezing really save compute and memory? Measured step time and peak memory vs theory.

For each model, groups are the depth halves (``first``, ``second``). For each frozen set it
measures the median step time (CUDA events, after warm-up) and the peak memory of a training
step, and compares the measured step-time saving with the theoretical one:

* forward FLOPs per parameterised module are counted with ``torch.utils.flop_counter``;
* a step costs forward + weight gradients of trainable modules (≈ their forward FLOPs) +
  input gradients of every module that has a trainable module before it (≈ forward FLOPs);
  a frozen prefix therefore saves both, a frozen suffix only its weight gradients.

Memory: everything trains for one step before the freeze, so all parameters have optimizer
state; then the ``keep`` policy keeps the frozen part's state and ``release`` (BAdam) frees it;
both skip the frozen part's gradients. Peak memory (GPU) and optimizer-state bytes are reported. Models: a wide MLP at a large batch (compute-bound),
ResNet-50 and ViT-S/16 at batch 128 and 224x224 (compute-bound), and seed 004's FashionMLP
at batch 128 (launch-bound: freezing cannot help there, shown on purpose).

    python benchmarks/freezing_savings.py --out $OUT          # GPU
    python benchmarks/freezing_savings.py --device cpu --quick  # smoke test
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
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from freezelab import Freezer, groups
from freezelab.optim import optimizer_state_bytes
from freezelab.schedules import Chain, Clock, Freeze, Standard


def models(quick: bool, device: str):
    """(name, model, input batch, num classes)."""
    import torchvision

    out = []
    width, depth, batch = (256, 4, 64) if quick else (8192, 8, 8192)
    layers = [nn.Linear(1024 if not quick else 64, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    out.append((f"wide-MLP {depth}x{width} b{batch}", nn.Sequential(*layers), (batch, 1024 if not quick else 64), 10))
    img = 64 if quick else 224
    out.append((f"ResNet-50 b128 {img}px", torchvision.models.resnet50(num_classes=100), (8 if quick else 128, 3, img, img), 100))
    try:
        import timm

        vit = timm.create_model("vit_small_patch16_224", num_classes=100, img_size=img)
        out.append((f"ViT-S/16 b128 {img}px", vit, (8 if quick else 128, 3, img, img), 100))
    except ImportError:
        print("timm not installed: skipping ViT-S/16")
    from freezelab.models import build_model

    out.append(("FashionMLP b128 (launch-bound)", build_model("fashion_mlp"), (128, 784), 10))
    return out


def forward_flops(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Forward FLOPs of each parameterised leaf module (by module name)."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    counts = counter.get_flop_counts()
    # The root module is left out even when it holds parameters of its own (a ViT's pos_embed and
    # cls_token): its count is the whole model's, and its own parameters only enter additions.
    leaves = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    flops = {}
    for name in leaves:
        key = f"{type(model).__name__}.{name}" if name else type(model).__name__
        match = [v for k, v in counts.items() if k == key or k.endswith("." + name)]
        flops[name] = int(sum(match[0].values())) if match else 0
    return flops


def theoretical_cost(flops: dict[str, int], order: list[str], trainable_modules: set[str]) -> float:
    total = sum(flops.values())
    weight_grads = sum(flops[m] for m in order if m in trainable_modules)
    seen_trainable, input_grads = False, 0
    for m in order:
        if seen_trainable:
            input_grads += flops[m]
        seen_trainable = seen_trainable or m in trainable_modules
    return total + weight_grads + input_grads


def theoretical_savings(model: nn.Module, shape) -> dict[str, float]:
    """Theoretical step-time saving of freezing each depth half (``first``, ``second``) of ``model``."""
    example = torch.randn(2, *shape[1:], device=next(model.parameters()).device)
    order = [n for n, _ in groups.leaf_modules(model, example) if n]
    flops = forward_flops(model, example)
    gs = groups.depth(model, 2, example_input=example)
    module_of = {p: p.rsplit(".", 1)[0] if "." in p else "" for g in gs for p in g.param_names}
    full_cost = theoretical_cost(flops, order, set(order))
    out = {}
    for frozen in ("first", "second"):
        trainable_modules = {module_of[p] for g in gs if g.name != frozen for p in g.param_names}
        out[frozen] = 1 - theoretical_cost(flops, order, trainable_modules) / full_cost
    return out


def recompute_theory(path: Path) -> None:
    """Rewrite a stored result's theoretical column with the current FLOP model (no GPU needed)."""
    record = json.loads(path.read_text())
    theory = {name: theoretical_savings(model, shape) for name, model, shape, _ in models(False, "cpu")}
    for r in record["rows"]:
        if r["model"] in theory:
            r["theoretical_saving"] = theory[r["model"]][r["frozen"]]
            r["measured_over_theory"] = r["measured_saving"] / r["theoretical_saving"] if r["theoretical_saving"] > 0 else None
    record["theory_recomputed"] = {"command": " ".join(["python", *sys.argv]),
                                   "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    path.write_text(json.dumps(record, indent=2))
    write_markdown(record, path.with_suffix(".md"))


def measure(model, gs, frozen, shape, classes, device, policy, steps, warmup):
    """Median step time, peak memory and optimizer-state bytes with ``frozen`` groups frozen.

    Everything trains for one step first, so every parameter has optimizer state when the
    freeze starts (as in a real schedule): ``keep`` then holds on to the frozen part's state,
    ``release`` frees it.
    """
    torch.manual_seed(0)
    x = torch.randn(*shape, device=device)
    y = torch.randint(0, classes, (shape[0],), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    sched = Chain(((Standard(), 1, "batch"), (Freeze(tuple(frozen)), None, "batch")))
    fz = Freezer(model, gs, sched, opt, policy=policy)
    clock = iter(range(10**9))

    def step():
        fz.step(Clock.at(next(clock), 1, 10**9))
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        fz.optimizer.step()
        fz.optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1000)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    state = optimizer_state_bytes(fz.optimizer)
    # Restore a clean, fully trainable model for the next measurement.
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    return statistics.median(times), peak, state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--recompute", type=Path, help="only rewrite this stored result's theoretical column")
    args = ap.parse_args()
    if args.recompute:
        recompute_theory(args.recompute)
        return
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    rows = []
    for name, model, shape, classes in models(args.quick, args.device):
        model = model.to(device)
        example = torch.randn(2, *shape[1:], device=device)
        gs = groups.depth(model, 2, example_input=example)
        theories = theoretical_savings(model, shape)
        base_t, base_mem, base_state = measure(model, gs, (), shape, classes, device, "keep", args.steps, 5)
        for frozen in (("first",), ("second",)):
            theory = theories[frozen[0]]
            t_keep, mem_keep, state_keep = measure(model, gs, frozen, shape, classes, device, "keep", args.steps, 5)
            _, mem_release, state_release = measure(model, gs, frozen, shape, classes, device, "release", max(3, args.steps // 4), 3)
            measured = 1 - t_keep / base_t
            rows.append({
                "model": name, "frozen": "+".join(frozen),
                "frozen_param_share": sum(p.numel() for g in gs if g.name in frozen for p in gs.params(model, g.name))
                / sum(p.numel() for p in model.parameters()),
                "step_ms_full": 1000 * base_t, "step_ms_frozen": 1000 * t_keep,
                "theoretical_saving": theory, "measured_saving": measured,
                "measured_over_theory": measured / theory if theory > 0 else None,
                "peak_mib_full": base_mem / 2**20 if base_mem else None,
                "peak_mib_keep": mem_keep / 2**20 if mem_keep else None,
                "peak_mib_release": mem_release / 2**20 if mem_release else None,
                "opt_state_mib_full": base_state / 2**20,
                "opt_state_mib_keep": state_keep / 2**20,
                "opt_state_mib_release": state_release / 2**20,
            })
            print(rows[-1], flush=True)
        model.to("cpu")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    record = {"benchmark": "freezing_savings", "device": dev_name, "torch": torch.__version__,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if device.type == "cuda" else "cpu"
    (out / f"freezing_savings_{tag}.json").write_text(json.dumps(record, indent=2))
    write_markdown(record, out / f"freezing_savings_{tag}.md")


def write_markdown(record: dict, path: Path) -> None:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows = record["rows"]
    again = record.get("theory_recomputed")
    lines = [f"# Freezing savings: measured vs theoretical ({record['device']}, torch {record['torch']}, {record['date']})", "",
             f"Command: `{record['command']}`. Optimizer AdamW; step = forward + backward + optimizer step; "
             "median of CUDA-event timings after warm-up; TF32 matmuls."
             + (f" Theoretical column recomputed on {again['date']} by `{again['command']}`." if again else ""), "",
             "| model | frozen | frozen params | step ms (full) | step ms (frozen) | theoretical saving | measured saving | measured/theory | peak MiB full | keep | release | opt. state MiB full | keep | release |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['frozen']} | {r['frozen_param_share']:.0%} | {r['step_ms_full']:.2f} | {r['step_ms_frozen']:.2f} | "
                     f"{r['theoretical_saving']:.1%} | {r['measured_saving']:.1%} | {f(r['measured_over_theory'], '.2f')} | "
                     f"{f(r['peak_mib_full'], '.0f')} | {f(r['peak_mib_keep'], '.0f')} | {f(r['peak_mib_release'], '.0f')} | "
                     f"{r['opt_state_mib_full']:.1f} | {r['opt_state_mib_keep']:.1f} | {r['opt_state_mib_release']:.1f} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
