"""Resolve a ``backbone`` parameter into a :class:`Backbone`.

Accepted values, checked in this order:

* a fitted sktl estimator (its trained backbone is the starting point:
  "pretrain on the source, then fine-tune on the target"), optionally
  wrapped in ``sklearn.frozen.FrozenEstimator`` to grid-search over sources;
* a ``torch.nn.Module`` class (instantiated without arguments) or instance
  (deep-copied: the object the user passed is never trained or mutated);
* a torchvision classification model name (``"resnet18"``, ``"vit_b_16"``);
* a sentence-transformers model folder or hub name (``"org/name"``).

Nothing outside this package needs to know how a ResNet or a BERT encoder
is laid out.
"""

from __future__ import annotations

import copy
import os

from torch import nn

from ._base import Backbone, default_blocks, pool_features
from ._inputs import ArrayPreprocessor, ImagePreprocessor
from ._sentence_transformers import load_sentence_transformer, looks_like_sentence_transformer
from ._torchvision import is_torchvision_name, load_torchvision, pretrained_transform
from ._weights import WeightsUnavailableError, load_state_dict_file

__all__ = [
    "Backbone",
    "WeightsUnavailableError",
    "import_qualname",
    "pool_features",
    "rebuild_backbone",
    "is_fitted_sktl_estimator",
    "resolve_backbone",
]


def is_fitted_sktl_estimator(value):
    return hasattr(value, "__sktl_backbone__") and hasattr(value, "backbone_")


def _reset_parameters(module):
    for m in module.modules():
        if hasattr(m, "reset_parameters") and m is not module:
            m.reset_parameters()


def _from_module(module, weights):
    if isinstance(module, type):
        try:
            module = module()
        except TypeError as exc:
            raise TypeError(
                f"backbone={module.__name__} is a class that cannot be built "
                f"without arguments ({exc}); pass an instance instead."
            ) from exc
        cls_spec = {"instance": False}
    else:
        module = copy.deepcopy(module)
        cls_spec = {"instance": True}
    if weights is None:
        _reset_parameters(module)
    elif weights != "DEFAULT":
        module.load_state_dict(load_state_dict_file(weights))
    cls = type(module)
    return Backbone(
        module=module,
        blocks=default_blocks(module),
        preprocess=ArrayPreprocessor(),
        input_kind="array",
        spec={"kind": "module", "class": f"{cls.__module__}:{cls.__qualname__}",
              **cls_spec},
    )


def resolve_backbone(backbone, weights="DEFAULT"):
    """Build a fresh :class:`Backbone` for the value of a ``backbone`` parameter.

    Parameters
    ----------
    backbone : str, os.PathLike, torch.nn.Module, type or fitted sktl estimator
        See the module docstring for the accepted values.
    weights : str, os.PathLike or None, default="DEFAULT"
        For torchvision names: ``"DEFAULT"``, an enum member name, a local
        checkpoint, or ``None`` (random initialisation). For modules:
        ``"DEFAULT"`` keeps their weights, a path loads a state dict and
        ``None`` re-initialises them. Sentence-transformers encoders accept
        ``"DEFAULT"`` or a state-dict path.

    Returns
    -------
    Backbone
        Owns its module: training it never touches ``backbone``.

    Examples
    --------
    >>> from sktl.backbones import resolve_backbone
    >>> bb = resolve_backbone("resnet18", weights=None)
    >>> bb.block_names
    ['stem', 'layer1', 'layer2', 'layer3', 'layer4']
    >>> bb.n_features
    512
    """
    if type(backbone).__name__ == "FrozenEstimator":
        # sklearn.frozen.FrozenEstimator(source): clone() returns it as is,
        # which lets a grid search range over several fitted sources.
        backbone = backbone.estimator
    if is_fitted_sktl_estimator(backbone):
        resolved = copy.deepcopy(backbone.backbone_)
        if weights not in ("DEFAULT", None):
            resolved.module.load_state_dict(load_state_dict_file(weights))
        return resolved
    if hasattr(backbone, "__sktl_backbone__"):
        raise ValueError(
            f"backbone={type(backbone).__name__}(...) is not fitted. Fit it on "
            "the source data first (source.fit(X_source, y_source)), then pass "
            "it as backbone= to fine-tune on the target."
        )
    if isinstance(backbone, nn.Module) or (
        isinstance(backbone, type) and issubclass(backbone, nn.Module)
    ):
        return _from_module(backbone, weights)
    if is_torchvision_name(backbone):
        return load_torchvision(backbone, weights)
    if looks_like_sentence_transformer(backbone):
        resolved = load_sentence_transformer(backbone)
        if weights is None:
            raise ValueError("weights=None (random initialisation) is not "
                             "supported for sentence-transformers encoders.")
        if weights != "DEFAULT":
            resolved.module.load_state_dict(load_state_dict_file(weights))
        return resolved
    if isinstance(backbone, (str, os.PathLike)):
        raise ValueError(
            f"Unknown backbone {str(backbone)!r}: it is not a torchvision model "
            "name (e.g. 'resnet18', 'mobilenet_v3_small', 'vit_b_16'; see "
            "torchvision.models.list_models()), not a local model folder, and "
            "not a Hugging Face name of the form 'org/name'."
        )
    raise TypeError(
        f"backbone must be a model name, a folder, a torch.nn.Module or a fitted "
        f"sktl estimator; got {type(backbone).__name__}."
    )


def import_qualname(path):
    """The ``nn.Module`` class at ``"package.module:Qual.Name"`` (imports it)."""
    import importlib

    module_name, _, qualname = path.partition(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise TypeError(f"{path} is not a torch.nn.Module class.")
    return obj


def rebuild_backbone(spec):
    """The architecture and preprocessing described by ``Backbone.spec``,
    without pretrained weights (the caller loads saved ones into it).

    Used by :func:`sktl.load`: torchvision models are rebuilt from their
    name, sentence-transformers encoders from their folder or hub name, and
    module backbones by importing their class and calling it without
    arguments.
    """
    kind = spec.get("kind")
    if kind == "torchvision":
        backbone = load_torchvision(spec["name"], weights=None)
        if spec.get("transform"):
            backbone.preprocess = ImagePreprocessor(
                transform=pretrained_transform(spec["transform"]), channels=3)
        backbone.spec = dict(spec)
        return backbone
    if kind == "sentence_transformers":
        return load_sentence_transformer(spec["name"])
    if kind == "module":
        return _from_module(import_qualname(spec["class"]), "DEFAULT")
    raise ValueError(f"Cannot rebuild a backbone from spec {spec!r}.")
