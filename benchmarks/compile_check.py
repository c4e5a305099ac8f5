"""Does the compiled graph path train like the eager loop? Which compiled piece is off, and when?

For several schedule/policy/optimizer/LR cases on digits (5 epochs, GPU), trains the eager
loop (``fast: off``) and then: the graph path without compiling, the default (compiled) graph
path, only the update compiled, only the loss compiled. Prints each one's largest |train loss
difference| from the eager loop. It found that on torch 2.11 a compiled loss whose trainable set
changed every few batches trained wrongly (differences above 1.0): Dynamo reused one trainable
set's graph for another, until ``freezelab.run.compiled.configure_dynamo`` turned off the guard
shortcut that hid ``requires_grad``. Result: ``results/compile_check_gpu.txt``.

    python benchmarks/compile_check.py > $OUT/compile_check_gpu.txt      # GPU only
"""
import freezelab.run.steppers as F
from freezelab.run import train

BASE = {"dataset": "digits", "epochs": 3, "batch_size": 64, "lr": 1e-2, "model_args": {"hidden": [64, 64]}, "device": "cuda"}
CASES = {
    "adam keep alt3 none": {"schedule": {"name": "alternate", "unit": "batch", "every": 3}},
    "adam remove alt3 none": {"schedule": {"name": "alternate", "unit": "batch", "every": 3}, "policy": "remove"},
    "adam remove alt3 onecycle": {"schedule": {"name": "alternate", "unit": "batch", "every": 3}, "policy": "remove", "lr_schedule": "onecycle"},
    "adam keep std onecycle": {"lr_schedule": "onecycle"},
    "sgdm std gelu": {"optimizer": "sgd_momentum", "activation": "gelu", "seed": 2},
    "adam keep alt-epoch": {"schedule": {"name": "alternate", "unit": "epoch"}},
    "adam keep std": {},
}
orig_loss, orig_update = F.compiled_loss, F.compiled_update

for name, extra in CASES.items():
    extra = {**extra, "epochs": 5}
    cfg = {**BASE, **extra}
    ref = train({**cfg, "fast": "off"}, progress=False).epochs["train_loss"].tolist()
    out = {"graph": train({**cfg, "compile": "off"}, progress=False).epochs["train_loss"].tolist(),
           "compiled": train(cfg, progress=False).epochs["train_loss"].tolist()}
    F.compiled_loss = lambda: F.model_loss
    out["update-only"] = train(cfg, progress=False).epochs["train_loss"].tolist()
    F.compiled_loss = orig_loss
    F.compiled_update = lambda opt: None
    out["loss-only"] = train(cfg, progress=False).epochs["train_loss"].tolist()
    F.compiled_update = orig_update
    print(name, "| eager", [round(v, 5) for v in ref], "|", " | ".join(f"{k} {max(abs(a - b) for a, b in zip(v, ref)):.2e}" for k, v in out.items()), flush=True)
