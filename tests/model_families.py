"""Tiny models of every family freezelab must handle, shared by the groups, freezer and host tests.

Interface (keep it this small; other test files import it)::

    from model_families import FAMILIES, REQUIRES, load

    fam = load("tv_vit")            # pytest.importorskip()s what the family needs, then builds it
    fam.model                       # an nn.Module in train mode, built under a fixed seed
    fam.example_input               # a batch the model accepts: fam.model(fam.example_input)
    x, y = fam.make_batch(seed)     # a deterministic (input, target) batch of BATCH rows
    loss = fam.loss_fn(fam.model, (x, y))   # a scalar loss to call .backward() on
    fam.head                        # the module name groups' head=True must pick
    fam.forward_units               # names of the modules whose trainable parameters form the units,
                                    # in forward order ("" = the model itself); frozen-only modules excluded
    fam.frozen                      # parameter names the builder froze (they must stay unmanaged)
    fam.tied                        # (canonical, alias) names of parameters that are one tensor

``FAMILIES`` maps each name to its builder (``FAMILIES[name](seed=0)``); ``REQUIRES`` names the
packages a family needs beyond torch (builders import them lazily). Every builder is
deterministic for its ``seed`` and leaves the global RNG as it found it.

Families: ``mlp``; ``resnet18`` (torchvision, BatchNorm); ``tv_vit`` (torchvision ViT, whose
nn.MultiheadAttention uses ``out_proj`` functionally); ``timm_vit`` (cls_token/pos_embed owned by
the model itself); ``peft_lora`` (LoRA r=4 on the timm ViT's qkv/proj/fc1/fc2, base frozen, head
in ``modules_to_save``); ``tied_lm`` (transformers' GPT-2 with its LM head tied to the token
embedding); ``prefrozen`` (an MLP whose first layer is frozen before anything else).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BATCH = 4
CLASSES = 10
IMAGE = (3, 32, 32)
VIT = dict(patch=8, depth=2, heads=2, dim=32, mlp=64)
LM = dict(vocab=64, length=12, dim=16, layers=2, heads=2)
MLP_SIZES = (6, 16, 16, 16, 3)  # four Linear layers at indices 0, 2, 4, 6 (ReLU between)


@dataclass
class Family:
    """One built model with what a test needs to train it and to check its groups."""

    name: str
    model: nn.Module
    example_input: object
    make_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
    head: str
    forward_units: tuple[str, ...]
    frozen: tuple[str, ...] = ()
    tied: tuple[tuple[str, str], ...] = ()
    notes: str = ""


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build under ``seed`` without moving the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().train()


def _classification(
    name: str, model: nn.Module, input_shape: tuple[int, ...], classes: int, head: str, order: tuple[str, ...], **extra
) -> Family:
    def make_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(BATCH, *input_shape, generator=g), torch.randint(0, classes, (BATCH,), generator=g)

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(m(x), y)

    return Family(name, model, make_batch(12345)[0], make_batch, loss_fn, head, order, **extra)


def _mlp() -> nn.Sequential:
    layers: list[nn.Module] = []
    for d_in, d_out in zip(MLP_SIZES, MLP_SIZES[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


_MLP_UNITS = tuple(str(2 * i) for i in range(len(MLP_SIZES) - 1))


def mlp(seed: int = 0) -> Family:
    return _classification("mlp", _seeded(_mlp, seed), MLP_SIZES[:1], MLP_SIZES[-1], _MLP_UNITS[-1], _MLP_UNITS)


def prefrozen(seed: int = 0) -> Family:
    model = _seeded(_mlp, seed)
    model[0].requires_grad_(False)
    return _classification(
        "prefrozen", model, MLP_SIZES[:1], MLP_SIZES[-1], _MLP_UNITS[-1], _MLP_UNITS[1:], frozen=("0.weight", "0.bias"),
        notes="layer 0 frozen before any group or freezer exists",
    )  # fmt: skip


def resnet18(seed: int = 0) -> Family:
    import torchvision

    model = _seeded(lambda: torchvision.models.resnet18(num_classes=CLASSES), seed)
    order = ["conv1", "bn1"]
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for b, block in enumerate(getattr(model, stage)):
            order += [f"{stage}.{b}.{n}" for n in ("conv1", "bn1", "conv2", "bn2")]
            if block.downsample is not None:
                order += [f"{stage}.{b}.downsample.0", f"{stage}.{b}.downsample.1"]
    return _classification("resnet18", model, IMAGE, CLASSES, "fc", (*order, "fc"), notes="BatchNorm running stats")


def _tv_vit() -> nn.Module:
    import torchvision

    return torchvision.models.VisionTransformer(
        image_size=IMAGE[1], patch_size=VIT["patch"], num_layers=VIT["depth"], num_heads=VIT["heads"],
        hidden_dim=VIT["dim"], mlp_dim=VIT["mlp"], num_classes=CLASSES,
    )  # fmt: skip


def tv_vit(seed: int = 0) -> Family:
    order = ["conv_proj", "", "encoder"]  # patch embedding, class_token (root), pos_embedding (encoder)
    for i in range(VIT["depth"]):
        layer = f"encoder.layers.encoder_layer_{i}"
        order += [f"{layer}.{n}" for n in ("ln_1", "self_attention", "self_attention.out_proj", "ln_2", "mlp.0", "mlp.3")]
    return _classification(
        "tv_vit", _seeded(_tv_vit, seed), IMAGE, CLASSES, "heads.head", (*order, "encoder.ln", "heads.head"),
        notes="nn.MultiheadAttention: in_proj_weight owned by the MHA module, out_proj never called as a module",
    )  # fmt: skip


def _timm_vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=IMAGE[1], patch_size=VIT["patch"], embed_dim=VIT["dim"], depth=VIT["depth"], num_heads=VIT["heads"],
        mlp_ratio=VIT["mlp"] / VIT["dim"], num_classes=CLASSES,
    )  # fmt: skip


def _timm_block_units(prefix: str = "") -> list[str]:
    order = []
    for i in range(VIT["depth"]):
        order += [f"{prefix}blocks.{i}.{n}" for n in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")]
    return order


def timm_vit(seed: int = 0) -> Family:
    order = ["patch_embed.proj", "", *_timm_block_units(), "norm", "head"]  # "" = cls_token + pos_embed
    return _classification(
        "timm_vit", _seeded(_timm_vit, seed), IMAGE, CLASSES, "head", tuple(order),
        notes="cls_token and pos_embed are owned by the model itself",
    )  # fmt: skip


#: PEFT target modules: the timm ViT's block linears only (not patch_embed.proj).
LORA_TARGETS = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"


def peft_lora(seed: int = 0) -> Family:
    from peft import LoraConfig, get_peft_model

    def build() -> nn.Module:
        config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, modules_to_save=["head"])
        return get_peft_model(_timm_vit(), config)

    model = _seeded(build, seed)
    frozen = tuple(n for n, p in model.named_parameters() if not p.requires_grad)
    p = "base_model.model."
    adapted = [u for u in _timm_block_units(p) if u.endswith(("qkv", "proj", "fc1", "fc2"))]
    order = [f"{u}.lora_{ab}.default" for u in adapted for ab in "AB"] + [f"{p}head.modules_to_save.default"]
    return _classification(
        "peft_lora", model, IMAGE, CLASSES, f"{p}head.modules_to_save.default", tuple(order), frozen=frozen,
        notes="the base (norms, patch embedding, cls_token ...) and head.original_module are frozen by peft",
    )  # fmt: skip


def tied_lm(seed: int = 0) -> Family:
    from transformers import GPT2Config, GPT2LMHeadModel

    def build() -> nn.Module:
        config = GPT2Config(
            vocab_size=LM["vocab"], n_positions=LM["length"], n_embd=LM["dim"], n_layer=LM["layers"], n_head=LM["heads"],
            tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        return GPT2LMHeadModel(config)

    model = _seeded(build, seed)

    def make_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, LM["vocab"], (BATCH, LM["length"]), generator=torch.Generator().manual_seed(seed))
        return ids, ids

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ids, targets = batch
        logits = m(ids).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1))

    order = ["transformer.wte", "transformer.wpe"]
    for i in range(LM["layers"]):
        order += [f"transformer.h.{i}.{n}" for n in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")]
    return Family(
        "tied_lm", model, make_batch(12345)[0], make_batch, loss_fn, "lm_head", (*order, "transformer.ln_f"),
        tied=(("transformer.wte.weight", "lm_head.weight"),),
        notes="GPT-2: lm_head.weight is transformer.wte.weight; lm_head owns nothing else, so it is no unit",
    )  # fmt: skip


FAMILIES: dict[str, Callable[..., Family]] = {
    "mlp": mlp,
    "resnet18": resnet18,
    "tv_vit": tv_vit,
    "timm_vit": timm_vit,
    "peft_lora": peft_lora,
    "tied_lm": tied_lm,
    "prefrozen": prefrozen,
}

REQUIRES: dict[str, tuple[str, ...]] = {
    "resnet18": ("torchvision",),
    "tv_vit": ("torchvision",),
    "timm_vit": ("timm",),
    "peft_lora": ("timm", "peft"),
    "tied_lm": ("transformers",),
}


def load(name: str, seed: int = 0) -> Family:
    """Build family ``name``, skipping the calling test if a package it needs is missing."""
    import pytest

    for package in REQUIRES.get(name, ()):
        pytest.importorskip(package)
    return FAMILIES[name](seed=seed)
