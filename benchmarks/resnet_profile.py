"""Where a CIFAR ResNet-18 epoch spends its time on freezelab's default GPU path, and what changes it.

Issue 13's goal is 0.5 s per epoch (batch 512, bf16, channels-last, crop+flip) on an H200;
``image_speed.py`` measures 0.64 s. This script says why: for each variant it builds the run
exactly as ``freezelab.run.train`` does (graph stepper, compiled loss/backward and update),
times three steady epochs, profiles a fourth, and sorts the device time of every kernel into
convolution forward / data-gradient / weight-gradient, Triton reductions (batch-norm
statistics and their backward), Triton pointwise kernels, and the rest. Device time summed
over kernels against the epoch's wall time says whether the GPU ever idles.

Variants (``--variants``, comma-separated):

* ``default``: the run as freezelab makes it;
* ``cudnn_benchmark``: ``torch.backends.cudnn.benchmark = True`` (cuDNN times its algorithms);
* ``stem_pad4`` / ``stem_pad8``: the 3-channel stem convolution fed 4 / 8 channels, the extra
  input channels and weight columns zero (the same function; tensor-core kernels want channel
  counts that are multiples of 8);
* ``bn_native``: batch norm not decomposed by Inductor: the graph calls torch's own CUDA
  batch-norm kernels (forward and backward), the ones eager torch runs for a bf16 activation
  with float32 scale and shift, instead of generating Triton ones. (cuDNN's kernels are no
  option: ``aten.cudnn_batch_norm`` refuses a bf16 input with float32 scale, shift or running
  statistics, and with all of them bf16 fails with CUDNN_STATUS_NOT_SUPPORTED on these channels-last shapes);
* ``no_bn`` (diagnostic only, a different model): every BatchNorm replaced by the identity, to
  measure what normalisation costs.

Parts joined by ``+`` combine (``cudnn_benchmark+stem_pad8``). ``--variants ''`` runs none and
writes only ``bn_backends_gpu.json``: the batch-norm backend eager torch picks for a stage-1
activation, and what ``aten.cudnn_batch_norm`` answers for each parameter precision.

    FREEZELAB_DATA=.data python benchmarks/resnet_profile.py --out $OUT
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from freezelab.run import build_run
from freezelab.run.plan import process_settings
from freezelab.run.steppers import make_stepper
from profile_step import epoch_times  # a sibling script: benchmarks/ is on sys.path when run

CFG = {"dataset": "cifar10", "recipe": "train_test", "data_root": os.environ.get("FREEZELAB_DATA", ".data"),
       "model": "cifar_resnet18", "augment": "crop_flip", "optimizer": "sgd_momentum", "lr": 0.2, "weight_decay": 5e-4,
       "lr_schedule": "onecycle", "batch_size": 512, "precision": "bf16", "epochs": 6, "seed": 0, "device": "cuda",
       "log_steps": False}

CATEGORIES = (("conv forward", ("fprop", "fwd")), ("conv data gradient", ("dgrad",)), ("conv weight gradient", ("wgrad",)),
              ("triton reduction", ("triton_red", "triton_per")), ("triton pointwise", ("triton_poi",)),
              ("gemm", ("gemm", "cutlass")))


def category(name: str) -> str:
    low = name.lower()
    for label, keys in CATEGORIES:
        if any(k in low for k in keys):
            return label
    return "other"


class PaddedStem(nn.Module):
    """The stem convolution with its input and weight padded by zero channels up to ``channels``."""

    def __init__(self, conv: nn.Conv2d, channels: int) -> None:
        super().__init__()
        self.conv, self.extra = conv, channels - conv.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        pad = (0, 0, 0, 0, 0, self.extra)
        x = F.pad(x, pad).contiguous(memory_format=torch.channels_last)
        w = F.pad(c.weight, pad).contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w, None, c.stride, c.padding)


_BN_DECOMPOSED = ("_native_batch_norm_legit_functional", "native_batch_norm_backward", "_native_batch_norm_legit",
                  "native_batch_norm")


@contextlib.contextmanager
def bn_not_decomposed():
    """Inductor without its batch-norm decompositions: it falls back to the aten kernels.

    The compile caches are off meanwhile: their keys do not cover the decomposition table, so
    the graphs compiled here would otherwise be reused by later runs with the same model
    (a measured hazard: the next process's ``default`` loaded them from the on-disk cache).
    """
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor import decomposition

    table = decomposition.decompositions
    popped = {k: table.pop(k) for k in list(table) if any(str(k).startswith(f"aten.{n}.") for n in _BN_DECOMPOSED)}
    decomposition.fast_random_decomps.cache_clear()  # the table Inductor reads is a cached copy
    try:
        with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
            yield
    finally:
        table.update(popped)
        decomposition.fast_random_decomps.cache_clear()


def apply_variant(run, variant: str) -> None:
    """Change the built run's model as ``variant`` says (parts joined by ``+`` combine)."""
    model = run.model
    parts = variant.split("+")
    pads = [p for p in parts if p.startswith("stem_pad")]
    if pads:
        model.conv1 = PaddedStem(model.conv1, int(pads[0].removeprefix("stem_pad")))
    if "no_bn" in parts:
        for module in list(model.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.BatchNorm2d):
                    setattr(module, child_name, nn.Identity())


def measure(variant: str) -> dict:
    torch._dynamo.reset()  # each variant compiles its own graphs (one model class would otherwise share one)
    torch.backends.cudnn.benchmark = "cudnn_benchmark" in variant.split("+")
    run = build_run(CFG)
    apply_variant(run, variant)
    with process_settings(run.plan), bn_not_decomposed() if "bn_native" in variant.split("+") else contextlib.nullcontext():
        stepper = make_stepper(run)
        t0 = time.perf_counter()
        stepper.run_epoch(0, run.batches.epoch(0))
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        times = epoch_times(stepper, run)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            stepper.run_epoch(4, run.batches.epoch(4))
            torch.cuda.synchronize()
    torch.backends.cudnn.benchmark = False
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
    spe = run.steps_per_epoch
    cats: dict[str, float] = {}
    for e in kernels:
        cats[category(e.key)] = cats.get(category(e.key), 0.0) + e.device_time_total / 1e6
    top = [{"kernel": e.key[:110], "calls_per_step": e.count / spe, "s_per_epoch": e.device_time_total / 1e6,
            "category": category(e.key)} for e in sorted(kernels, key=lambda e: -e.device_time_total)[:25]]
    result = {"variant": variant, "first_epoch_s": first, "epoch_s": min(times), "epoch_times_s": times,
              "kernel_s_per_epoch": sum(cats.values()), "categories_s_per_epoch": cats, "top_kernels": top,
              "kernels_per_step": sum(e.count for e in kernels) / spe, "stepper": run.plan.stepper,
              "compiled": run.plan.compiled}
    print(f"{variant}: {min(times):.3f} s/epoch (first {first:.1f} s), kernels {result['kernel_s_per_epoch']:.3f} s, "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(cats.items(), key=lambda kv: -kv[1])), flush=True)
    return result


def bn_backends() -> dict:
    """Which batch-norm kernels torch would pick for the stage-1 activation, and what cuDNN says when asked directly.

    Written to ``bn_backends_gpu.json``: the facts behind the ``bn_native`` variant's note.
    """
    shape = (512, 64, 32, 32)
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w, b = torch.ones(64, device="cuda"), torch.zeros(64, device="cuda")
    rm, rv = torch.zeros(64, device="cuda"), torch.ones(64, device="cuda")
    out = {"shape": shape, "eager_backend": str(torch._C._select_batch_norm_backend(x, w, b, rm, rv, True, 1e-5)),
           "cudnn_version": torch.backends.cudnn.version()}
    for name, params in (("cudnn, float32 scale/shift/statistics", (w, b, rm, rv)),
                         ("cudnn, bf16 scale/shift, float32 statistics", (w.bfloat16(), b.bfloat16(), rm, rv)),
                         ("cudnn, all bf16", tuple(t.bfloat16() for t in (w, b, rm, rv)))):
        try:
            torch.ops.aten.cudnn_batch_norm(x, *params, True, 0.1, 1e-5)
            torch.cuda.synchronize()
            out[name] = "ran"
        except RuntimeError as err:
            out[name] = str(err).splitlines()[0]
    print(out, flush=True)
    return out


def markdown(res: dict) -> str:
    lines = [f"# CIFAR ResNet-18 epoch by kernel category ({res['device']}, torch {res['torch']}, {res['date']})", "",
             f"Command: `{res['command']}`", "",
             "Batch 512, bf16 autocast, channels-last, crop+flip, SGD momentum; freezelab's default path (CUDA graphs "
             "of compiled steps). Seconds per epoch: the best of 3 steady epochs; categories from a profiled 4th.", ""]
    names = [label for label, _ in CATEGORIES] + ["other"]
    lines += ["| variant | s / epoch | kernel s / epoch | " + " | ".join(names) + " |",
              "|---|---:|---:|" + "---:|" * len(names)]
    for r in res["variants"]:
        lines.append(f"| {r['variant']} | {r['epoch_s']:.3f} | {r['kernel_s_per_epoch']:.3f} | "
                     + " | ".join(f"{r['categories_s_per_epoch'].get(n, 0.0):.3f}" for n in names) + " |")
    for r in res["variants"]:
        lines += ["", f"## {r['variant']}: top kernels", "", "| kernel | category | calls / step | s / epoch |",
                  "|---|---|---:|---:|"]
        lines += [f"| `{k['kernel']}` | {k['category']} | {k['calls_per_step']:.2f} | {k['s_per_epoch']:.4f} |"
                  for k in r["top_kernels"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    import datetime as dt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="default,cudnn_benchmark,stem_pad8,cudnn_benchmark+stem_pad8,no_bn,bn_native")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "command": "python " + " ".join(sys.argv), "variants": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bn_backends_gpu.json").write_text(json.dumps({**res, "variants": None, "bn_backends": bn_backends()}, indent=2))
    for variant in filter(None, args.variants.split(",")):
        try:
            res["variants"].append(measure(variant))
        except Exception:  # keep the other variants' numbers; the traceback goes to the log
            import traceback

            traceback.print_exc()
    if not res["variants"]:
        return
    (out / "resnet_profile_gpu.json").write_text(json.dumps(res, indent=2, default=str))
    (out / "resnet_profile_gpu.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
