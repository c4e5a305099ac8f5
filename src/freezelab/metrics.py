"""Training-dynamics metrics, computed on the device.

Why on the device: reading one number back from a GPU waits for all queued work, so a
``.item()`` per parameter per step serialises training. Every tensor-valued function here
returns tensors and never synchronises; the caller moves results to the host once (for
example once per epoch, when it writes the run log). The summary helpers at the end take
host-side lists of floats, because they run after training.

>>> model = torch.nn.Linear(3, 2)
>>> model(torch.randn(4, 3)).sum().backward()
>>> names, stats = grad_stats(list(model.named_parameters()))
>>> names, stats.shape        # columns: mean |g|, std(g), % exactly zero
(['weight', 'bias'], torch.Size([2, 3]))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp


def grad_stats(named_params: Iterable[tuple[str, Tensor]]) -> tuple[list[str], Tensor]:
    """Per-parameter gradient statistics: mean |g|, population std, % entries exactly 0.

    Why these three (from seed 004): mean |g| shows vanishing gradients, std shows how
    spread the update is, and exactly-zero entries show dead ReLU paths. Parameters without
    a gradient (frozen ones have ``grad is None``) are omitted. Computed in float32; std
    divides by n like ``np.std``. Mean |g| and the zero count come from torch's multi-tensor
    norms (L1, and L0 = number of nonzeros) rather than per-parameter temporaries.

    >>> w = torch.nn.Parameter(torch.zeros(4))
    >>> w.grad = torch.tensor([0.0, 1.0, -1.0, 2.0])
    >>> grad_stats([("w", w)])[1]
    tensor([[ 1.0000,  1.1180, 25.0000]])
    """
    named_grads = [(name, p.grad) for name, p in named_params if p.grad is not None]
    names = [name for name, _ in named_grads]
    if not named_grads:
        return names, torch.empty(0, 3)
    grads = [g.detach().float() for _, g in named_grads]
    numels = [float(g.numel()) for g in grads]
    mean_abs = torch._foreach_div(torch._foreach_norm(grads, 1), numels)
    frac_nonzero = torch._foreach_div(torch._foreach_norm(grads, 0), numels)  # L0 counts nonzeros
    std = [g.std(correction=0) for g in grads]
    pct_zero = 100 * (1 - torch.stack(frac_nonzero))
    return names, torch.stack([torch.stack(mean_abs), torch.stack(std), pct_zero], dim=1)


def dead_units(acts: Tensor) -> Tensor:
    """Percentage of units whose output is <= 0 for every sample of the batch.

    ``acts`` is [batch, units] or channels-first [batch, channels, *spatial]; a channel
    counts as one unit and must be <= 0 at every position to count as dead. For ReLU this
    is the classic "dead unit": no output, no gradient, for this whole batch. For
    leaky_relu, elu, tanh and gelu it means "always on the negative side", but gradient
    still flows, so such units can recover. Sigmoid outputs are never <= 0, so it reads 0.

    >>> dead_units(torch.tensor([[0.0, 1.0, -2.0, 3.0], [0.0, 0.0, -1.0, 1.0]]))
    tensor(50.)
    """
    if acts.ndim < 2:
        raise ValueError(f"expected [batch, units, ...] activations, got shape {tuple(acts.shape)}")
    per_unit_max = acts.detach().amax(dim=(0, *range(2, acts.ndim)))
    return (per_unit_max <= 0).float().mean() * 100


@contextmanager
def capture_activations(
    model: nn.Module, module_names: Iterable[str]
) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of named submodules during the forward passes inside the block.

    Yields a dict ``name -> detached output`` that fills in as the model runs; the hooks are
    removed on exit, even after an error. If a module runs twice in one forward pass, the
    dict keeps its last output.

    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    >>> with capture_activations(model, ["1"]) as acts:
    ...     _ = model(torch.randn(2, 3))
    >>> acts["1"].shape
    torch.Size([2, 4])
    """
    captured: dict[str, Tensor] = {}
    handles = []
    try:
        for name in module_names:
            hook = _store_output(captured, name)
            handles.append(model.get_submodule(name).register_forward_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _store_output(captured: dict[str, Tensor], name: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: object, output: Tensor) -> None:
        captured[name] = output.detach()

    return hook


def expected_calibration_error(
    logits: Tensor, targets: Tensor, n_bins: int = 15
) -> tuple[Tensor, dict[str, Tensor]]:
    """Top-label ECE with ``n_bins`` equal-width confidence bins, plus the reliability bins.

    ECE = sum over bins of (count / N) * |accuracy - mean confidence|, where confidence is
    the top softmax probability. Bins are [k/n, (k+1)/n), the last one closed at 1.0. This
    is torchmetrics' ``multiclass_calibration_error(norm="l1")`` except that torchmetrics
    gives confidences of exactly 1.0 a bin of their own; here they join the last bin so the
    reliability diagram has exactly ``n_bins`` bins. Returns the ECE and
    ``{"conf", "acc", "count"}`` per bin (conf and acc are 0 in empty bins).

    >>> ece, bins = expected_calibration_error(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    >>> round(ece.item(), 4), bins["count"].sum().item()
    (0.1192, 1)
    """
    if logits.ndim != 2 or targets.shape != logits.shape[:1] or logits.shape[0] == 0:
        raise ValueError(
            f"expected logits [N, classes] and targets [N] with N > 0, "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    confidences, predictions = logits.detach().float().softmax(dim=1).max(dim=1)
    correct = (predictions == targets).float()
    edges = torch.linspace(0, 1, n_bins + 1, device=logits.device)
    bins = torch.bucketize(confidences, edges[1:-1], right=True)
    count = torch.zeros(n_bins, dtype=torch.long, device=logits.device).index_add_(0, bins, torch.ones_like(bins))
    conf_sum = torch.zeros(n_bins, device=logits.device).index_add_(0, bins, confidences)
    acc_sum = torch.zeros(n_bins, device=logits.device).index_add_(0, bins, correct)
    ece = (acc_sum - conf_sum).abs().sum() / confidences.numel()
    nonempty = count.clamp(min=1)
    return ece, {"conf": conf_sum / nonempty, "acc": acc_sum / nonempty, "count": count}


@functools.cache
def warm_up_jvp() -> None:
    """Pay torch's one-time forward-mode AD set-up (~2 s) now, not inside a timed epoch."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own use of torch.jit.script
        jvp(lambda t: t * 2, (torch.ones(1),), (torch.ones(1),))


def function_space_cosine(
    model: nn.Module, group_a: Iterable[str], group_b: Iterable[str], inputs: Tensor
) -> Tensor:
    """Cosine between the changes two parameter groups' gradient steps make to the logits.

    Why output space: the two groups' gradients live in different parameter spaces, so
    their raw cosine is undefined. What both change is the model's output. With ``g_A`` the
    current ``.grad`` of group A's parameters (given by name), ``d_A = J_A(-g_A)`` is the
    first-order change of the logits on ``inputs`` if only A took a gradient step (a
    Jacobian-vector product, other parameters fixed); likewise ``d_B``. The result is
    ``cos(d_A, d_B)`` over all [batch, classes] outputs: +1 means the groups push the outputs
    the same way (they cooperate), negative means they interfere. NaN if a group has no
    gradient (all ``grad is None``, e.g. frozen) or a zero one. Parameters of a group whose
    grad is None count as not moving.

    The model runs in eval mode (no dropout, BatchNorm uses and keeps its running
    statistics); every module's train/eval flag is restored afterwards, and parameters,
    gradients and buffers are not modified.

    >>> model = torch.nn.Linear(3, 2)
    >>> x = torch.randn(5, 3)
    >>> model(x).pow(2).sum().backward()
    >>> round(function_space_cosine(model, ["weight"], ["weight"], x).item(), 4)
    1.0
    """
    params = {name: p.detach() for name, p in model.named_parameters()}
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), _math_attention():
            d_a = _output_change(model, params, group_a, inputs)
            d_b = _output_change(model, params, group_b, inputs)
    finally:
        for module, training in modes:
            module.training = training
    if d_a is None or d_b is None:
        return torch.full((), math.nan, device=inputs.device)
    return _cosine(d_a, d_b)


def _output_change(
    model: nn.Module, params: dict[str, Tensor], names: Iterable[str], inputs: Tensor
) -> Tensor | None:
    """J(-g) for the named parameters that have a gradient; None if none has one."""
    moving = [name for name in names if model.get_parameter(name).grad is not None]
    if not moving:
        return None
    tangents = tuple(-model.get_parameter(name).grad.detach() for name in moving)

    def logits(*values: Tensor) -> Tensor:
        return functional_call(model, {**params, **dict(zip(moving, values))}, (inputs,))

    return jvp(logits, tuple(params[name] for name in moving), tangents)[1]


def loss_interaction(
    model: nn.Module,
    group_a: Iterable[str],
    group_b: Iterable[str],
    heldout: tuple[Tensor, Tensor],
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """How two groups' gradient steps interact on the loss of a held-out batch: ``[h_A.g_A, h_B.g_B, g_A.H_AB.g_B]``.

    ``g_A`` is group A's current ``.grad`` (from a probe batch; its step is ``s_A = -lr g_A``),
    ``h_A`` the gradient of the held-out loss ``L`` for A's parameters, ``H_AB`` the block of
    L's Hessian between A and B. Then, to second order in ``lr``:

    * ``delta_A = L(theta + s_A) - L(theta) = -lr h_A.g_A`` (+ A's own curvature), likewise B;
    * ``L(theta + s_A + s_B) - L(theta) - delta_A - delta_B = lr**2 g_A.H_AB.g_B``: the
      *interaction*. The first-order changes of disjoint groups always add up exactly, so the
      interaction is the leading term of what taking both steps together changes; > 0 means
      the joint step gains less than the two alone (interference), < 0 more.

    The three numbers are returned without ``lr`` so a caller can scale them by the rate in
    force (this is replayed from a CUDA graph, where a Python float would be frozen). One
    double backward (a Hessian-vector product) on ``heldout``; attention runs on PyTorch's
    math kernel here, the only one with second derivatives. NaN where a group has no gradient.
    The model runs in eval mode; its modes, parameters, gradients and buffers are left as they were.

    >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)   # redundant groups: both add to one output
    >>> model = torch.nn.ModuleDict({"a": a, "b": b})
    >>> model.forward = lambda x: a(x) + b(x)
    >>> x, y = torch.randn(8, 2), torch.randn(8, 1)
    >>> mse = torch.nn.functional.mse_loss
    >>> mse(model(x), y).backward()
    >>> first_a, first_b, cross = loss_interaction(model, ["a.weight", "a.bias"], ["b.weight", "b.bias"], (x, y), mse)
    >>> bool(cross > 0), torch.allclose(first_a, first_b)
    (True, True)
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    x, y = heldout
    params = {name: p.detach() for name, p in model.named_parameters()}
    names_a = [n for n in group_a if model.get_parameter(n).grad is not None]
    names_b = [n for n in group_b if model.get_parameter(n).grad is not None]
    if not names_a or not names_b:
        return torch.full((3,), math.nan, device=x.device)
    g_a = [model.get_parameter(n).grad.detach() for n in names_a]
    g_b = [model.get_parameter(n).grad.detach() for n in names_b]
    leaves = {n: params[n].detach().requires_grad_() for n in (*names_a, *names_b)}
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.enable_grad(), _math_attention():
            loss = loss_fn(functional_call(model, {**params, **leaves}, (x,)), y)
            h = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
            h_a, h_b = h[: len(names_a)], h[len(names_a) :]
            along_a = _dot(h_a, g_a)  # h_A.g_A, still a function of every parameter
            hvp_b = torch.autograd.grad(along_a, [leaves[n] for n in names_b], allow_unused=True)
    finally:
        for module, training in modes:
            module.training = training
    cross = _dot([torch.zeros_like(g) if v is None else v for v, g in zip(hvp_b, g_b)], g_b)
    return torch.stack([along_a.detach(), _dot(h_b, g_b).detach(), cross.detach()]).float()


def interaction_terms(raw: Tensor | Sequence[float], lr: float) -> dict[str, float]:
    """:func:`loss_interaction`'s three numbers at learning rate ``lr``, as the run log names them.

    ``delta_a``/``delta_b``: first-order change of the held-out loss from each group's step
    alone; ``interaction``: what the joint step adds to their sum (second order);
    ``ratio``: ``interaction / -(delta_a + delta_b)``, the share of the predicted gain the
    interaction takes back (NaN when the steps predict no change).

    >>> interaction_terms(torch.tensor([2.0, 2.0, 1.0]), lr=0.5)
    {'delta_a': -1.0, 'delta_b': -1.0, 'interaction': 0.25, 'ratio': 0.125}
    """
    first_a, first_b, cross = (float(v) for v in raw)
    delta_a, delta_b, interaction = -lr * first_a, -lr * first_b, lr * lr * cross
    gain = -(delta_a + delta_b)
    ratio = interaction / gain if gain != 0 else math.nan
    return {"delta_a": delta_a, "delta_b": delta_b, "interaction": interaction, "ratio": ratio}


def _dot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor:
    return sum(((a.float() * b.float()).sum() for a, b in zip(xs, ys)), torch.zeros((), device=xs[0].device))


def _math_attention():
    """PyTorch's math attention kernel (the flash and efficient ones have no double backward or forward AD)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def param_space_cosine(grads_a: Sequence[Tensor], grads_b: Sequence[Tensor]) -> Tensor:
    """Plain cosine between two gradient lists, for groups of identical shapes.

    Only meaningful when the groups are alike (e.g. two blocks of the same architecture);
    NaN when the shapes differ (use ``function_space_cosine``) or either list is empty.

    >>> g = [torch.tensor([1.0, 2.0])]
    >>> param_space_cosine(g, [-g[0]])
    tensor(-1.)
    """
    shapes_a = [g.shape for g in grads_a]
    if not grads_a or shapes_a != [g.shape for g in grads_b]:
        device = grads_a[0].device if grads_a else None
        return torch.full((), math.nan, device=device)
    flat_a = torch.cat([g.flatten() for g in grads_a])
    return _cosine(flat_a, torch.cat([g.flatten() for g in grads_b]))


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of two tensors as flat vectors; 0/0 gives NaN rather than a made-up 0."""
    a, b = a.detach().flatten().float(), b.detach().flatten().float()
    return a.dot(b) / (a.norm() * b.norm())


# --- Run summary helpers (docs/design.md, summary.json); inputs are host-side floats.


def epoch_to_fraction_of_best(accs: Sequence[float], frac: float = 0.9) -> int | None:
    """First epoch (1-based) whose accuracy reaches ``frac`` of the run's best; None if empty.

    >>> epoch_to_fraction_of_best([0.5, 0.86, 0.9, 0.95])
    2
    """
    if not accs:
        return None
    threshold = frac * max(accs)
    return next(epoch for epoch, acc in enumerate(accs, start=1) if acc >= threshold)


def stability(losses: Sequence[float]) -> float:
    """1 / (1 + population variance of the losses): 1 for a flat curve, toward 0 when noisy.

    >>> stability([1.0, 1.0, 1.0])
    1.0
    """
    if not losses:
        raise ValueError("stability needs at least one loss value")
    return 1.0 / (1.0 + float(np.var(losses)))


def time_to_target(
    accs: Sequence[float], epoch_times: Sequence[float], target: float
) -> float | None:
    """Seconds of training until the end of the first epoch whose accuracy reaches target.

    None if no epoch reaches it. Why cumulative: a schedule that makes epochs cheaper can
    reach the target sooner in seconds while needing more epochs.

    >>> time_to_target([0.5, 0.8, 0.9], [10.0, 9.0, 8.0], target=0.8)
    19.0
    """
    if len(accs) != len(epoch_times):
        raise ValueError(f"got {len(accs)} accuracies but {len(epoch_times)} epoch times")
    elapsed = 0.0
    for acc, seconds in zip(accs, epoch_times):
        elapsed += seconds
        if acc >= target:
            return elapsed
    return None
