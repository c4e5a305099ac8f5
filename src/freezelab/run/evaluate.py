"""What a run measures: each epoch's evaluation and statistics, its log rows and its summary.

Everything is computed on the device and copied to the host together, once per epoch (the
measurements of an epoch are one :func:`measure_epoch` call, replayed from a CUDA graph on
the graph path, and one transfer in :func:`epoch_row`).

Each epoch: NLL, accuracy and ECE (15 equal-width bins) on val and test; on the probe batch the
gradient statistics and ``grad_cosine``, and with ``interference: [A, B]`` the loss interaction
of the two groups on a held-out batch (``docs/methods/lora_norm_hybrid.md`` defines both). The
summary adds, per trainable set, its steps, trainable parameters, step time and peak memory.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from torch import nn

from .. import metrics
from ..optim import optimizer_state_bytes
from ..schedules.adaptive import GRAD_NORM_PREFIX
from .inputs import PLAIN, Inputs
from .memory import EVALUATION, set_label

if TYPE_CHECKING:
    from .build import Run
    from .steppers import StepRecord

__all__ = ["evaluate", "probe_statistics", "measure_epoch", "epoch_row", "step_frame", "summarize", "explosion",
           "LOSS_BLOWUP", "CHANCE_EPOCHS"]

#: The end-of-epoch scalars, in the order the epoch row lists them.
SCALARS = ("val_loss", "val_acc", "val_ece", "test_loss", "test_acc", "test_ece")


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, inputs: Inputs = PLAIN) -> tuple[torch.Tensor, ...]:
    """Mean NLL, accuracy and ECE of ``model`` on ``(x, y)``, plus the logits (for reliability bins).

    ``inputs``: the run's input pipeline (resize, layout, precision; never augmentation); the
    default feeds the stored tensors as they are, in float32.
    """
    chunk = inputs.eval_chunk
    was_training = model.training
    model.eval()
    with inputs.autocast():
        logits = torch.cat([model(inputs.eval(x[i : i + chunk])) for i in range(0, len(y), chunk)])
    model.train(was_training)
    loss = nn.functional.cross_entropy(logits.float(), y)
    acc = (logits.argmax(1) == y).float().mean()
    ece, _ = metrics.expected_calibration_error(logits.float(), y)
    return loss, acc, ece, logits


def probe_statistics(run: Run) -> dict[str, Any]:
    """Per-layer gradient statistics, dead units and the two-group measures on a fixed probe batch.

    Gradients are taken for every managed parameter (frozen ones included) so the gradient
    flow plot shows what would reach each layer, and so both groups of ``grad_cosine`` have a
    gradient whatever the schedule froze. The groups are the config's ``interference`` pair,
    else the first two schedulable ones; with ``interference`` set, the loss interaction on a
    held-out batch (the first ``batch_size`` validation examples) is measured too. The model's
    parameters, buffers, gradients and trainable set are left exactly as they were. The probe
    runs in float32 whatever the run's precision (statistics, not training), on unaugmented inputs.
    """
    model, fz = run.model, run.freezer
    x, y = run.inputs.eval(run.data.train.x[: run.config.batch_size]), run.data.train.y[: run.config.batch_size]
    managed = [p for g in run.groups for p in run.groups.params(model, g.name)]
    saved_flags = [p.requires_grad for p in managed]
    saved_buffers = [b.detach().clone() for b in model.buffers()]
    out: dict[str, Any] = {}
    try:
        for p in managed:
            p.requires_grad_(True)
            p.grad = None
        act_names = list(getattr(model, "hidden_activation_names", []))
        with metrics.capture_activations(model, act_names) as acts:
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        names, stats = metrics.grad_stats([(n, p) for n, p in model.named_parameters() if p.grad is not None])
        out["grad_names"], out["grad_stats"] = names, stats
        # Per-group norms: what an adaptive schedule (AutoFreeze) decides from, one column per group.
        out["group_names"] = list(run.groups.names)
        out["group_norms"] = torch.stack([_grad_norm(run.groups.params(model, g)) for g in run.groups.names])
        out["dead"] = {n: metrics.dead_units(a) for n, a in acts.items()}
        pair = run.config.interference or run.groups.schedulable[:2]
        if len(pair) == 2:
            a, b = run.groups[pair[0]].param_names, run.groups[pair[1]].param_names
            out["cosine"] = metrics.function_space_cosine(model, a, b, x)
            if run.config.interference:
                held_out = (run.inputs.eval(run.data.val.x[: len(y)]), run.data.val.y[: len(y)])
                out["interaction"] = metrics.loss_interaction(model, a, b, held_out)
    finally:
        for p, flag in zip(managed, saved_flags):
            p.requires_grad_(flag)
            p.grad = None
        for b, saved in zip(model.buffers(), saved_buffers):
            b.copy_(saved)
        fz.optimizer.zero_grad(set_to_none=True)
    return out


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of the gradients of ``params`` together (0 when none has a gradient)."""
    squares = [p.grad.detach().float().pow(2).sum() for p in params if p.grad is not None]
    return torch.stack(squares).sum().sqrt() if squares else torch.zeros(())


def measure_epoch(run: Run) -> dict[str, Any]:
    """Everything evaluated at the end of an epoch, as device tensors (no host synchronisation).

    ``{"scalars": {name: tensor for SCALARS}, "probe": probe_statistics}``. When the plan says
    so, this is replayed from a CUDA graph (:func:`freezelab.run.steppers.graphed`).
    """
    model, data = run.model, run.data
    val_loss, val_acc, val_ece, _ = evaluate(model, data.val.x, data.val.y, run.inputs)
    if data.test is data.val:  # recipes without a validation split (train_test): one evaluation serves both
        test_loss, test_acc, test_ece = val_loss, val_acc, val_ece
    else:
        test_loss, test_acc, test_ece, _ = evaluate(model, data.test.x, data.test.y, run.inputs)
    probe = probe_statistics(run) if run.config.grad_stats else {}
    scalars = dict(zip(SCALARS, (val_loss, val_acc, val_ece, test_loss, test_acc, test_ece)))
    return {"scalars": scalars, "probe": probe}


def epoch_row(run: Run, epoch: int, record: StepRecord, train_time: float, measured: dict[str, Any]) -> dict[str, Any]:
    """The epoch's log row: the measurements and the training losses copied to the host in one go."""
    probe = measured["probe"]
    dead = {f"dead_pct:{name}": value for name, value in probe.get("dead", {}).items()}
    on_device = {"train_loss": record.losses.float().mean(), **measured["scalars"], **dead}
    if "cosine" in probe:
        on_device["grad_cosine"] = probe["cosine"]
    if "interaction" in probe:
        on_device.update(zip(("_first_a", "_first_b", "_cross"), probe["interaction"].unbind()))
    host = dict(zip(on_device, torch.stack([t.detach().float().reshape(()) for t in on_device.values()]).cpu().tolist()))
    lr = run.lr_at((epoch + 1) * run.steps_per_epoch - 1)
    row: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": host["train_loss"],
        **{name: host[name] for name in SCALARS},
        "lr": lr,
        "train_time_s": train_time,
        "trainable": "+".join(n for n in run.groups.names if n in record.trainable[-1]),
        "trainable_fraction": sum(record.fractions) / len(record.fractions),
        "opt_state_bytes": optimizer_state_bytes(run.freezer.optimizer),
        "grad_cosine": host.get("grad_cosine", float("nan")),
        **{name: host[name] for name in dead},
    }
    if "interaction" in probe:
        a, b = run.config.interference
        terms = metrics.interaction_terms((host["_first_a"], host["_first_b"], host["_cross"]), float(lr))
        row[f"delta_loss:{a}"], row[f"delta_loss:{b}"] = terms["delta_a"], terms["delta_b"]
        row["interference_loss"], row["interference_ratio"] = terms["interaction"], terms["ratio"]
    if "grad_stats" in probe:
        stats = probe["grad_stats"].cpu().tolist()
        for name, (mean_abs, std, pct_zero) in zip(probe["grad_names"], stats):
            row[f"grad_mean_abs:{name}"] = mean_abs
            row[f"grad_std:{name}"] = std
            row[f"grad_pct_zero:{name}"] = pct_zero
        row.update((GRAD_NORM_PREFIX + name, value) for name, value in zip(probe["group_names"], probe["group_norms"].cpu().tolist()))
    return row


def step_frame(run: Run, epoch: int, record: StepRecord) -> pd.DataFrame:
    """The epoch's rows of the per-step log.

    ``trainable_params`` is the fraction times the model's parameter count: the fraction is an
    exact ratio of the two integers, so rounding gives the count back exactly.
    """
    spe, total = run.steps_per_epoch, sum(p.numel() for p in run.model.parameters())
    return pd.DataFrame(
        {
            "step": range(epoch * spe, epoch * spe + len(record.fractions)),
            "epoch": epoch + 1,
            "loss": record.losses.float().cpu().numpy(),
            "trainable": [set_label(t) for t in record.trainable],
            "trainable_fraction": record.fractions,
            "trainable_params": [round(f * total) for f in record.fractions],
            "step_time_s": record.step_times,
        }
    )


#: A run has exploded when an epoch's mean training loss exceeds this many times its start.
LOSS_BLOWUP = 10.0
#: ... or when validation accuracy sits at chance this many epochs in a row after being well above it.
CHANCE_EPOCHS = 2


def explosion(train_loss: list[float], val_acc: list[float], num_classes: int) -> dict[str, Any] | None:
    """``{"epoch": e, "reason": "..."}`` for the first epoch (1-based) where the run blew up, else ``None``.

    A learning rate far too high need not give a NaN: Adam at lr 1e6 drives the loss to 1e22 and
    the accuracy to chance while every number stays finite, and nothing else would say so. Two
    signs, either enough:

    * the epoch's mean training loss is over ``LOSS_BLOWUP`` times its start, where the start is
      the first epoch's loss or ``ln(classes)`` (the loss of a uniform guess), whichever is lower:
      a run already exploded in its first epoch is caught too;
    * validation accuracy at chance (within 10% of the way from chance to 1) for
      ``CHANCE_EPOCHS`` epochs in a row after having been well above it (half way to 1).

    >>> explosion([2.3, 0.5, 1e6], [0.3, 0.9, 0.1], 10)["epoch"]
    3
    >>> explosion([2.3, 0.5, 0.4], [0.3, 0.9, 0.91], 10) is None
    True
    """
    if not train_loss:
        return None
    start = min(train_loss[0], math.log(max(num_classes, 2)))
    chance = 1.0 / max(num_classes, 2)
    at_chance, above = chance + 0.1 * (1 - chance), chance + 0.5 * (1 - chance)
    was_above, low = False, 0
    for i, (loss, acc) in enumerate(zip(train_loss, val_acc)):
        if loss > LOSS_BLOWUP * start:
            return {"epoch": i + 1, "reason": f"train loss {loss:.3g} is over {LOSS_BLOWUP:g}x its start ({start:.3g})"}
        low = low + 1 if was_above and acc <= at_chance else 0
        if low >= CHANCE_EPOCHS:
            return {"epoch": i + 2 - low, "reason": f"val accuracy fell to chance ({acc:.1%}, chance {chance:.1%}) "
                                                    f"for {low} epochs after reaching {max(val_acc[:i + 1]):.1%}"}
        was_above = was_above or acc >= above
    return None


def trainable_sets(run: Run, steps: pd.DataFrame | None) -> dict[str, dict[str, Any]] | None:
    """Per trainable set (``steps.parquet``'s label): steps, trainable parameters, step time and peak memory.

    Step times are the per-step log's (mean and median: a set's first steps include compiling or
    capturing its graphs). ``peak_mem_bytes`` is the set's phase peak (:mod:`freezelab.run.memory`),
    None on a CPU. None without a per-step log (``log_steps: false``).
    """
    if steps is None or steps.empty:
        return None
    peaks = run.memory.by_phase()
    out: dict[str, dict[str, Any]] = {}
    for label, rows in steps.groupby("trainable", sort=False):
        times = rows["step_time_s"] if "step_time_s" in rows and rows["step_time_s"].notna().any() else None
        out[str(label)] = {
            "steps": len(rows),
            "trainable_params": int(rows["trainable_params"].iloc[0]) if "trainable_params" in rows else None,
            "step_time_ms": 1000 * float(times.mean()) if times is not None else None,
            "step_time_ms_median": 1000 * float(times.median()) if times is not None else None,
            "peak_mem_bytes": peaks.get(str(label)) if peaks is not None else None,
        }
    return out


def _mean(epochs: pd.DataFrame, column: str) -> float | None:
    """The epochs' mean of ``column`` ignoring NaN; None when the column is absent or all NaN."""
    if column not in epochs:
        return None
    values = pd.to_numeric(epochs[column], errors="coerce")
    return float(values.mean()) if values.notna().any() else None


def summarize(run: Run, epochs: pd.DataFrame, steps: pd.DataFrame | None = None) -> dict[str, Any]:
    """The run's ``summary.json``: final and best accuracy, test NLL/ECE, times, memory, interference, ``exploded``.

    ``exploded`` is ``None``, or ``{"epoch": e, "reason": "..."}`` when the run blew up without a
    NaN (:func:`explosion`): its accuracies then describe a broken run, not the schedule.
    """
    cfg, model, data = run.config, run.model, run.data
    val_acc = epochs["val_acc"].tolist()
    best = max(val_acc)
    target = cfg.target_acc if cfg.target_acc is not None else 0.9 * best
    test_nll, _, test_ece, logits = evaluate(model, data.test.x, data.test.y, run.inputs)
    _, bins = metrics.expected_calibration_error(logits.float(), data.test.y)
    early = [c for c in epochs.columns if c.startswith("grad_mean_abs:") and c.endswith("weight")][:2]
    train_time = float(epochs["train_time_s"].sum())
    device = run.device
    return {
        "experiment": cfg.experiment,
        "variant": cfg.variant,
        "seed": cfg.seed,
        "schedule": run.schedule.describe(),
        "final_val_acc": val_acc[-1],
        "best_val_acc": best,
        "best_epoch": int(epochs["epoch"][epochs["val_acc"].idxmax()]),
        "epoch_to_90pct_best": metrics.epoch_to_fraction_of_best(val_acc, 0.9),
        "final_test_acc": float(epochs["test_acc"].iloc[-1]),
        "final_train_loss": float(epochs["train_loss"].iloc[-1]),
        "stability": metrics.stability(epochs["train_loss"].tolist()),
        "mean_early_grad": float(epochs[early].mean().mean()) if early else None,
        "avg_epoch_time_s": float(epochs["epoch_time_s"].mean()),
        "total_time_s": float(epochs["epoch_time_s"].sum()),
        "train_time_s": train_time,
        "target_acc": target,
        "time_to_target_s": metrics.time_to_target(val_acc, epochs["epoch_time_s"].tolist(), target),
        "peak_mem_bytes": run.memory.overall,
        "peak_mem_bytes_evaluation": (run.memory.by_phase() or {}).get(EVALUATION),
        "test_ece": float(test_ece),
        "test_nll": float(test_nll),
        "reliability": {k: [float(v) for v in torch.as_tensor(bins[k]).tolist()] for k in ("conf", "acc", "count")},
        "throughput_samples_per_s": len(data.train.y) * len(epochs) / train_time if train_time else None,
        "step_time_ms": 1000 * train_time / (run.steps_per_epoch * len(epochs)),
        "switches": run.freezer.switches,
        "exploded": explosion(epochs["train_loss"].tolist(), val_acc, data.num_classes),
        "trainable_sets": trainable_sets(run, steps),
        "mean_grad_cosine": _mean(epochs, "grad_cosine"),
        "mean_interference_loss": _mean(epochs, "interference_loss"),
        "mean_interference_ratio": _mean(epochs, "interference_ratio"),
        "data_source": data.source,
        "precision": run.plan.precision,
        "augment": cfg.augment,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_version": torch.__version__,
    }
