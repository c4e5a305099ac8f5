"""Tests for freezelab.metrics against numpy references and hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from freezelab.metrics import (
    capture_activations,
    dead_units,
    epoch_to_fraction_of_best,
    expected_calibration_error,
    function_space_cosine,
    grad_stats,
    interaction_terms,
    loss_interaction,
    param_space_cosine,
    stability,
    time_to_target,
)
from freezelab.models import MLP

# torch.func.jvp loads its decompositions through the deprecated torch.jit.script once.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def _numpy_grad_stats(g: np.ndarray) -> list[float]:
    """Seed 004's compute_gradient_stats, on one gradient."""
    g = g.astype(np.float64).ravel()
    return [np.mean(np.abs(g)), np.std(g), np.mean(g == 0) * 100]


# ---------------------------------------------------------------- grad_stats


def test_grad_stats_matches_numpy_and_skips_frozen_params() -> None:
    torch.manual_seed(0)
    model = MLP(10, [16, 8], 3)
    model.fc2.bias.requires_grad_(False)  # frozen: grad stays None
    nn.functional.cross_entropy(model(torch.randn(32, 10)), torch.randint(0, 3, (32,))).backward()
    names, stats = grad_stats(list(model.named_parameters()))
    expected = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == expected and "fc2.bias" not in names
    assert stats.shape == (len(names), 3) and stats.dtype == torch.float32
    reference = [_numpy_grad_stats(model.get_parameter(n).grad.numpy()) for n in names]
    np.testing.assert_allclose(stats.numpy(), np.array(reference), rtol=1e-5, atol=1e-8)


def test_grad_stats_with_no_gradients_is_empty() -> None:
    names, stats = grad_stats(nn.Linear(2, 2).named_parameters())
    assert names == [] and stats.shape == (0, 3)


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float32,
        st.integers(1, 50),
        elements=st.one_of(st.just(0.0), st.floats(-1e3, 1e3, width=32)),
    )
)
def test_grad_stats_property_matches_numpy(values: np.ndarray) -> None:
    param = nn.Parameter(torch.zeros(len(values)))
    param.grad = torch.from_numpy(values)
    _, stats = grad_stats([("p", param)])
    # float32 statistics are exact only up to the values' magnitude (std of 15 x 683.47 is ~1e-4, not 0)
    scale = max(1.0, float(np.abs(values).max()))
    np.testing.assert_allclose(stats[0].numpy(), _numpy_grad_stats(values), rtol=1e-4, atol=1e-6 * scale * 100)


# ---------------------------------------------------------------- dead units and hooks


def test_dead_units_on_dense_activations() -> None:
    acts = torch.tensor([[0.0, 1.0, -2.0, 0.0], [-1.0, 0.0, -1.0, 3.0]])
    assert dead_units(acts).item() == pytest.approx(50.0)  # units 0 and 2
    assert dead_units(torch.sigmoid(torch.randn(8, 5))).item() == 0.0


def test_dead_units_on_feature_maps_counts_channels() -> None:
    acts = -torch.ones(2, 3, 2, 2)
    acts[1, 1, 0, 1] = 0.5  # channel 1 fires once, at one position of one sample
    assert dead_units(acts).item() == pytest.approx(200 / 3)


def test_dead_units_rejects_unbatched_input() -> None:
    with pytest.raises(ValueError, match="batch"):
        dead_units(torch.ones(4))


def test_capture_activations_records_hidden_units_and_removes_hooks() -> None:
    torch.manual_seed(0)
    model = MLP(6, [5, 4], 2)
    x = torch.randn(3, 6)
    with capture_activations(model, model.hidden_activation_names) as acts:
        model(x)
    assert set(acts) == {"act1", "act2"}
    expected_act1 = torch.relu(model.fc1(x))
    torch.testing.assert_close(acts["act1"], expected_act1)
    assert not acts["act1"].requires_grad
    assert all(not m._forward_hooks for m in model.modules())


def test_capture_activations_removes_hooks_after_an_error() -> None:
    model = MLP(6, [5], 2)
    with pytest.raises(RuntimeError), capture_activations(model, ["act1"]):
        model(torch.randn(3, 7))  # wrong width
    assert all(not m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------- ECE


def _numpy_ece(
    logits: np.ndarray, targets: np.ndarray, n_bins: int
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Top-label ECE by a loop over bins [k/n, (k+1)/n), the last closed at 1."""
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == targets)
    ece, confs, accs, counts = 0.0, [], [], []
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        in_bin = (conf >= lo) & ((conf < hi) if k < n_bins - 1 else (conf <= hi))
        n = int(in_bin.sum())
        counts.append(n)
        confs.append(conf[in_bin].mean() if n else 0.0)
        accs.append(correct[in_bin].mean() if n else 0.0)
        ece += n / len(conf) * abs(accs[-1] - confs[-1])
    return ece, np.array(confs), np.array(accs), np.array(counts)


@pytest.mark.parametrize(("n_bins", "scale"), [(15, 1.0), (15, 4.0), (10, 0.3)])
def test_ece_matches_numpy_reference(n_bins: int, scale: float) -> None:
    gen = torch.Generator().manual_seed(n_bins)
    logits = torch.randn(500, 10, generator=gen) * scale
    targets = torch.randint(0, 10, (500,), generator=gen)
    logits[torch.arange(250), targets[:250]] += 2.0  # half the samples lean to the truth
    ece, bins = expected_calibration_error(logits, targets, n_bins=n_bins)
    ref_ece, ref_conf, ref_acc, ref_count = _numpy_ece(logits.numpy(), targets.numpy(), n_bins)
    assert ece.item() == pytest.approx(ref_ece, abs=1e-6)
    np.testing.assert_array_equal(bins["count"].numpy(), ref_count)
    np.testing.assert_allclose(bins["conf"].numpy(), ref_conf, atol=1e-6)
    np.testing.assert_allclose(bins["acc"].numpy(), ref_acc, atol=1e-6)


def test_ece_is_zero_when_confidence_equals_accuracy() -> None:
    logits = torch.tensor([[math.log(3.0), 0.0]] * 4)  # confidence 0.75 for class 0
    ece, bins = expected_calibration_error(logits, torch.tensor([0, 0, 0, 1]))
    assert ece.item() == pytest.approx(0.0, abs=1e-6)
    assert bins["count"][11].item() == 4 and bins["acc"][11].item() == 0.75


def test_ece_puts_full_confidence_in_the_last_bin() -> None:
    logits = torch.tensor([[100.0, 0.0], [0.0, 100.0]])  # softmax rounds to exactly 1.0
    ece, bins = expected_calibration_error(logits, torch.tensor([0, 0]))
    assert bins["count"].tolist() == [0] * 14 + [2]
    assert ece.item() == pytest.approx(0.5)


def test_ece_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="targets"):
        expected_calibration_error(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))


# ---------------------------------------------------------------- gradient cosines


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_function_space_cosine_deep_linear_model_by_hand() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    model(x).pow(2).sum().backward()
    w1, w2 = model[0].weight.detach().numpy(), model[1].weight.detach().numpy()
    g1, g2 = model[0].weight.grad.numpy(), model[1].weight.grad.numpy()
    xn = x.numpy()
    # y = x W1^T W2^T is linear in each group, so a step -g changes y by exactly:
    d_a = -xn @ g1.T @ w2.T
    d_b = -xn @ w1.T @ g2.T
    got = function_space_cosine(model, ["0.weight"], ["1.weight"], x)
    assert got.item() == pytest.approx(_cos(d_a, d_b), abs=1e-6)


def test_function_space_cosine_weight_vs_bias_by_hand() -> None:
    torch.manual_seed(1)
    model = nn.Linear(3, 2).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 1, 0, 1, 0])).backward()
    g_w, g_b = model.weight.grad.numpy(), model.bias.grad.numpy()
    d_w = -x.numpy() @ g_w.T
    d_b = -np.broadcast_to(g_b, d_w.shape)
    got = function_space_cosine(model, ["weight"], ["bias"], x)
    assert got.item() == pytest.approx(_cos(d_w, d_b), abs=1e-6)
    both = function_space_cosine(model, ["weight", "bias"], ["bias", "weight"], x)
    assert both.item() == pytest.approx(1.0)


def test_function_space_cosine_matches_finite_differences_on_a_bn_mlp() -> None:
    torch.manual_seed(2)
    model = MLP(5, [7, 6], 3, norm="batch", dropout=0.3).double()
    x = torch.randn(9, 5, dtype=torch.float64)
    model(x).sum().backward()
    model.eval()
    group_a, group_b = ["fc1.weight", "norm1.bias"], ["fc3.weight"]

    def output_change(names: list[str], eps: float = 1e-6) -> np.ndarray:
        with torch.no_grad():
            before = model(x).clone()
            for n in names:
                model.get_parameter(n).sub_(eps * model.get_parameter(n).grad)
            after = model(x).clone()
            for n in names:
                model.get_parameter(n).add_(eps * model.get_parameter(n).grad)
        return ((after - before) / eps).numpy()

    expected = _cos(output_change(group_a), output_change(group_b))
    got = function_space_cosine(model, group_a, group_b, x)
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_function_space_cosine_leaves_model_untouched() -> None:
    torch.manual_seed(3)
    model = MLP(5, [7, 6], 3, norm="batch", dropout=0.3)
    model.norm2.eval()  # a freezer may hold some norm layers in eval: keep that mixed state
    x = torch.randn(8, 5)
    model(x).sum().backward()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}

    first = function_space_cosine(model, ["fc1.weight"], ["fc2.weight", "fc3.bias"], x)
    second = function_space_cosine(model, ["fc1.weight"], ["fc2.weight", "fc3.bias"], x)

    assert first.item() == second.item()  # eval mode: no dropout noise
    assert not math.isnan(first.item())
    for k, v in model.state_dict().items():  # parameters and buffers (BN running stats, counters)
        assert torch.equal(v, state[k]), k
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    assert {n: m.training for n, m in model.named_modules()} == modes


def test_function_space_cosine_is_nan_without_a_gradient() -> None:
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    model.bias.requires_grad_(False)
    model(x).sum().backward()
    assert math.isnan(function_space_cosine(model, ["weight"], ["bias"], x).item())
    model.weight.grad.zero_()
    assert math.isnan(function_space_cosine(model, ["weight"], ["weight"], x).item())


def test_param_space_cosine() -> None:
    torch.manual_seed(4)
    a = [torch.randn(3, 2), torch.randn(4)]
    b = [torch.randn(3, 2), torch.randn(4)]
    flat_a, flat_b = (np.concatenate([t.numpy().ravel() for t in ts]) for ts in (a, b))
    expected = _cos(flat_a, flat_b)
    assert param_space_cosine(a, b).item() == pytest.approx(expected, abs=1e-6)
    assert param_space_cosine(a, [-t for t in a]).item() == pytest.approx(-1.0)
    assert math.isnan(param_space_cosine(a, [torch.randn(2, 3), torch.randn(4)]).item())
    assert math.isnan(param_space_cosine([], []).item())


# ---------------------------------------------------------------- two groups whose answer is known


class TwoBranches(nn.Module):
    """Two linear branches ``a`` and ``b`` of one input: summed into one output (identical effects)
    or written to separate outputs (orthogonal effects)."""

    def __init__(self, together: bool, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b, self.together = nn.Linear(3, 2), nn.Linear(3, 2), together

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x) if self.together else torch.cat([self.a(x), self.b(x)], dim=1)


A, B = ["a.weight", "a.bias"], ["b.weight", "b.bias"]


def _probe(model: nn.Module, loss_fn, seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = model(torch.zeros(1, 3, dtype=dtype)).shape[1]
    x, y, xh, yh = (torch.randn(n, k, generator=g, dtype=dtype) for n, k in ((16, 3), (16, out), (12, 3), (12, out)))
    loss_fn(model(x), y).backward()
    return x, (xh, yh)


def _loss_after(model: nn.Module, steps: dict[str, torch.Tensor], lr: float, heldout, loss_fn) -> float:
    """The held-out loss after moving the named parameters by -lr * grad (exactly, no expansion)."""
    params = {n: p.detach() - (lr * p.grad if n in steps else 0) for n, p in model.named_parameters()}
    with torch.no_grad():
        return float(loss_fn(torch.func.functional_call(model, params, (heldout[0],)), heldout[1]))


def _interaction_by_evaluation(model, groups, lr, heldout, loss_fn) -> float:
    """L(both steps) - L(A's step) - L(B's step) + L(no step): the joint step's excess over the two alone."""
    a, b = (dict.fromkeys(g) for g in groups)
    return (_loss_after(model, {**a, **b}, lr, heldout, loss_fn) - _loss_after(model, a, lr, heldout, loss_fn)
            - _loss_after(model, b, lr, heldout, loss_fn) + _loss_after(model, {}, lr, heldout, loss_fn))


def test_orthogonal_groups_neither_interact_nor_align() -> None:
    """Separate outputs under MSE: the Hessian's A-B block is zero and the output changes are disjoint."""
    mse = nn.functional.mse_loss
    model = TwoBranches(together=False)
    x, heldout = _probe(model, mse)
    _, _, cross = loss_interaction(model, A, B, heldout, mse)
    assert cross.item() == 0.0
    assert function_space_cosine(model, A, B, x).item() == pytest.approx(0.0, abs=1e-7)


def test_identical_groups_interfere_by_exactly_the_cross_curvature() -> None:
    """Summed branches: identical gradients, identical output changes (cosine 1); MSE is quadratic, so
    lr**2 g_A.H_AB.g_B is the joint step's excess over the two alone exactly (checked in float64)."""
    mse = nn.functional.mse_loss
    model = TwoBranches(together=True).double()
    x, heldout = _probe(model, mse, dtype=torch.float64)
    raw = loss_interaction(model, A, B, heldout, mse)
    assert raw[0].item() == pytest.approx(raw[1].item(), rel=1e-12)  # the same step, seen by either group
    terms = interaction_terms(raw, lr=0.1)
    assert terms["interaction"] > 0  # redundant steps overshoot together: interference
    assert terms["interaction"] == pytest.approx(_interaction_by_evaluation(model, (A, B), 0.1, heldout, mse), rel=1e-6)
    assert function_space_cosine(model, A, B, x).item() == pytest.approx(1.0, abs=1e-6)


def test_interaction_matches_loss_evaluations_on_a_cross_entropy_mlp() -> None:
    """Beyond quadratic losses the formula is second order: it matches the evaluated interaction as lr -> 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    groups = (["0.weight", "0.bias"], ["2.weight", "2.bias"])
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    heldout = (torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,)))
    nn.functional.cross_entropy(model(x), y).backward()
    raw = loss_interaction(model, *groups, heldout)
    for lr in (1e-2, 1e-3):
        evaluated = _interaction_by_evaluation(model, groups, lr, heldout, nn.functional.cross_entropy)
        assert interaction_terms(raw, lr)["interaction"] == pytest.approx(evaluated, rel=10 * lr)
    first = [_loss_after(model, dict.fromkeys(g), 1e-6, heldout, nn.functional.cross_entropy) for g in groups]
    base = _loss_after(model, {}, 0.0, heldout, nn.functional.cross_entropy)
    terms = interaction_terms(raw, 1e-6)
    assert [terms["delta_a"], terms["delta_b"]] == pytest.approx([f - base for f in first], rel=1e-3)


def test_loss_interaction_leaves_the_model_untouched_and_is_nan_without_a_gradient() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    model.train()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    raw = loss_interaction(model, ["0.weight", "0.bias"], ["3.weight", "3.bias"], (x, y))
    assert torch.isfinite(raw).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
    assert all(m.training for m in model.modules())
    model[3].weight.grad = model[3].bias.grad = None
    assert torch.isnan(loss_interaction(model, ["0.weight"], ["3.weight", "3.bias"], (x, y))).all()
    assert math.isnan(interaction_terms(torch.zeros(3), lr=0.1)["ratio"])  # no predicted gain: no share of it


def test_lora_against_norm_on_a_peft_vit_matches_loss_evaluations() -> None:
    """Seed 002's pair on a real (tiny) peft LoRA ViT with its norms trainable: attention, LayerNorm, adapters."""
    import model_families

    fam = model_families.load("peft_lora")
    model = fam.model.double()
    for name, p in model.named_parameters():
        if "norm" in name:
            p.requires_grad_(True)
    lora = [n for n, p in model.named_parameters() if "lora_" in n]
    norm = [n for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    (x, y), (xh, yh) = fam.make_batch(0), fam.make_batch(1)
    x, xh = x.double(), xh.double()
    for p in model.parameters():  # LoRA's B starts at zero; a few plain steps make both groups matter
        p.grad = None
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    raw = loss_interaction(model, lora, norm, (xh, yh))
    lr = 1e-3
    evaluated = _interaction_by_evaluation(model, (lora, norm), lr, (xh, yh), nn.functional.cross_entropy)
    assert interaction_terms(raw, lr)["interaction"] == pytest.approx(evaluated, rel=0.05)
    assert -1 <= function_space_cosine(model, lora, norm, x).item() <= 1


# ---------------------------------------------------------------- run summary helpers


def test_epoch_to_fraction_of_best() -> None:
    assert epoch_to_fraction_of_best([0.1, 0.5, 0.95, 1.0]) == 3  # threshold 0.9
    assert epoch_to_fraction_of_best([0.1, 0.5, 0.95, 1.0], frac=0.5) == 2
    assert epoch_to_fraction_of_best([0.8, 0.8]) == 1
    assert epoch_to_fraction_of_best([]) is None


def test_stability_is_inverse_of_one_plus_population_variance() -> None:
    losses = [2.0, 1.2, 0.9, 0.7]
    assert stability(losses) == pytest.approx(1 / (1 + np.var(losses)), rel=1e-15)
    with pytest.raises(ValueError):
        stability([])


def test_time_to_target() -> None:
    times = [10.0, 12.0, 11.0]
    assert time_to_target([0.5, 0.8, 0.9], times, target=0.8) == pytest.approx(22.0)
    assert time_to_target([0.9, 0.8, 0.9], times, target=0.8) == pytest.approx(10.0)
    assert time_to_target([0.5, 0.6, 0.7], times, target=0.8) is None
    with pytest.raises(ValueError, match="epoch times"):
        time_to_target([0.5], times, target=0.8)
