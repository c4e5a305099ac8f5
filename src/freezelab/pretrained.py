"""Starting from weights trained elsewhere: a local checkpoint, and LoRA adapters over the model.

Both come through a run's ``model_args`` beside the builder's own arguments, and are applied
right after the model is built (under the run's seed, so the fresh parts are identical for
identical seeds)::

    model: vit_tiny32
    model_args:
      checkpoint: weights/vit_tiny32_in1k.pth    # a local file, or a freezelab run folder
      reinit: []                                  # modules kept at their fresh init, beyond the head
      lora: {r: 8, alpha: 16, targets: [qkv, proj, fc1, fc2], dropout: 0.0}
    groups: {by: kind, kinds: [lora, norm, head]}

**Checkpoints** (:func:`load_checkpoint`). Read without running pickled code: ``.pth``/``.pt``/
``.bin`` through ``torch.load(weights_only=True)``, ``.safetensors`` through the ``safetensors``
package, timm's ``.npz`` (the big_vision/JAX ViT weights) through ``timm.models.load_checkpoint``.
A file holding a training checkpoint gives its ``state_dict`` (timm's train script) or
``model`` (freezelab's run folder ``checkpoint.pt``) entry; DDP's ``module.`` and
``torch.compile``'s ``_orig_mod.`` prefixes are dropped. What fine-tuning needs is allowed and
said in one log line: head tensors whose shape differs (another number of classes) or that the
checkpoint lacks (a features-only checkpoint) keep the head's fresh initialisation, as do the
modules named in ``reinit`` (an ImageNet ResNet's 7x7 ``conv1`` in a 3x3 CIFAR stem). Any other
missing, unexpected or misshapen tensor means another architecture: a :class:`ConfigError`
naming the first keys and the fix.

**LoRA** (:func:`wrap_lora`). ``peft``'s ``LoraConfig`` + ``get_peft_model``: the base weights
are frozen by peft, so the groups leave them unmanaged and no schedule can thaw them; the head
goes in ``modules_to_save`` so it trains. peft also freezes the norm layers; with ``norms:
true`` (the default, seed 002's "hybrid" LoRA + norm tuning) their parameters are set trainable
again right after wrapping, in place (not through ``modules_to_save``, which would copy every
norm module and rename its parameters), so ``groups: {by: kind, kinds: [lora, norm, head]}``
gives seed 002's three groups. ``norms: false`` is plain LoRA (kinds ``[lora, head]``).
peft matches a target by name suffix: ``proj`` also catches a ViT's ``patch_embed.proj``; give
a regular expression string (``'blocks\\..*\\.(qkv|proj|fc1|fc2)'``) to leave it out.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ConfigError
from .files import SEAL, unseal
from .groups import NORM_TYPES, GroupError, find_head

__all__ = ["ARGS", "Pretrained", "LoraSpec", "split_model_args", "read_state_dict", "load_checkpoint",
           "wrap_lora", "prepare"]

log = logging.getLogger("freezelab.models")

#: The ``model_args`` keys this module owns; the rest go to the model's builder.
ARGS = ("checkpoint", "reinit", "lora")
#: A freezelab run folder's checkpoint file (``freezelab.run.record.CHECKPOINT``, which this
#: layer may not import; tests/test_pretrained.py checks that the two agree).
RUN_CHECKPOINT = "checkpoint.pt"
#: Where a training checkpoint keeps the model's state dict: timm's train script, freezelab's run folder.
_STATE_KEYS = ("state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile
_SHOWN = 3  # keys named in an error


@dataclass(frozen=True)
class LoraSpec:
    """``model_args.lora``: peft's rank ``r``, ``alpha``, target module names (or a regex), dropout, norms."""

    r: int = 8
    alpha: float = 16
    targets: tuple[str, ...] | str = ("qkv", "proj", "fc1", "fc2")
    dropout: float = 0.0
    norms: bool = True  # make the base's norm layers trainable (seed 002's LoRA + norm tuning)

    @classmethod
    def from_dict(cls, spec: Any) -> LoraSpec:
        if not isinstance(spec, Mapping):
            raise ConfigError(f"model_args.lora must be a mapping such as {{r: 8, alpha: 16, targets: [qkv]}}, got {spec!r}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(spec) - set(valid))
        if unknown:
            raise ConfigError(f"unknown model_args.lora option {unknown[0]!r}; options are {valid}")
        targets = spec.get("targets", cls.targets)
        lora = cls(**{**spec, "targets": tuple(targets) if isinstance(targets, (list, tuple)) else targets})
        whole = isinstance(lora.r, int) and not isinstance(lora.r, bool)
        checks = [
            (whole and lora.r >= 1, f"r must be a whole number >= 1, got {lora.r!r}"),
            (isinstance(lora.alpha, (int, float)) and not isinstance(lora.alpha, bool) and lora.alpha > 0,
             f"alpha must be a positive number, got {lora.alpha!r}"),
            (isinstance(lora.targets, (str, tuple)) and bool(lora.targets) and all(isinstance(t, str) for t in lora.targets),
             f"targets must be module names such as [qkv, proj] or one regex string, got {targets!r}"),
            (isinstance(lora.dropout, (int, float)) and 0 <= lora.dropout < 1, f"dropout must be in [0, 1), got {lora.dropout!r}"),
            (isinstance(lora.norms, bool), f"norms must be true or false, got {lora.norms!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"model_args.lora: {message}")
        return lora


@dataclass(frozen=True)
class Pretrained:
    """What a run's ``model_args`` ask for beyond the builder: a checkpoint, modules kept at init, LoRA."""

    checkpoint: Path | None = None
    reinit: tuple[str, ...] = ()
    lora: LoraSpec | None = None

    def check(self) -> None:
        """What can be checked before building anything: the checkpoint file exists."""
        if self.checkpoint is not None:
            _checkpoint_file(self.checkpoint)


def split_model_args(model_args: Mapping[str, Any]) -> tuple[dict[str, Any], Pretrained]:
    """``model_args`` -> (the builder's keyword arguments, what this module applies after building).

    >>> split_model_args({"hidden": [8], "lora": {"r": 4}})[1].lora.r
    4
    """
    builder = {k: v for k, v in model_args.items() if k not in ARGS}
    checkpoint, reinit = model_args.get("checkpoint"), model_args.get("reinit", ())
    if checkpoint is not None and not isinstance(checkpoint, (str, Path)):
        raise ConfigError(f"model_args.checkpoint must be a file path, got {checkpoint!r}")
    if isinstance(reinit, str):
        reinit = (reinit,)
    if not isinstance(reinit, Sequence) or not all(isinstance(m, str) for m in reinit):
        raise ConfigError(f"model_args.reinit must be a list of module names such as [conv1], got {reinit!r}")
    if reinit and checkpoint is None:
        raise ConfigError("model_args.reinit names modules to keep at init when loading a checkpoint; add model_args.checkpoint")
    lora = model_args.get("lora")
    return builder, Pretrained(Path(checkpoint) if checkpoint is not None else None, tuple(reinit),
                               LoraSpec.from_dict(lora) if lora is not None else None)


def prepare(model: nn.Module, pretrained: Pretrained, *, name: str = "model",
            example_input: object | None = None) -> nn.Module:
    """``model`` with the checkpoint loaded, then wrapped in LoRA, as ``pretrained`` asks.

    ``example_input`` (a batch the model accepts) lets the head be found by tracing; ``name``
    (the registry name) makes error messages say which model did not fit.
    """
    if pretrained.checkpoint is not None:
        load_checkpoint(model, pretrained.checkpoint, reinit=pretrained.reinit, name=name, example_input=example_input)
    if pretrained.lora is not None:
        model = wrap_lora(model, pretrained.lora, example_input=example_input)
    return model


# -- checkpoints --------------------------------------------------------------------------------
def _checkpoint_file(path: Path) -> Path:
    """The file to read: ``path``, or a freezelab run folder's checkpoint; a one-line error if neither exists."""
    if path.is_dir():
        inside = path / RUN_CHECKPOINT
        if not inside.is_file():
            raise ConfigError(f"model_args.checkpoint: {path} is a folder without {RUN_CHECKPOINT}; "
                              "give a checkpoint file or a freezelab run folder that saved one")
        return inside
    if not path.is_file():
        raise ConfigError(f"model_args.checkpoint: {path} does not exist; give the path of a local "
                          ".pth/.bin/.safetensors/.npz file or of a freezelab run folder")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a ``.pth``/``.pt``/``.bin``/``.safetensors`` file or a freezelab run folder, on the CPU.

    Never unpickles code (``weights_only=True``). A training checkpoint gives its
    ``state_dict`` or ``model`` entry; ``module.`` / ``_orig_mod.`` prefixes are dropped.
    """
    file = _checkpoint_file(Path(path))
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(f"model_args.checkpoint: {file} is a .safetensors file; pip install safetensors to read it") from None
        loaded: Any = load_file(str(file), device="cpu")
    else:
        try:
            data = file.read_bytes()
            if data.startswith(SEAL):  # a freezelab run's checkpoint: checked before it is read
                try:
                    data = unseal(data)
                except ValueError as e:
                    raise ConfigError(f"model_args.checkpoint: {file} {e}; point it at a good checkpoint "
                                      "(the run folder's checkpoint.prev.pt, or rerun that run)") from None
            loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except ConfigError:
            raise
        except Exception as e:  # pickle errors of many kinds: a file we must not or cannot read
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"model_args.checkpoint: {file} is not a weights-only torch checkpoint ({first}); "
                              "save it with torch.save(model.state_dict(), path)") from None
    if isinstance(loaded, Mapping) and not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        key = next((k for k in _STATE_KEYS if isinstance(loaded.get(k), Mapping)), None)
        if key is None:
            raise ConfigError(f"model_args.checkpoint: {file} holds no state dict (keys {sorted(map(str, loaded))[:6]}); "
                              f"expected tensors by name or a {' or '.join(map(repr, _STATE_KEYS))} entry")
        loaded = loaded[key]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ConfigError(f"model_args.checkpoint: {file} holds a {type(loaded).__name__}, not a state dict of tensors")
    state = dict(loaded)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _under(key: str, modules: Sequence[str]) -> bool:
    return any(m == "" or key == m or key.startswith(m + ".") for m in modules)


def load_checkpoint(model: nn.Module, path: str | Path, *, reinit: Sequence[str] = (), name: str = "model",
                    example_input: object | None = None) -> list[str]:
    """Load a local checkpoint into ``model`` as fine-tuning needs; return the keys kept at their init.

    Head tensors of another shape (or absent), and everything under the modules in ``reinit``,
    keep the model's fresh initialisation (one log line says which); any other difference is a
    :class:`ConfigError`. timm ``.npz`` files go through timm, which skips a head of another
    size itself.

    >>> import torch.nn as nn                                           # doctest: +SKIP
    >>> torch.save(nn.Linear(4, 3).state_dict(), "w.pth")               # doctest: +SKIP
    >>> load_checkpoint(nn.Linear(4, 2), "w.pth")                       # doctest: +SKIP
    ['weight', 'bias']
    """
    file = _checkpoint_file(Path(path))
    unknown = [m for m in reinit if m not in dict(model.named_modules())]
    if unknown:
        raise ConfigError(f"model_args.reinit names {unknown[0]!r}, which is no module of {name!r} "
                          f"(its top-level modules: {[n for n, _ in model.named_children()][:8]})")
    if file.suffix in (".npz", ".npy"):
        return _load_npz(model, file, name)
    state = read_state_dict(file)
    own = model.state_dict()
    try:
        head = find_head(model, example_input)
    except GroupError:
        head = None  # a model without parameters has no head; every tensor then must fit
    fresh = [*reinit, *([head] if head is not None else [])]
    kept = [k for k in state if _under(k, reinit)]
    misshapen = [k for k in state if k in own and k not in kept and state[k].shape != own[k].shape]
    kept += [k for k in misshapen if _under(k, fresh)]
    loadable = {k: v for k, v in state.items() if k not in kept and k not in misshapen}
    result = model.load_state_dict(loadable, strict=False)
    missing = [k for k in result.missing_keys if not _under(k, fresh)]
    kept += [k for k in result.missing_keys if _under(k, fresh) and k not in kept]
    problems = ([f"shape of {k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                 for k in misshapen if k not in kept]
                + [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in result.unexpected_keys])
    if problems:
        raise ConfigError(
            f"model_args.checkpoint: {file} does not fit model {name!r} ({len(problems)} mismatches: "
            f"{'; '.join(problems[:_SHOWN])}{' ...' if len(problems) > _SHOWN else ''}); use the model it was "
            "trained as, or list the modules to keep at their init in model_args.reinit"
        )
    log.info("model_args.checkpoint: loaded %d tensors from %s%s", len(state) - len(kept), file,
             f"; kept at their fresh init (another shape, absent, or in reinit): {', '.join(kept)}" if kept else "")
    return kept


def _load_npz(model: nn.Module, file: Path, name: str) -> list[str]:
    """timm's ``.npz`` (big_vision / JAX) weights through timm, which maps the names itself."""
    if not hasattr(model, "load_pretrained"):
        raise ConfigError(f"model_args.checkpoint: {file} is a numpy checkpoint, which only timm models with "
                          f"load_pretrained (ViTs) read; model {name!r} has none: convert it to a .pth state dict")
    import numpy as np
    from timm.models import load_checkpoint as timm_load_checkpoint

    try:
        timm_load_checkpoint(model, str(file))
    except Exception as e:  # timm raises KeyError/RuntimeError on weights of another architecture
        raise ConfigError(f"model_args.checkpoint: {file} does not fit model {name!r} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); use the model it was trained as") from None
    head = getattr(model, "head", None)
    with np.load(file) as weights:
        saved = next((weights[k].shape[-1] for k in weights.files if k.endswith("head/bias")), None)
    kept = ["head.weight", "head.bias"] if isinstance(head, nn.Linear) and saved != head.out_features else []
    log.info("model_args.checkpoint: loaded %s through timm%s", file,
             f"; the head (its {saved} classes in the file) kept its fresh init" if kept else "")
    return kept


# -- LoRA ---------------------------------------------------------------------------------------
def wrap_lora(model: nn.Module, spec: LoraSpec, *, example_input: object | None = None) -> nn.Module:
    """``model`` wrapped by peft's LoRA as the module doc says: base frozen, head saved, norms trainable.

    ``hidden_activation_names`` follow the wrapped names (peft puts the model under ``base_model.model``).
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ImportError("model_args.lora needs peft: pip install peft (or pip install 'freezelab[vision]')") from error
    head = find_head(model, example_input)
    targets = spec.targets if isinstance(spec.targets, str) else list(spec.targets)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, target_modules=targets, lora_dropout=spec.dropout,
                        modules_to_save=[head])
    hidden = getattr(model, "hidden_activation_names", [])
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as e:  # peft: "Target modules ... not found in the base model"
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"model_args.lora.targets {targets!r} do not fit {type(model).__name__} ({first}); "
                          "name its Linear/Conv modules, e.g. [qkv, proj, fc1, fc2] for a timm ViT") from None
    if spec.norms:
        for module in wrapped.modules():
            if isinstance(module, NORM_TYPES):
                for p in module.parameters(recurse=False):
                    p.requires_grad_(True)
    wrapped.hidden_activation_names = [f"base_model.model.{n}" for n in hidden]
    return wrapped
