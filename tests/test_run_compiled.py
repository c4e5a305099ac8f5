"""A compiled loss follows the freeze: a new trainable set gets its own graph, never a stale one."""

import torch

from freezelab.run.compiled import configure_dynamo, model_loss

from models_for_tests import mlp


def _grads_after_step(net, loss, x, y, calls: int = 10) -> list[bool]:
    """Which parameters got a gradient; several calls, as Dynamo's guard shortcuts need a few to engage."""
    for _ in range(calls):
        for p in net.parameters():
            p.grad = None
        loss(net, x, y).backward()
    return [p.grad is not None for p in net.parameters()]


def test_compiled_loss_recompiles_when_the_trainable_set_changes():
    """torch 2.11 reused the first set's graph here (pytorch/pytorch#139476) unless configured."""
    configure_dynamo()
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = mlp()
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    loss = torch.compile(model_loss, backend="aot_eager")
    head = [n.startswith("6.") for n, _ in net.named_parameters()]
    assert _grads_after_step(net, loss, x, y) == [True] * len(head)
    net[6].requires_grad_(False)
    assert _grads_after_step(net, loss, x, y) == [not h for h in head]
    net.requires_grad_(True)
    net[0].requires_grad_(False)
    net[2].requires_grad_(False)
    net[4].requires_grad_(False)
    assert _grads_after_step(net, loss, x, y) == head
    eager = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    for p in net.parameters():
        p.grad = None
    model_loss(net, x, y).backward()
    assert all(torch.allclose(a, p.grad) for a, p in zip(eager, [p for p in net.parameters() if p.grad is not None]))
