"""Resolve a ``backbone`` parameter into a :class:`Backbone`.

Accepted values, checked in this order:

* a fitted sktl estimator (its trained backbone is the starting point:
  "pretrain on the source, then fine-tune on the target"), optionally
  wrapped in ``sklearn.frozen.FrozenEstimator`` to grid-search over sources;
* a ``torch.nn.Module`` class (instantiated without arguments) or instance
  (deep-copied: the object the user passed is never trained or mutated); a
  ``SentenceTransformer`` instance (e.g. from :func:`truncate_sentence_encoder`)
  reads texts like a named encoder;
* a torchvision classification model name (``"resnet18"``, ``"vit_b_16"``);
* a sentence-transformers model folder or hub name (``"org/name"``).

Nothing outside this package needs to know how a ResNet or a BERT encoder
is laid out.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict

import torch
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ..exceptions import SaveFormatError
from ._base import Backbone, call_module, default_blocks, pool_features, to_device
from ._inputs import (
    ArrayPreprocessor,
    ImagePreprocessor,
    n_samples,
    take,
    validate_images,
    validate_texts,
)
from ._sentence_transformers import (
    is_sentence_transformer,
    load_sentence_transformer,
    looks_like_sentence_transformer,
    rebuild_truncated,
    sentence_transformer_backbone,
    truncate_sentence_encoder,
)
from ._split import Split, TokenSplit
from ._torchvision import is_torchvision_name, load_torchvision, pretrained_transform
from ._trust import TRUSTED_PACKAGES, check_trusted, resolve_class
from ._weights import WeightsUnavailableError, load_state_dict_file

__all__ = [
    "TRUSTED_PACKAGES",
    "Backbone",
    "Split",
    "TokenSplit",
    "WeightsUnavailableError",
    "backbone_param",
    "call_module",
    "check_trusted",
    "is_fitted_sktl_estimator",
    "load_state_dict_file",
    "n_samples",
    "pool_features",
    "rebuild_backbone",
    "resolve_backbone",
    "resolve_class",
    "shared_backbone",
    "take",
    "to_device",
    "truncate_sentence_encoder",
    "validate_images",
    "validate_texts",
]


def is_fitted_sktl_estimator(value):
    return hasattr(value, "__sktl_backbone__") and hasattr(value, "backbone_")


def _is_fitted(estimator):
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    return True


def _reset_parameters(module):
    for m in module.modules():  # the root too: backbone=nn.Linear(...) is one layer
        if hasattr(m, "reset_parameters"):
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
    spec = {"kind": "module", "class": f"{cls.__module__}:{cls.__qualname__}", **cls_spec}
    if is_sentence_transformer(module):  # e.g. truncate_sentence_encoder(...): texts in
        # A truncated encoder keeps its recipe: a save rebuilds it by name.
        recipe = getattr(module, "_sktl_recipe", None)
        return sentence_transformer_backbone(module, dict(recipe) if recipe else spec)
    return Backbone(
        module=module,
        blocks=default_blocks(module),
        preprocess=ArrayPreprocessor(),
        input_kind="array",
        spec=spec,
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
        ``None`` re-initialises them. Sentence-transformers encoders and
        fitted sktl estimators accept ``"DEFAULT"`` (their weights) or a
        state-dict path.

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
    if isinstance(backbone, FrozenEstimator):
        # sklearn.frozen.FrozenEstimator(source): clone() returns it as is,
        # which lets a grid search range over several fitted sources.
        backbone = backbone.estimator
    if is_fitted_sktl_estimator(backbone):
        if weights is None:
            raise ValueError(
                f"weights=None would discard what backbone={type(backbone).__name__}"
                "(...) learned (random initialisation). Leave weights='DEFAULT' to "
                "start from its fitted weights, or pass a checkpoint path."
            )
        resolved = backbone.backbone_.copy()
        if weights != "DEFAULT":
            resolved.module.load_state_dict(load_state_dict_file(weights))
        return resolved
    if hasattr(backbone, "__sktl_backbone__"):
        if _is_fitted(backbone):  # fitted, yet without a backbone_: a detector
            raise TypeError(
                f"backbone={type(backbone).__name__}(...) holds no feature backbone "
                "to reuse; a fitted TransferClassifier, TransferRegressor or "
                "FeatureExtractor can be passed as backbone=."
            )
        raise ValueError(
            f"backbone={type(backbone).__name__}(...) is not fitted. Fit it on "
            "the source data first (source.fit(X_source, y_source)), then pass "
            "it as backbone= to fine-tune on the target."
        )
    if isinstance(backbone, nn.Module) or (
        isinstance(backbone, type) and issubclass(backbone, nn.Module)
    ):
        return _from_module(backbone, weights)
    key = _source_key(backbone, weights)
    if key is not None:
        resolved = _loaded(key, "cpu", lambda: _load_named(backbone, weights)).copy()
        # The kept model may have been handed out frozen (shared_backbone): a
        # copy to train is trainable, as a fresh load is.
        resolved.module.requires_grad_(True)
        return resolved
    if is_torchvision_name(backbone) or looks_like_sentence_transformer(backbone):
        return _load_named(backbone, weights)
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


def _load_named(backbone, weights):
    if is_torchvision_name(backbone):
        return load_torchvision(backbone, weights)
    resolved = load_sentence_transformer(backbone)
    if weights is None:
        raise ValueError("weights=None (random initialisation) is not "
                         "supported for sentence-transformers encoders.")
    if weights != "DEFAULT":
        resolved.module.load_state_dict(load_state_dict_file(weights))
    return resolved


# Pretrained models loaded from a name or a folder, kept for the next fit:
# a grid search clones and fits its FeatureExtractor once per fold and
# candidate, and loading (plus hashing the weights for the feature cache)
# would otherwise cost more than reading the cached features. Two entries
# bound the memory held; random initialisations are never kept.
_LOADED = OrderedDict()
_LOADED_MAX = 2
_LOAD_LOCK = threading.RLock()


def _file_identity(path):
    """Path, size and modification time of a file, or of every file in a
    folder: a rewritten checkpoint is a new source."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path):
        stat = os.stat(path)
        return (path, stat.st_size, stat.st_mtime_ns)
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            stat = os.stat(os.path.join(root, name))
            entries.append((os.path.relpath(os.path.join(root, name), path),
                            stat.st_size, stat.st_mtime_ns))
    return (path, tuple(sorted(entries)))


def _source_key(backbone, weights):
    """What determines a named pretrained backbone's weights, or ``None``
    when it cannot be reused (random initialisation, modules, estimators)."""
    if weights is None or not isinstance(backbone, (str, os.PathLike)):
        return None
    if isinstance(weights, os.PathLike) or (isinstance(weights, str)
                                            and os.path.isfile(weights)):
        weights = _file_identity(weights)
    elif not isinstance(weights, str):
        return None
    if is_torchvision_name(backbone):
        return ("torchvision", backbone, weights, _checkpoint_identity(backbone, weights))
    if looks_like_sentence_transformer(backbone):
        where = _file_identity(backbone) if os.path.isdir(backbone) else os.fspath(backbone)
        return ("sentence_transformers", where, weights)
    return None


def _checkpoint_identity(name, weights):
    """The downloaded file behind a torchvision weights name (``$TORCH_HOME``
    may change, the file may appear or be replaced)."""
    if isinstance(weights, tuple):  # a local file, identified already
        return None
    from ._torchvision import _cache_dir, _resolve_enum

    try:
        url = _resolve_enum(name, weights).url
    except ValueError:  # reported by the real load
        return None
    path = _cache_dir() / os.path.basename(url)
    return _file_identity(path) if path.is_file() else (os.fspath(path), None)


def _loaded(key, device, load):
    with _LOAD_LOCK:
        entry = _LOADED.get((key, device))
        if entry is None:
            if device == "cpu":
                # Building a model draws random initial weights before the
                # pretrained ones replace them; isolated so that a fit's
                # random stream (head, shuffling) is the same whether or
                # not the model was loaded already.
                with torch.random.fork_rng(devices=[]):
                    entry = load()
            else:
                entry = _loaded(key, "cpu", load).copy()
                entry.module.to(device)
            _LOADED[(key, device)] = entry
            while len(_LOADED) > _LOADED_MAX:
                _LOADED.popitem(last=False)
        _LOADED.move_to_end((key, device))
        return entry


def shared_backbone(backbone, weights="DEFAULT", device="cpu"):
    """Like :func:`resolve_backbone`, for inference only: a named pretrained
    model is loaded once per process and device and the same
    :class:`Backbone` is returned to every caller, who must not modify it
    (:class:`~sktl.FeatureExtractor` uses it frozen, in eval mode).
    Other values resolve to a fresh backbone moved to ``device``."""
    key = _source_key(backbone, weights)
    if key is None:
        resolved = resolve_backbone(backbone, weights)
        resolved.module.to(device)
        return resolved
    resolved = _loaded(key, device, lambda: _load_named(backbone, weights))
    resolved.module.eval().requires_grad_(False)
    return resolved


_SPEC_KEYS = {"torchvision": {"kind", "name", "transform"},
              "sentence_transformers": {"kind", "name"},
              "module": {"kind", "class", "instance"}}
#: Keys a spec may have besides its kind's: the layers a truncated
#: sentence encoder keeps (truncate_sentence_encoder).
_OPTIONAL_KEYS = {"sentence_transformers": {"layers"}}


def _check_spec(spec):
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind not in _SPEC_KEYS or not (
            _SPEC_KEYS[kind] <= set(spec) <= _SPEC_KEYS[kind] | _OPTIONAL_KEYS.get(kind, set())):
        raise SaveFormatError(
            f"Cannot rebuild a backbone from spec {spec!r}: expected the keys "
            f"{sorted(_SPEC_KEYS.get(kind, {'kind'}))} of one of the kinds {sorted(_SPEC_KEYS)}.")
    if kind == "module" and spec["instance"] is not False:
        raise SaveFormatError("A module backbone saved as an instance cannot be rebuilt: "
                              "its constructor arguments are unknown.")
    if not isinstance(spec.get("name", ""), str):
        raise SaveFormatError(f"The backbone name {spec['name']!r} is not a string.")
    layers = spec.get("layers", 1)
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise SaveFormatError(f"The backbone's layers {layers!r} is not a positive integer.")
    if kind == "torchvision":
        import torchvision

        if not is_torchvision_name(spec["name"]):
            raise SaveFormatError(f"{spec['name']!r} is not a torchvision classification "
                                  "model of this torchvision version.")
        known = {str(w) for w in torchvision.models.get_model_weights(spec["name"])}
        if spec["transform"] is not None and spec["transform"] not in known:
            raise SaveFormatError(f"{spec['transform']!r} is not a weights name of "
                                  f"{spec['name']}; known: {sorted(known)}.")


def backbone_param(spec, trusted=()):
    """What ``backbone=`` becomes for a saved spec: its name, or for a module
    backbone its class (see :func:`~sktl.backbones._trust.resolve_class`)."""
    _check_spec(spec)
    if spec["kind"] == "module":
        return resolve_class(spec["class"], check_trusted(trusted), where="The saved backbone")
    return spec["name"]


def rebuild_backbone(spec, trusted=()):
    """The architecture and preprocessing described by ``Backbone.spec``,
    without pretrained weights (the caller loads saved ones into it).

    Used by :func:`sktl.load`: torchvision models are rebuilt from their
    name, sentence-transformers encoders from their folder or hub name
    (after checking the module types its ``modules.json`` names), and module
    backbones by calling their class without arguments. A class outside
    :data:`~sktl.backbones._trust.TRUSTED_PACKAGES` must be one of
    ``trusted``; nothing else is imported.
    """
    trusted = check_trusted(trusted)
    _check_spec(spec)
    kind = spec["kind"]
    if kind == "torchvision":
        backbone = load_torchvision(spec["name"], weights=None)
        if spec.get("transform"):
            backbone.preprocess = ImagePreprocessor(
                transform=pretrained_transform(spec["transform"]), channels=3)
        backbone.spec = dict(spec)
        return backbone
    if kind == "sentence_transformers":
        if "layers" in spec:
            return rebuild_truncated(spec["name"], spec["layers"], trusted)
        return load_sentence_transformer(spec["name"], trusted=trusted)
    return _from_module(backbone_param(spec, trusted), "DEFAULT")
