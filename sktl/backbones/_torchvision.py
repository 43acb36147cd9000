"""torchvision classification models as backbones.

``weights`` follows torchvision: ``"DEFAULT"`` or an enum member name
(``"IMAGENET1K_V1"``) goes through torchvision's normal download and cache
(``$TORCH_HOME/hub/checkpoints``); a path loads a local checkpoint; ``None``
initialises randomly.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from torch import nn

from ._base import Backbone, default_blocks
from ._inputs import ImagePreprocessor
from ._weights import WeightsUnavailableError, load_state_dict_file

__all__ = [
    "is_torchvision_name",
    "load_torchvision",
    "pretrained_transform",
    "torchvision_names",
]


@lru_cache(maxsize=1)
def torchvision_names():
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def is_torchvision_name(name):
    return isinstance(name, str) and name in torchvision_names()


def _resolve_enum(name, weights):
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    if weights == "DEFAULT":
        return enum.DEFAULT
    key = weights.split(".")[-1]
    try:
        return enum[key]
    except KeyError:
        valid = ["DEFAULT", *enum.__members__]
        raise ValueError(
            f"weights={weights!r} is neither a file nor a weights name of "
            f"{name}; valid names are {valid}, a checkpoint path, or None."
        ) from None


def pretrained_transform(weights_name):
    """The preprocessing of a torchvision weights enum, e.g.
    ``"ResNet18_Weights.IMAGENET1K_V1"`` (metadata only: nothing is downloaded)."""
    import torchvision

    return torchvision.models.get_weight(weights_name).transforms()


def _build(name, weights):
    """The full torchvision model, its weights' transform, and their name."""
    import torchvision

    builder = torchvision.models.get_model_builder(name)
    if weights is None:
        return builder(weights=None), None, None
    if isinstance(weights, (os.PathLike, str)) and Path(weights).is_file():
        # A local copy of pretrained weights: same preprocessing as the
        # downloaded ones (transforms are metadata, nothing is fetched).
        model = builder(weights=None)
        model.load_state_dict(load_state_dict_file(weights))
        default = torchvision.models.get_model_weights(name).DEFAULT
        return model, default.transforms(), str(default)
    enum_member = _resolve_enum(name, weights)
    try:
        model = builder(weights=enum_member)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise WeightsUnavailableError(
            f"Could not load {name} weights {enum_member} ({exc}). They are "
            f"downloaded once to {_cache_dir()}; when offline, copy the file "
            f"{Path(enum_member.url).name} there, or pass weights=<path to a "
            "local checkpoint>, or weights=None for random initialisation."
        ) from exc
    return model, enum_member.transforms(), str(enum_member)


def _cache_dir():
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _cut_head(model):
    """Replace the final classification ``nn.Linear`` by ``nn.Identity``."""
    last = None
    for qualname, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = qualname
    if last is None:
        raise ValueError(f"{type(model).__name__} has no linear classification "
                         "head to replace; it is not supported as a backbone.")
    n_features = model.get_submodule(last).in_features
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Identity())
    return n_features


def _has_params(mod):
    return any(True for _ in mod.parameters())


def _blocks(model):
    """Ordered stages of the common torchvision families."""
    if hasattr(model, "layer4"):  # ResNet, ResNeXt, Wide ResNet
        stem = [getattr(model, n) for n in ("conv1", "bn1") if hasattr(model, n)]
        blocks = [("stem", stem)]
        blocks += [(n, [getattr(model, n)]) for n in ("layer1", "layer2", "layer3", "layer4")]
        return blocks
    if hasattr(model, "encoder") and hasattr(model, "conv_proj"):  # ViT
        blocks = [("conv_proj", [model.conv_proj])]
        blocks += [(f"encoder.layers.{n}", [m])
                   for n, m in model.encoder.layers.named_children()]
        blocks.append(("encoder.ln", [model.encoder.ln]))
        return blocks
    if hasattr(model, "features"):  # VGG, AlexNet, MobileNet, EfficientNet, ConvNeXt, ...
        blocks = [(f"features.{n}", [m]) for n, m in model.features.named_children()
                  if _has_params(m)]
        for tail in ("norm", "classifier"):
            mod = getattr(model, tail, None)
            if isinstance(mod, nn.Module) and _has_params(mod):
                blocks.append((tail, [mod]))
        return blocks
    # Auxiliary classifiers (GoogLeNet, Inception) never run at inference.
    return [(n, m) for n, m in default_blocks(model) if not n.lower().startswith("aux")]


def load_torchvision(name, weights="DEFAULT"):
    """Build torchvision model ``name`` without its head, as a :class:`Backbone`."""
    model, transform, weights_name = _build(name, weights)
    n_features = _cut_head(model)
    return Backbone(
        module=model,
        blocks=_blocks(model),
        preprocess=ImagePreprocessor(transform=transform, channels=3),
        input_kind="image",
        spec={"kind": "torchvision", "name": name, "transform": weights_name},
        n_features=n_features,
    )
