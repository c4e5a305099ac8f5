"""Does freezing really save compute and memory? Measured step time and peak memory vs the FLOPs it removes.

For each model the groups are the depth halves (``first``, ``second``). For each frozen half it
measures the median step time (CUDA events, after warm-up) and the peak memory of a training
step, and compares the measured step-time saving with the theoretical one:

* **theory**: the FLOPs the step no longer does, counted by ``freezelab.flops.step_flops`` on a
  real forward and backward under the freeze (weight gradients of the frozen half skipped; for a
  frozen prefix its input gradients too). Only matmuls, convolutions and attention have FLOPs;
* **achieved TFLOP/s** of the full step says how compute-bound a configuration is;
* **kernel time by kind** (``--profile``): where the GPU time goes, full vs frozen, so a gap
  between theory and measurement can be traced to the kernels that were (not) skipped.

Each model runs in several *variants*: ``eager-tf32`` (fp32 weights, TF32 matmuls and
convolutions), ``eager-bf16`` (bf16 autocast, channels-last for convolutional nets) and
``compiled-bf16`` (the same under ``torch.compile``, which fuses the normalisation and pointwise
work between the GEMMs: one compiled graph per trainable set, with freezelab's
``configure_dynamo`` so that a graph compiled for one trainable set is not reused for another).

Memory: everything trains for one step before the freeze, so all parameters have optimizer
state; then the ``keep`` policy keeps the frozen part's state and ``release`` (BAdam) frees it;
both skip the frozen part's gradients. Models: a wide MLP at a large batch, ResNet-50 and
ViT-S/16 at batch 128 and 224x224, and seed 004's FashionMLP at batch 128 (launch-bound:
freezing cannot help there, shown on purpose).

    python benchmarks/freezing_savings.py --profile --out $OUT                     # GPU, everything
    python benchmarks/freezing_savings.py --variants compiled-bf16 --models ResNet,ViT --out $OUT
    python benchmarks/freezing_savings.py --merge a.json b.json --out benchmarks/results
    python benchmarks/freezing_savings.py --device cpu --quick --variants eager-tf32   # smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from freezelab import Freezer, groups
from freezelab.run.compiled import configure_dynamo
from freezelab.flops import step_flops
from freezelab.optim import optimizer_state_bytes
from freezelab.schedules import Chain, Clock, Freeze, Standard

VARIANTS = ("eager-tf32", "eager-bf16", "compiled-bf16")
STATES = ((), ("first",), ("second",))

# Kernel kinds, first match wins (cuDNN and cuBLAS name their kernels by what they compute).
KERNEL_KINDS = (
    ("conv weight grad", r"wgrad"),
    ("conv input grad", r"dgrad"),
    ("conv forward", r"fprop|conv2d|implicit_convolve|winograd"),
    ("attention", r"flash|fmha|attention|attn"),
    ("GEMM", r"gemm|nvjet|cutlass|xmma|splitK|cublas"),
    ("optimizer", r"multi_tensor|fused_adam|adam"),
    ("norm", r"batch_norm|batchnorm|bn_|layer_norm|welford"),
    ("compiled (Triton)", r"^triton"),
)


def models(quick: bool):
    """(name, model, input shape, num classes, convolutional)."""
    import torchvision

    out = []
    width, depth, batch, d_in = (256, 4, 64, 64) if quick else (8192, 8, 8192, 1024)
    layers = [nn.Linear(d_in, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 10))
    out.append((f"wide-MLP {depth}x{width} b{batch}", nn.Sequential(*layers), (batch, d_in), 10, False))
    img, b = (64, 8) if quick else (224, 128)
    out.append((f"ResNet-50 b{b} {img}px", torchvision.models.resnet50(num_classes=100), (b, 3, img, img), 100, True))
    try:
        import timm

        vit = timm.create_model("vit_small_patch16_224", num_classes=100, img_size=img)
        out.append((f"ViT-S/16 b{b} {img}px", vit, (b, 3, img, img), 100, False))
    except ImportError:
        print("timm not installed: skipping ViT-S/16")
    from freezelab.models import build_model

    out.append(("FashionMLP b128 (launch-bound)", build_model("fashion_mlp"), (128, 784), 10, False))
    return out


def loss_function(variant: str):
    """The step's loss for a variant: autocast or not, compiled or not."""
    bf16 = variant.endswith("bf16")

    def loss_of(model, x, y):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            return nn.functional.cross_entropy(model(x), y)

    # static shapes: the models share this function, and a shape change would otherwise make the
    # later models' graphs dynamic (slower kernels)
    return torch.compile(loss_of, dynamic=False) if variant.startswith("compiled") else loss_of


def kernel_kind(name: str) -> str:
    for kind, pattern in KERNEL_KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "pointwise/other"


def kernel_times(step, steps: int = 3) -> dict[str, float]:
    """GPU milliseconds per step of each kernel (name cut at 160 characters), by torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for e in prof.key_averages():  # only GPU activity was recorded: every entry is a kernel or copy
        out[e.key[:160]] = out.get(e.key[:160], 0.0) + e.device_time_total / 1000 / steps
    return out


def by_kind(kernels: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, ms in kernels.items():
        out[kernel_kind(name)] = out.get(kernel_kind(name), 0.0) + ms
    return out


def step_seconds(step, steps: int, cuda: bool) -> list[float]:
    """Seconds of each of ``steps`` calls of ``step``: CUDA events around each (synchronised) on a GPU."""
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
    return times


def measure(model, gs, frozen, batch, loss_of, device, policy, steps, warmup, profile=False):
    """Median step time, peak memory, optimizer-state bytes (and kernel times) with ``frozen`` frozen.

    Everything trains for one step first, so every parameter has optimizer state when the
    freeze starts (as in a real schedule): ``keep`` then holds on to the frozen part's state,
    ``release`` frees it.
    """
    x, y = batch
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    sched = Chain(((Standard(), 1, "batch"), (Freeze(tuple(frozen)), None, "batch")))
    fz = Freezer(model, gs, sched, opt, policy=policy)
    clock = iter(range(10**9))

    def step():
        fz.step(Clock.at(next(clock), 1, 10**9))
        loss_of(model, x, y).backward()
        fz.optimizer.step()
        fz.optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = step_seconds(step, steps, cuda)
    peak = torch.cuda.max_memory_allocated() if cuda else None
    kernels = kernel_times(step) if profile and cuda else None
    state = optimizer_state_bytes(fz.optimizer)
    # Restore a clean, fully trainable model for the next measurement.
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    return statistics.median(times), peak, state, kernels


def counted_flops(model, gs, batch) -> dict[tuple, object]:
    """FLOPs of one step in each freeze state, counted on the fp32 model."""
    out = {}
    for frozen in STATES:
        for g in gs:
            for p in gs.params(model, g.name):
                p.requires_grad_(g.name not in frozen)
        out[frozen] = step_flops(model, *batch)
    model.requires_grad_(True)
    return out


def mib(v):
    return None if v is None else v / 2**20


def run_model(name, model, shape, classes, conv, args, device) -> list[dict]:
    model = model.to(device)
    example = torch.randn(2, *shape[1:], device=device)
    gs = groups.depth(model, 2, example_input=example)
    torch.manual_seed(0)
    batch = (torch.randn(*shape, device=device), torch.randint(0, classes, (shape[0],), device=device))
    flops = counted_flops(model, gs, batch)
    share = {f: sum(p.numel() for p in gs.params(model, f)) / sum(p.numel() for p in model.parameters()) for f in ("first", "second")}
    rows = []
    for variant in args.variants:
        channels_last = conv and variant.endswith("bf16")
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        x = batch[0].contiguous(memory_format=torch.channels_last) if channels_last else batch[0]
        loss_of = loss_function(variant)
        timed = {}
        for frozen in STATES:
            t0 = time.perf_counter()
            timed[frozen] = measure(model, gs, frozen, (x, batch[1]), loss_of, device, "keep", args.steps, 5, args.profile)
            print(f"{name} {variant} frozen={frozen or 'none'}: {1000 * timed[frozen][0]:.2f} ms/step "
                  f"({time.perf_counter() - t0:.0f} s with warm-up)", flush=True)
        base_t, base_mem, base_state, base_kernels = timed[()]
        for frozen in STATES[1:]:
            t_keep, mem_keep, state_keep, kernels = timed[frozen]
            _, mem_release, state_release, _ = measure(model, gs, frozen, (x, batch[1]), loss_of, device, "release",
                                                       max(3, args.steps // 4), 3)
            theory = flops[frozen].saving_against(flops[()])
            measured = 1 - t_keep / base_t
            rows.append({
                "model": name, "variant": variant, "frozen": frozen[0], "frozen_param_share": share[frozen[0]],
                "step_ms_full": 1000 * base_t, "step_ms_frozen": 1000 * t_keep,
                "tflops_full": flops[()].total / base_t / 1e12,
                "theoretical_saving": theory, "measured_saving": measured,
                "measured_over_theory": measured / theory if theory > 0 else None,
                "peak_mib_full": mib(base_mem), "peak_mib_keep": mib(mem_keep), "peak_mib_release": mib(mem_release),
                "opt_state_mib_full": mib(base_state), "opt_state_mib_keep": mib(state_keep),
                "opt_state_mib_release": mib(state_release),
                "kernel_ms_full": base_kernels, "kernel_ms_frozen": kernels,
            })
    model.to("cpu")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS), help=f"comma-separated, of {VARIANTS}")
    ap.add_argument("--models", type=lambda s: s.split(","), default=[""],
                    help="only models whose name contains one of these (comma-separated)")
    ap.add_argument("--profile", action="store_true", help="also time each kind of kernel (GPU)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--merge", nargs="+", type=Path, help="only combine these stored results into one")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        records = [json.loads(p.read_text()) for p in args.merge]
        rows = [row for r in records for row in r["rows"]]
        first_seen = {m: i for i, m in reversed(list(enumerate(row["model"] for row in rows)))}
        rows.sort(key=lambda row: (first_seen[row["model"]], VARIANTS.index(row["variant"])))  # stable: first, second
        record = {**records[0], "command": [r["command"] for r in records], "rows": rows}
        write(record, out / args.merge[0].name)
        return
    if unknown := set(args.variants) - set(VARIANTS):
        ap.error(f"unknown variant(s) {sorted(unknown)}; choose from {VARIANTS}")
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    configure_dynamo()  # one compiled graph per model, variant and trainable set, and guards that see requires_grad
    rows = []
    for name, model, shape, classes, conv in models(args.quick):
        if any(m in name for m in args.models):
            rows += run_model(name, model, shape, classes, conv, args, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    record = {"benchmark": "freezing_savings", "device": dev_name, "torch": torch.__version__,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "rows": rows}
    write(record, out / f"freezing_savings_{'gpu' if device.type == 'cuda' else 'cpu'}.json")


def write(record: dict, path: Path) -> None:
    """The JSON record and its Markdown tables (savings, then kernel time by kind when profiled)."""
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    path.write_text(json.dumps(record, indent=2))
    rows = record["rows"]
    commands = record["command"] if isinstance(record["command"], list) else [record["command"]]
    lines = [f"# Freezing savings: measured vs theoretical ({record['device']}, torch {record['torch']}, {record['date']})", "",
             "Commands: " + "; ".join(f"`{c}`" for c in commands) + ". Optimizer AdamW (fused on the GPU); "
             "step = forward + backward + optimizer step; median of CUDA-event timings after warm-up. "
             "Theoretical saving = FLOPs the step no longer does, counted on the real forward and backward "
             "(`freezelab.flops.step_flops`); TFLOP/s = counted FLOPs of the full step / its time.", "",
             "GPU busy = kernel time / step time of the full step (below ~90% the host, not the GPU, sets the pace); "
             "GPU-time saving = the kernel time the freeze removed (torch.profiler), whatever the host does.", "",
             "| model | variant | frozen | frozen params | step ms full | step ms frozen | TFLOP/s full | GPU busy | theoretical saving | "
             "measured saving | measured/theory | GPU-time saving / theory | peak MiB full | keep | release | opt. state MiB full | keep | release |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        busy = gpu_ratio = None
        if r.get("kernel_ms_full"):
            gpu_full, gpu_frozen = sum(r["kernel_ms_full"].values()), sum(r["kernel_ms_frozen"].values())
            busy = gpu_full / r["step_ms_full"]
            gpu_ratio = (1 - gpu_frozen / gpu_full) / r["theoretical_saving"]
        lines.append(f"| {r['model']} | {r['variant']} | {r['frozen']} | {r['frozen_param_share']:.0%} | {r['step_ms_full']:.2f} | "
                     f"{r['step_ms_frozen']:.2f} | {r['tflops_full']:.1f} | {f(busy, '.0%')} | {r['theoretical_saving']:.1%} | "
                     f"{r['measured_saving']:.1%} | {f(r['measured_over_theory'], '.2f')} | {f(gpu_ratio, '.2f')} | "
                     f"{f(r['peak_mib_full'], '.0f')} | {f(r['peak_mib_keep'], '.0f')} | "
                     f"{f(r['peak_mib_release'], '.0f')} | {r['opt_state_mib_full']:.1f} | {r['opt_state_mib_keep']:.1f} | "
                     f"{r['opt_state_mib_release']:.1f} |")
    profiled = [r for r in rows if r.get("kernel_ms_full")]
    if profiled:
        kinds = [k for k, _ in KERNEL_KINDS] + ["pointwise/other"]
        lines += ["", "GPU ms per step in each kind of kernel (torch.profiler), full step and the change when a half is frozen:", "",
                  "| model | variant | step | " + " | ".join(kinds) + " | all |", "|---|---|---|" + "---:|" * (len(kinds) + 1)]
        for r in profiled:
            full, frozen = by_kind(r["kernel_ms_full"]), by_kind(r["kernel_ms_frozen"])
            if r["frozen"] == "first":
                lines.append(f"| {r['model']} | {r['variant']} | full | " + " | ".join(f"{full.get(k, 0):.2f}" for k in kinds)
                             + f" | {sum(full.values()):.2f} |")
            delta = {k: frozen.get(k, 0) - full.get(k, 0) for k in kinds}
            lines.append(f"| {r['model']} | {r['variant']} | {r['frozen']} frozen: change | "
                         + " | ".join(f"{delta[k]:+.2f}" for k in kinds) + f" | {sum(delta.values()):+.2f} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
