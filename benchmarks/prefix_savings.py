"""Step-time saving of a frozen prefix of k blocks against its share of the step's FLOPs, k = 0..K.

Issue 15, requirement 2: a frozen prefix runs without autograd (no stored activations) and,
with ``bn_stats: frozen``, in eval mode, so the step skips the prefix's whole backward pass.
For each k this freezes the first k blocks through the real :class:`~freezelab.Freezer`
(``policy: keep``, ``bn_stats: frozen``) and measures:

* **step time**: forward + backward + SGD-momentum step, the median of ``--steps`` timed steps
  after ``--warmup`` (CUDA events on the GPU, ``perf_counter`` on the CPU);
* **FLOP share**: the share of the full step's FLOPs that the frozen step no longer does,
  ``1 - F(k) / F(0)``, counted by ``freezelab.flops.step_flops`` on a real forward and
  backward under the freeze. FLOP model: the forward of every block counts once in both; the
  backward of the frozen prefix (its weight gradients and its input gradients, about twice
  its forward) is what disappears. The prefix's forward still runs, so the share is at most
  2/3 of the prefix's share of the full step, however deep the freeze. Only matmuls and
  convolutions have FLOPs (norms and pointwise work are memory-bound and uncounted);
* **ratio** ``measured saving / FLOP share``: 1.0 means the time fell exactly as the FLOPs did;
  the issue's goal is >= 0.8 where the step is compute-bound (``TFLOP/s`` says how much);
* **saved activations**: bytes of non-parameter tensors autograd stores for the backward
  (``freezelab.flops.saved_for_backward``), which should fall with k.

Models: ``cifar_resnet18`` (freezelab's, once registered; until then the same architecture is
built here: torchvision ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32x32 inputs),
blocks = stem, the 8 BasicBlocks, head (never frozen); or ``mlp`` (a wide MLP, for a CPU smoke
test), blocks = its Linear layers.

    python benchmarks/prefix_savings.py --out $OUT                                          # GPU: fp32/TF32
    python benchmarks/prefix_savings.py --bf16 --channels-last --out $OUT                   # GPU: bf16 autocast, NHWC
    PYTHONPATH=src python benchmarks/prefix_savings.py --device cpu --batch 16 --steps 3 --warmup 1   # CPU smoke test

Last result: benchmarks/results/prefix_savings_cpu.md (CPU smoke test only: the GPU run is the one that counts).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from freezelab import Freezer, groups
from freezelab.flops import saved_for_backward, step_flops
from freezelab.schedules import Clock, Freeze
from freezing_savings import step_seconds  # a sibling script: benchmarks/ is on sys.path when run


def cifar_resnet18(num_classes: int = 10) -> nn.Module:
    """freezelab's ``cifar_resnet18`` if registered, else the usual CIFAR ResNet-18 built inline."""
    from freezelab.models import build_model, list_models

    if "cifar_resnet18" in list_models():
        return build_model("cifar_resnet18", num_classes=num_classes)
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def block_groups(model: nn.Module, example: torch.Tensor) -> groups.GroupSet:
    """One group per block in forward order, the head last: ResNets by stem and BasicBlock, others by layer."""
    names = [n for n, _ in model.named_children()]
    if {"conv1", "layer1", "fc"} <= set(names):
        patterns: dict[str, list[str]] = {"stem": ["conv1.*", "bn1.*"]}
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for i in range(len(getattr(model, stage))):
                patterns[f"{stage}.{i}"] = [f"{stage}.{i}.*"]
        return groups.pattern(model, patterns, rest="head")
    return groups.layers(model, example_input=example)


def build(name: str, batch: int, device: torch.device):
    """(model, blocks, inputs, targets, convolutional) for ``name``."""
    torch.manual_seed(0)
    if name == "cifar_resnet18":
        model, x, conv = cifar_resnet18(), torch.randn(batch, 3, 32, 32), True
    elif name == "mlp":
        width = 2048
        model = nn.Sequential(*[m for _ in range(6) for m in (nn.LazyLinear(width), nn.ReLU())], nn.Linear(width, 10))
        x, conv = torch.randn(batch, 1024), False
        model(x[:2])  # materialise the lazy layers
    else:
        raise SystemExit(f"unknown model {name!r}; choose cifar_resnet18 or mlp")
    model, x = model.to(device), x.to(device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, block_groups(model, x[:2]), x, y, conv


def timed_steps(model, gs, frozen, x, y, args, device) -> tuple[float, int]:
    """Median step time and saved-activation bytes with the groups in ``frozen`` frozen."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    fz = Freezer(model, gs, Freeze(tuple(frozen)), opt, bn_stats="frozen")
    model.train()
    fz.step(Clock.at(0, 1, 1))  # the freeze, and frozen norms into eval mode
    cuda = device.type == "cuda"

    def loss():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            return nn.functional.cross_entropy(model(x), y)

    def step():
        loss().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    times = step_seconds(step, args.steps, cuda)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        saved = saved_for_backward(model, x).bytes
    for p in model.parameters():  # a clean, fully trainable model for the next k
        p.requires_grad_(True)
        p.grad = None
    model.train()
    return statistics.median(times), saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cifar_resnet18", help="cifar_resnet18 or mlp")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC model and inputs (convolutional models)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    model, gs, x, y, conv = build(args.model, args.batch, device)
    if args.channels_last and conv:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    blocks = [g for g in gs.names if g != "head"]
    rows, base = [], None
    for k in range(len(blocks) + 1):
        frozen = blocks[:k]
        for g in gs:
            for p in gs.params(model, g.name):
                p.requires_grad_(g.name not in frozen)
        flops = step_flops(model, x, y)  # fp32 count under the freeze (autocast does not change the count)
        model.requires_grad_(True)
        seconds, saved = timed_steps(model, gs, frozen, x, y, args, device)
        if base is None:
            base = (seconds, flops, saved)
        share = flops.saving_against(base[1])
        saving = 1 - seconds / base[0]
        rows.append({"frozen_blocks": k, "last_frozen": frozen[-1] if frozen else None, "step_ms": 1000 * seconds,
                     "tflops": flops.total / seconds / 1e12,
                     "flop_share": share, "measured_saving": saving,
                     "ratio": saving / share if share > 0 else None, "saved_activation_mib": saved / 2**20})
        print(rows[-1], flush=True)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tag = ("gpu" if device.type == "cuda" else "cpu") + ("_bf16" if args.bf16 else "") + ("_cl" if args.channels_last and conv else "")
    record = {"benchmark": "prefix_savings", "model": args.model, "device": dev_name, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "batch": args.batch, "bf16": args.bf16,
              "channels_last": args.channels_last and conv, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"prefix_savings_{tag}.json"
    path.write_text(json.dumps(record, indent=2))
    lines = [f"# Frozen-prefix saving vs FLOP share: {args.model}, batch {args.batch} ({dev_name}, torch {record['torch']})", "",
             f"{record['date']}; `{record['command']}`; bf16 {args.bf16}, channels-last {record['channels_last']}; "
             f"median of {args.steps} steps after {args.warmup} warm-up; SGD momentum (Nesterov), "
             "`bn_stats: frozen`. FLOP share = 1 - counted FLOPs of the frozen step / full step "
             "(the prefix's forward still counts once; its backward is what goes).", "",
             "| frozen blocks | last frozen | step ms | TFLOP/s | FLOP share | measured saving | measured / FLOP share | saved activations MiB |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['frozen_blocks']} | {r['last_frozen'] or '-'} | {r['step_ms']:.2f} | {r['tflops']:.3g} | "
                     f"{r['flop_share']:.1%} | {r['measured_saving']:.1%} | {ratio} | {r['saved_activation_mib']:.1f} |")
    if device.type == "cpu":
        lines += ["", f"CPU, {record['threads']} threads, load average {record['load_average']}: a smoke test of the "
                  "script, not a measurement of the saving (shared cores make single steps noisy)."]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
