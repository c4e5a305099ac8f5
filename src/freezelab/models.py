"""Models by name: the seed notebooks' MLPs, a small CNN, and two benchmark backbones.

Why a registry: a study names its model in YAML (``model: seed000_mlp``) and the CLI can
list what exists, so every builder is registered under one name with a one-line description
(the first line of its docstring), as timm does with ``@register_model``.

Every model built here carries ``hidden_activation_names``: the submodules whose outputs are
the hidden units, in forward order; ``metrics.dead_units`` reads them through
``metrics.capture_activations``. (The head needs no attribute: ``groups.find_head`` finds the
module whose output is the model's output.)

>>> model = build_model("fashion_mlp", activation="tanh")
>>> sum(p.numel() for p in model.parameters())
235146
>>> model.hidden_activation_names
['act1', 'act2']
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
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

_MODELS: dict[str, tuple[ModelBuilder, str]] = {}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name; each layer gets its own so hooks see one layer.

    >>> make_activation("leaky_relu")
    LeakyReLU(negative_slope=0.1)
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator that makes a builder available to ``build_model(name)``.

    The first line of the builder's docstring becomes its description in ``list_models()``.

    >>> @register_model("tiny")          # doctest: +SKIP
    ... def tiny(num_classes: int = 2):
    ...     "A 4-2 linear probe."
    ...     return nn.Linear(4, num_classes)
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered; pick another name")
        description = (builder.__doc__ or "").strip().splitlines()
        _MODELS[name] = (builder, description[0] if description else "")
        return builder

    return decorator


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model; keyword arguments go to its builder.

    >>> build_model("mlp", in_features=64, hidden=[32], num_classes=10).fc2
    Linear(in_features=32, out_features=10, bias=True)
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(_MODELS)}")
    return _MODELS[name][0](**kwargs)


def model_options(name: str) -> dict[str, Any]:
    """The keyword arguments a registered builder accepts, with their defaults.

    Why: a training loop can offer a dataset's ``in_features`` or a config's ``activation``
    only to the models that take them.

    >>> model_options("fashion_mlp")
    {'in_features': 784, 'num_classes': 10, 'activation': 'relu'}
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(_MODELS)}")
    parameters = inspect.signature(_MODELS[name][0]).parameters.values()
    return {p.name: p.default for p in parameters}


def list_models() -> dict[str, str]:
    """Registered model names, each with its one-line description (for the CLI).

    >>> list_models()["seed001_mlp"]
    'MNIST MLP of seed 001: 784-256-256-256-10, ReLU.'
    """
    return {name: description for name, (_, description) in _MODELS.items()}


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
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
        ):
            raise ValueError(f"hidden must be a list of layer widths >= 1, e.g. [256, 128], got {hidden!r}")
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


@register_model("small_cnn")
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


@register_model("resnet18")
def resnet18(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """torchvision ResNet-18 (random init), for benchmarks on larger models.

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


@register_model("vit_s16")
def vit_s16(
    in_channels: int = 3, num_classes: int = 10, img_size: int = 224, pretrained: bool = False
) -> nn.Module:
    """timm ViT-Small/16 (needs ``pip install timm``), the backbone of seed 002.

    ``hidden_activation_names`` is empty: its GELU outputs are [batch, tokens, features]
    and GELU units are never "dead" in the ReLU sense.
    """
    try:
        import timm
    except ImportError as error:
        raise ImportError("vit_s16 needs timm: pip install timm") from error
    model = timm.create_model(
        "vit_small_patch16_224",
        pretrained=pretrained,
        num_classes=num_classes,
        in_chans=in_channels,
        img_size=img_size,
    )
    model.hidden_activation_names = []
    return model
