"""Tiny models of the families the freezer must handle (MLP, BatchNorm MLP, adapter + LayerNorm)."""

import torch
from torch import nn


def mlp(width: int = 8) -> nn.Module:
    """Seed 001's shape in miniature: four linear layers."""
    return nn.Sequential(
        nn.Linear(6, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
        nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 3),
    )


class BNNet(nn.Module):
    """Seed 000's shape in miniature: Linear+BN blocks and a head (fc1, bn1 | fc2, bn2, fc3)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(6, 8), nn.BatchNorm1d(8)
        self.fc2, self.bn2 = nn.Linear(8, 8), nn.BatchNorm1d(8)
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.tanh(self.bn1(self.fc1(x)))
        x = torch.tanh(self.bn2(self.fc2(x)))
        return self.fc3(x)


class LoRALinear(nn.Module):
    """A frozen base weight plus a trainable low-rank adapter, named the way PEFT names it."""

    def __init__(self, d_in: int, d_out: int, r: int = 2) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out)
        self.base.requires_grad_(False)
        self.lora_A = nn.Linear(d_in, r, bias=False)
        self.lora_B = nn.Linear(r, d_out, bias=False)
        nn.init.normal_(self.lora_B.weight, std=0.1)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x))


class AdapterNet(nn.Module):
    """Seed 002's hybrid in miniature: LoRA adapters + LayerNorm + a head."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = LoRALinear(6, 8)
        self.norm1 = nn.LayerNorm(8)
        self.block2 = LoRALinear(8, 8)
        self.norm2 = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.tanh(self.norm1(self.block1(x)))
        x = torch.tanh(self.norm2(self.block2(x)))
        return self.head(x)


class OutOfOrder(nn.Module):
    """Declares its layers in the opposite order to the one it runs them in."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Linear(8, 3)
        self.early = nn.Linear(6, 8)

    def forward(self, x):
        return self.late(torch.tanh(self.early(x)))
