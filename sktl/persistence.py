"""A safe save format: weights in safetensors, everything else in JSON.

``pickle``/``joblib`` remain the most complete way to store an estimator, but
loading a pickle can execute arbitrary code. :func:`save` writes a folder
that :func:`load` reads without unpickling anything:

* ``config.json``: estimator class, its parameters, the backbone recipe
  (torchvision name and weights' preprocessing, sentence-transformers name
  or folder, or the import path of an ``nn.Module`` class), fitted attributes;
* ``model.safetensors``: every weight and buffer.
"""

from __future__ import annotations

import json
from numbers import Integral
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, load_model, save_model
from sklearn.utils.validation import check_is_fitted

from . import __version__
from ._contrastive import normalized_head
from ._inference import resolve_device
from ._training import TransferModule, freeze, make_head
from .backbones import import_qualname, rebuild_backbone

__all__ = ["load", "save"]

_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"
# Fitted attributes stored in JSON, per estimator; arrays keep their dtype.
_FITTED = ("classes_", "n_features_in_", "feature_names_in_", "n_blocks_",
           "n_features_out_", "block_names_", "_y_mean", "_y_scale", "_y_1d",
           "_float32_frozen_blocks")


def _estimator_classes():
    from .classifier import TransferClassifier
    from .features import FeatureExtractor
    from .regressor import TransferRegressor

    return {c.__name__: c for c in (TransferClassifier, TransferRegressor, FeatureExtractor)}


def _jsonable_params(estimator):
    params = {}
    original = estimator.get_params(deep=False)
    for key, value in original.items():
        if key == "backbone":
            continue  # replaced by the backbone recipe
        if key == "weights":
            # Refitting a loaded model starts from the same weights when
            # they have a name; a fitted source or file is not carried over.
            named = value is None or (isinstance(value, str) and not Path(value).exists())
            from_source = hasattr(original["backbone"], "backbone_")
            params[key] = value if named and not from_source else None
            continue
        if key == "accelerator":
            # The process's distributed state: a loaded model trains in one
            # process unless given an accelerator again.
            params[key] = None
            continue
        if key == "random_state":  # a seed is kept (numpy ints too); a RandomState is not
            value = int(value) if isinstance(value, Integral) else None
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise TypeError(
                f"{key}={value!r} cannot be stored in the safe format (JSON); use "
                "a string option, or pickle/joblib for this model."
            )
        params[key] = value
    return params


def _encode(value):
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value):
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    return value


def save(estimator, path):
    """Save a fitted sktl estimator to the folder ``path`` (safe format).

    Parameters
    ----------
    estimator : TransferClassifier, TransferRegressor or FeatureExtractor
        A fitted estimator whose backbone can be rebuilt from its recipe and
        whose parameters are JSON values (no callables).
    path : str or os.PathLike
        Folder to create (or overwrite files in).

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> import sktl
    >>> from sktl import TransferClassifier
    >>> X = np.random.RandomState(0).rand(20, 3, 16, 16).astype("float32")
    >>> y = np.arange(20) % 2
    >>> clf = TransferClassifier("resnet18", weights=None, max_epochs=1,
    ...                          random_state=0).fit(X, y)
    >>> folder = tempfile.mkdtemp()
    >>> sktl.save(clf, folder)
    >>> same = sktl.load(folder)
    >>> bool((same.predict_proba(X) == clf.predict_proba(X)).all())
    True
    """
    check_is_fitted(estimator)
    name = type(estimator).__name__
    if name not in _estimator_classes():
        raise TypeError(f"sktl.save handles sktl estimators, not {name}.")
    spec = estimator.backbone_.spec
    if spec.get("kind") == "module" and spec.get("instance"):
        raise TypeError(
            "The backbone was passed as a module instance, whose constructor "
            "arguments are unknown; pass the class (backbone=MyNet) to use the "
            "safe format, or store this model with pickle/joblib."
        )
    if spec.get("kind") == "module" and spec.get("class", "").startswith("__main__:"):
        raise TypeError("The backbone class is defined in __main__; move it to an "
                        "importable module so that sktl.load can rebuild it.")
    head = getattr(estimator, "module_", None)
    config = {
        "sktl_version": __version__,
        "estimator": name,
        "params": _jsonable_params(estimator),
        "backbone": estimator.backbone_.spec,
        "n_features": estimator.backbone_.n_features,
        "n_outputs": None if head is None else _n_outputs(estimator),
        "fitted": {k: _encode(getattr(estimator, k)) for k in _FITTED
                   if hasattr(estimator, k)},
    }
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _CONFIG).write_text(json.dumps(config, indent=2))
    module = estimator.module_ if head is not None else estimator.backbone_.module
    with estimator._model_lock():
        save_model(module, str(folder / _WEIGHTS))


def _n_outputs(estimator):
    if hasattr(estimator, "classes_"):
        return len(estimator.classes_)
    return len(estimator._y_mean)


def load(path, *, device="auto"):
    """Load an estimator written by :func:`save`; nothing is unpickled.

    Parameters
    ----------
    path : str or os.PathLike
        Folder written by :func:`save`.
    device : str, default="auto"
        Where to put the model.

    Returns
    -------
    estimator
        A fitted TransferClassifier, TransferRegressor or FeatureExtractor.
    """
    folder = Path(path)
    config = json.loads((folder / _CONFIG).read_text())
    cls = _estimator_classes()[config["estimator"]]
    spec = config["backbone"]
    backbone = rebuild_backbone(spec)
    backbone.n_features = config["n_features"]
    estimator = cls(backbone=_backbone_param(spec), **config["params"])
    for key, value in config["fitted"].items():
        setattr(estimator, key, _decode(value))
    device = resolve_device(device)
    if config["n_outputs"] is None:  # FeatureExtractor
        _load_weights(backbone.module, folder / _WEIGHTS)
        backbone.module.requires_grad_(False).eval().to(device)
        estimator.backbone_ = backbone
        estimator.extractor_ = estimator._extraction_module(backbone)
        estimator._extraction_key = estimator._cache_key(backbone)
    else:
        head = make_head(estimator.head, backbone.n_features, config["n_outputs"])
        if getattr(estimator, "strategy", None) == "contrastive":
            head = normalized_head(head)
        module = TransferModule(backbone.module, head)
        _load_weights(module, folder / _WEIGHTS)
        # Freeze after loading: lazy modules only have parameters by now.
        module.__dict__["trainable_blocks"] = freeze(backbone, estimator.unfreeze)
        estimator.backbone_ = backbone
        estimator.module_ = module.to(device).eval()
    estimator.device_ = device
    return estimator


def _load_weights(module, path):
    # A first non-strict load gives lazy modules their shapes; load_model
    # then checks every key strictly and restores tied (shared) tensors.
    module.load_state_dict(load_file(str(path)), strict=False)
    load_model(module, str(path))


def _backbone_param(spec):
    """What ``backbone=`` becomes after loading: the recipe's name or class."""
    if spec["kind"] == "module":
        return import_qualname(spec["class"])
    return spec["name"]
