"""Models by name: the seed notebooks' MLPs, a small CNN, ResNets and timm ViTs.

Why a registry: a study names its model in YAML (``model: seed000_mlp``) and the CLI can
list what exists, so every builder is registered under one name with a one-line description
(the first line of its docstring), as timm does with ``@register_model``.

A model knows itself (timm's ``group_matcher``): what it needs beside its builder is declared
where it is registered, in its :class:`ModelInfo`, and read from there by the run:

* ``images``: it takes NCHW images (else the run hands it flattened inputs);
* ``input_size``: the image side it expects (224 for ViT-S/16: the run resizes 32 px CIFAR
  batches to it); ``None`` means the data's own size;
* ``groups``: its default parameter groups, a ``groups.from_spec`` dict that a run whose
  ``groups`` is left unset uses. Why each default is what it is is said beside each builder.

The head needs no declaration: ``groups.find_head`` finds the module whose output is the
model's output.

Every model built here carries ``hidden_activation_names``: the submodules whose outputs are
the hidden units, in forward order; ``metrics.dead_units`` reads them through
``metrics.capture_activations``.

>>> model = build_model("fashion_mlp", activation="tanh")
>>> sum(p.numel() for p in model.parameters())
235146
>>> model.hidden_activation_names
['act1', 'act2']
>>> model_info("vit_s16").images, model_info("vit_s16").input_size
(True, 224)
"""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

ModelBuilder = Callable[..., nn.Module]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": lambda: nn.LeakyReLU(negative_slope=0.1),  # slope as in seed 004
    "gelu": nn.GELU,
    "elu": nn.ELU,
}

#: The groups of a model that declares none: the seeds' two halves by forward depth.
DEFAULT_GROUPS: dict[str, Any] = {"by": "depth", "blocks": 2}


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model besides how to build it (see the module doc)."""

    name: str
    builder: ModelBuilder = field(repr=False)
    description: str
    images: bool = False
    input_size: int | None = None
    _groups: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_GROUPS, repr=False)

    @property
    def groups(self) -> dict[str, Any]:
        """The default groups spec, a fresh copy each time (callers may edit it)."""
        return copy.deepcopy(dict(self._groups))


_MODELS: dict[str, ModelInfo] = {}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name; each layer gets its own so hooks see one layer.

    >>> make_activation("leaky_relu")
    LeakyReLU(negative_slope=0.1)
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def register_model(
    name: str, *, images: bool = False, input_size: int | None = None, groups: Mapping[str, Any] | None = None
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that makes a builder available to ``build_model(name)``, with what the model is.

    The first line of the builder's docstring becomes its description in ``list_models()``;
    ``images``, ``input_size`` and ``groups`` (``None``: :data:`DEFAULT_GROUPS`) go into its
    :class:`ModelInfo`.

    >>> @register_model("tiny", groups={"by": "layers"})          # doctest: +SKIP
    ... def tiny(num_classes: int = 2):
    ...     "A 4-2 linear probe."
    ...     return nn.Linear(4, num_classes)
    """
    if input_size is not None and (not images or isinstance(input_size, bool) or not isinstance(input_size, int)):
        raise ValueError(f"input_size={input_size!r} for {name!r}: only image models have one, a whole number of pixels")

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered; pick another name")
        description = (builder.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelInfo(name, builder, description[0] if description else "", images, input_size,
                                  copy.deepcopy(dict(groups if groups is not None else DEFAULT_GROUPS)))
        return builder

    return decorator


def model_info(name: str) -> ModelInfo:
    """Everything the registry knows about model ``name``: builder, description, images, input size, groups.

    >>> model_info("seed000_mlp").groups
    {'by': 'depth', 'blocks': 2}
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(_MODELS)}")
    return _MODELS[name]


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model; keyword arguments go to its builder.

    >>> build_model("mlp", in_features=64, hidden=[32], num_classes=10).fc2
    Linear(in_features=32, out_features=10, bias=True)
    """
    return model_info(name).builder(**kwargs)


def model_options(name: str) -> dict[str, Any]:
    """The keyword arguments a registered builder accepts, with their defaults.

    Why: a training loop can offer a dataset's ``in_features`` or a config's ``activation``
    only to the models that take them.

    >>> model_options("fashion_mlp")
    {'in_features': 784, 'num_classes': 10, 'activation': 'relu'}
    """
    parameters = inspect.signature(model_info(name).builder).parameters.values()
    return {p.name: p.default for p in parameters}


def list_models() -> dict[str, str]:
    """Registered model names, each with its one-line description (for the CLI).

    >>> list_models()["seed001_mlp"]
    'MNIST MLP of seed 001: 784-256-256-256-10, ReLU.'
    """
    return {name: info.description for name, info in _MODELS.items()}


def example_input(
    model: nn.Module, input_shape: Sequence[int], batch: int = 2
) -> torch.Tensor:
    """A small random batch on the model's device and dtype, to run one forward pass.

    Used to trace which modules run in which order (forward order can differ from the
    order modules were registered in).

    >>> example_input(build_model("small_cnn"), (3, 32, 32)).shape
    torch.Size([2, 3, 32, 32])
    """
    first = next(model.parameters(), None)
    if first is None:
        return torch.randn(batch, *input_shape)
    return torch.randn(batch, *input_shape, device=first.device, dtype=first.dtype)


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` draws random dropout masks (fast paths that reorder RNG draws must know).

    >>> has_dropout(build_model("seed000_mlp")), has_dropout(build_model("fashion_mlp"))
    (True, False)
    """
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


class MLP(nn.Sequential):
    """Flatten, then ``fc -> norm -> act -> dropout`` per hidden layer, then a linear head.

    The submodules are named ``fc1..fcN`` (``fcN`` is the head), ``norm1..``, ``act1..``,
    ``drop1..`` so parameter names match the seed notebooks (``fc1.weight``, ...). Norm and
    dropout modules exist only when asked for (``norm`` set, ``dropout > 0``).

    >>> MLP(784, [256, 128], 10)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        activation: str = "relu",
        norm: Literal["batch", "layer"] | None = None,
        dropout: float = 0.0,
    ) -> None:
        if norm not in (None, "batch", "layer"):
            raise ValueError(f"unknown norm {norm!r}; use None, 'batch' or 'layer'")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        widths = [in_features, *hidden]
        for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:]), start=1):
            layers[f"fc{i}"] = nn.Linear(fan_in, fan_out)
            if norm == "batch":
                layers[f"norm{i}"] = nn.BatchNorm1d(fan_out)
            elif norm == "layer":
                layers[f"norm{i}"] = nn.LayerNorm(fan_out)
            layers[f"act{i}"] = make_activation(activation)
            if dropout > 0:
                layers[f"drop{i}"] = nn.Dropout(dropout)
        head = f"fc{len(widths)}"
        layers[head] = nn.Linear(widths[-1], num_classes)
        super().__init__(layers)
        self.hidden_activation_names = [f"act{i}" for i in range(1, len(widths))]


@register_model("mlp")
def mlp(
    in_features: int = 784,
    hidden: Sequence[int] = (256, 256),
    num_classes: int = 10,
    activation: str = "relu",
    norm: Literal["batch", "layer"] | None = None,
    dropout: float = 0.0,
) -> MLP:
    """Generic MLP: any widths, activation, norm and dropout."""
    return MLP(in_features, hidden, num_classes, activation, norm, dropout)


@register_model("seed000_mlp")
def seed000_mlp(in_features: int = 3072, num_classes: int = 10, dropout: float = 0.2) -> MLP:
    """CIFAR-10 MLP of seed 000: 3072-512-512-10, BatchNorm + ReLU + Dropout.

    Seed 000 names "Drop" without a rate; 0.2 is our guess, hence the argument.
    """
    return MLP(in_features, [512, 512], num_classes, "relu", norm="batch", dropout=dropout)


@register_model("seed001_mlp")
def seed001_mlp(in_features: int = 784, num_classes: int = 10) -> MLP:
    """MNIST MLP of seed 001: 784-256-256-256-10, ReLU."""
    return MLP(in_features, [256, 256, 256], num_classes, "relu")


@register_model("fashion_mlp")
def fashion_mlp(in_features: int = 784, num_classes: int = 10, activation: str = "relu") -> MLP:
    """Fashion-MNIST MLP of seed 004: 784-256-128-10, activation by name (235,146 params)."""
    return MLP(in_features, [256, 128], num_classes, activation)


#: Default groups of a small CNN: its three conv-BN blocks, the head riding with the last, as the
#: MLPs' halves carry theirs (``depth`` puts a remainder in the later blocks: conv1,bn1 |
#: conv2,bn2 | conv3,bn3,fc).
CNN_GROUPS = {"by": "depth", "blocks": 3}

#: Default groups of a torchvision-layout ResNet: the stem, the four stages, and the head, which
#: is always trainable. Stages are the unit people freeze a ResNet by (Composer freezes early
#: stages first); a per-module split would give ~60 groups of BatchNorm scraps. An
#: always-trainable head suits what ResNets here are for: fine-tuning a checkpoint whose head
#: was re-initialised, and progressive freezing, which should never stop the classifier.
RESNET_GROUPS = {
    "by": "pattern",
    "patterns": {"stem": ["conv1.*", "bn1.*"], "layer1": "layer1.*", "layer2": "layer2.*",
                 "layer3": "layer3.*", "layer4": "layer4.*", "head": "fc.*"},
    "always_trainable": ["head"],
}

#: Default groups of a ViT: seed 002's split without LoRA. The norm layers (every LayerNorm),
#: the head (always trainable), and everything else as ``rest`` (patch embedding, tokens,
#: attention and MLP weights): the two schedulable groups an alternating schedule switches.
VIT_GROUPS = {"by": "kind", "kinds": ["norm", "head"], "rest": "rest"}


@register_model("small_cnn", images=True, groups=CNN_GROUPS)
def small_cnn(in_channels: int = 3, num_classes: int = 10) -> nn.Sequential:
    """Small CNN: 3 conv-BN-ReLU blocks (32/64/128 ch), global average pool, linear head.

    Pooling after blocks 1 and 2 only, and a global pool at the end, so it accepts 28x28
    (MNIST) and 32x32 (CIFAR) inputs alike. Conv layers have no bias: BatchNorm follows.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    widths = [in_channels, 32, 64, 128]
    for i, (c_in, c_out) in enumerate(zip(widths, widths[1:]), start=1):
        layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(c_out)
        layers[f"act{i}"] = nn.ReLU()
        layers[f"pool{i}"] = nn.MaxPool2d(2) if i < 3 else nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(widths[-1], num_classes)
    model = nn.Sequential(layers)
    model.hidden_activation_names = ["act1", "act2", "act3"]
    return model


@register_model("resnet18", images=True, groups=RESNET_GROUPS)
def resnet18(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """torchvision ResNet-18 (random init, ImageNet stem), for benchmarks on larger models.

    Hidden units are the four stages' outputs: each BasicBlock ends in a ReLU, and the
    shared ``relu`` module inside a block runs twice per forward, so hooks on it would mix
    two layers.
    """
    from torchvision.models import resnet18 as torchvision_resnet18

    model = torchvision_resnet18(num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.hidden_activation_names = ["layer1", "layer2", "layer3", "layer4"]
    return model


@register_model("cifar_resnet18", images=True, groups=RESNET_GROUPS)
def cifar_resnet18(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, BasicBlocks [2,2,2,2] at 64-512 (11.17 M params).

    The standard CIFAR variant (as in kuangliu/pytorch-cifar and most CIFAR papers):
    on 32 px inputs an ImageNet stem (7x7 stride 2 plus max-pool) would shrink the image to 8 px
    before the first stage. Built from torchvision's ``resnet18`` with only ``conv1`` and
    ``maxpool`` replaced, so parameter names are torchvision's and a torchvision state dict
    (or a timm ``resnet18`` one, same names) loads; only an ImageNet ``conv1.weight`` (7x7)
    does not fit the 3x3 stem (``model_args: {reinit: [conv1]}`` keeps the stem at its init).
    """
    model = resnet18(in_channels=3, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _timm(model: str) -> Any:
    """``import timm``, or an ImportError that says how to get it (timm is an optional extra)."""
    try:
        import timm
    except ImportError as error:
        raise ImportError(f"{model} needs timm: pip install timm (or pip install 'freezelab[vision]')") from error
    return timm


@register_model("vit_s16", images=True, input_size=224, groups=VIT_GROUPS)
def vit_s16(
    in_channels: int = 3, num_classes: int = 10, img_size: int = 224, pretrained: bool = False
) -> nn.Module:
    """timm ViT-Small/16 at 224 px (needs ``pip install timm``), the backbone of seed 002.

    ``hidden_activation_names`` is empty: its GELU outputs are [batch, tokens, features]
    and GELU units are never "dead" in the ReLU sense.
    """
    timm = _timm("vit_s16")
    model = timm.create_model(
        "vit_small_patch16_224",
        pretrained=pretrained,
        num_classes=num_classes,
        in_chans=in_channels,
        img_size=img_size,
    )
    model.hidden_activation_names = []
    return model


@register_model("vit_tiny32", images=True, groups=VIT_GROUPS)
def vit_tiny32(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Small timm ViT for 32 px inputs: patch 4, width 192, depth 6, 3 heads, class token (2.69 M params).

    64 patches of 4x4 px plus a class token: a ViT that trains on CIFAR at its native size, a
    cheap stand-in for ViT-S/16 at 224 px in LoRA and norm-tuning experiments (needs timm).
    ``hidden_activation_names`` is empty, as for ``vit_s16``.
    """
    _timm("vit_tiny32")
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=32, patch_size=4, in_chans=in_channels, num_classes=num_classes,
                              embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0, class_token=True,
                              global_pool="token")
    model.hidden_activation_names = []
    return model
