"""step_flops counts what autograd really computes: freezing removes weight and input gradients."""

import doctest

import pytest
import torch
from torch import nn

from freezelab import flops
from freezelab.flops import step_flops

from models_for_tests import BNNet

BATCH, D = 4, 8


def linear_flops(d_in: int, d_out: int) -> int:
    return 2 * BATCH * d_in * d_out


@pytest.fixture
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, D), nn.ReLU(), nn.Linear(D, 3))


def data():
    return torch.randn(BATCH, D), torch.tensor([0, 1, 2, 0])


def test_full_step_skips_only_the_first_input_gradient(net):
    f = step_flops(net, *data())
    per_layer = [linear_flops(D, D), linear_flops(D, D), linear_flops(D, 3)]
    assert f.forward == sum(per_layer)
    # every weight gradient, input gradients for layers 2 and 3 (the data needs none)
    assert f.backward == sum(per_layer) + per_layer[1] + per_layer[2]


def test_frozen_prefix_skips_weight_and_input_gradients(net):
    net[0].requires_grad_(False)
    f = step_flops(net, *data())
    # layer 2 is the first trainable one: its input gradient is not needed
    assert f.backward == linear_flops(D, D) + 2 * linear_flops(D, 3)


def test_frozen_suffix_still_needs_its_input_gradients(net):
    net[4].requires_grad_(False)
    f = step_flops(net, *data())
    assert f.backward == 2 * linear_flops(D, D) + linear_flops(D, D) + linear_flops(D, 3)


def test_frozen_conv_suffix_skips_its_weight_gradient():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 2))
    x, y = torch.randn(2, 3, 6, 6), torch.tensor([0, 1])
    full = step_flops(conv, x, y)
    conv[2].requires_grad_(False)
    frozen = step_flops(conv, x, y)
    fwd_conv2 = 2 * 2 * 8 * 8 * 9 * 36
    assert full.backward - frozen.backward == fwd_conv2
    assert 0 < frozen.saving_against(full) < 1


def test_nothing_trainable_means_no_backward(net):
    net.requires_grad_(False)
    f = step_flops(net, *data())
    assert f.backward == 0 and f.total == f.forward


def test_counting_leaves_grads_and_running_stats_alone():
    model = BNNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step_flops(model, torch.randn(BATCH, 6), torch.tensor([0, 1, 2, 0]))
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_docstring_example():
    assert doctest.testmod(flops).failed == 0


def test_a_frozen_prefix_stores_no_activations():
    """With the first k blocks frozen (norms in eval mode), autograd saves exactly what the suffix alone saves."""
    from freezelab import Freezer, groups
    from freezelab.flops import saved_for_backward
    from freezelab.schedules import Clock, Freeze

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    x = torch.randn(4, 3, 8, 8)
    gs = groups.pattern(net, {"block0": ["0.*", "1.*"], "block1": ["3.*", "4.*"]}, rest="head")
    full = saved_for_backward(net, x)
    saved = [full.bytes]
    for k, cut in ((1, 3), (2, 6)):  # block0 = conv+bn 1, block1 = conv+bn 2
        fz = Freezer(net, gs, Freeze(gs.names[:k]), torch.optim.SGD(net.parameters(), lr=0.1), bn_stats="frozen")
        fz.step(Clock.at(0, 1, 1))
        frozen = saved_for_backward(net, x)
        with torch.no_grad():
            features = net[:cut](x)
        assert frozen == saved_for_backward(net[cut:], features)
        saved.append(frozen.bytes)
        net.requires_grad_(True)
        net.train()
    assert saved[0] > saved[1] > saved[2]
