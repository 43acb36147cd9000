"""A safe save format: weights in safetensors, everything else in JSON.

``pickle``/``joblib`` remain the most complete way to store an estimator, but
loading a pickle can execute arbitrary code. :func:`save` writes a folder
that :func:`load` reads without unpickling anything:

* ``config.json``: format version, estimator class, its parameters, the
  backbone recipe (torchvision name and weights' preprocessing,
  sentence-transformers name or folder, or the import path of an
  ``nn.Module`` class), fitted attributes, and the sha256 of every other
  file of the save;
* ``model-<sha256 prefix>.safetensors``: every weight and buffer.

What :func:`load` promises:

* no code runs that the caller did not choose: classes are built only from
  sktl, torch, torchvision and sentence-transformers
  (:data:`sktl.backbones.TRUSTED_PACKAGES`), or passed by the caller in
  ``trusted=``; a module a folder names is never imported to find out what
  it is (:class:`~sktl.exceptions.UntrustedTypeError`);
* never a silently different model: each file must match its sha256
  (:class:`~sktl.exceptions.SaveIntegrityError`). The hashes catch accidents
  (partial writes, bad copies, files mixed from two saves), not an attacker
  who can edit ``config.json`` as well;
* :func:`save` replaces a previous save atomically: the weights go to a new
  file named after their hash, ``config.json`` is replaced last, and only
  then are the previous save's weights removed. Killed at any moment, the
  folder holds the previous save or the new one.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import secrets
from numbers import Integral
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, load_model, save_model
from sklearn.utils.validation import check_is_fitted

from . import __version__
from ._engine import resolve_device
from .backbones import check_trusted, resolve_class
from .exceptions import SaveFormatError, SaveIntegrityError

__all__ = ["load", "save"]

_FORMAT = 1  # load reads this version only
_SAVED_BY = "sktl.save"  # marks a config.json as sktl's
_CONFIG = "config.json"
_KEYS = {"saved_by", "format", "sktl_version", "estimator", "params", "backbone",
         "n_features", "n_outputs", "fitted", "weights", "files"}
# The files sktl.save owns in a folder (besides config.json): the only ones
# it ever removes. "model.safetensors" is the weights of format-less saves.
_DATA = re.compile(r"model-[0-9a-f]{16}\.safetensors")
_LEGACY_DATA = "model.safetensors"
_TMP_PREFIX, _TMP_SUFFIX = ".sktl-", ".tmp"
#: Parameters that only matter while training: a value JSON cannot hold (a
#: criterion object, callbacks, an augmentation, an optimizer class, a
#: class-weight dict) is saved as the parameter's default; refitting a loaded
#: model needs them given again.
_TRAINING_ONLY = ("criterion", "callbacks", "augment", "early_stopping", "class_weight",
                  "optimizer")


def _estimator_classes():
    """The estimators :func:`save` writes and :func:`load` builds: sktl's own,
    each of which implements the safe-state hooks of
    :class:`~sktl._base.BackboneEstimatorMixin`."""
    from .classifier import TransferClassifier
    from .detection import TransferDetector
    from .features import FeatureExtractor
    from .fewshot import ContrastiveClassifier
    from .regressor import TransferRegressor

    return {c.__name__: c for c in (TransferClassifier, TransferRegressor,
                                    ContrastiveClassifier, FeatureExtractor,
                                    TransferDetector)}


def _plain(value):
    return value is None or isinstance(value, (str, int, float, bool))


def _jsonable_params(estimator):
    params = {}
    original = estimator.get_params(deep=False)
    defaults = {k: v.default for k, v in
                inspect.signature(type(estimator)).parameters.items()}
    source = original[estimator._safe_source_param]
    for key, value in original.items():
        if key == estimator._safe_source_param:
            continue  # replaced by the recipe
        if key == "weights":
            # Refitting a loaded model starts from the same weights when
            # they have a name; a fitted source or file is not carried over.
            named = value is None or (isinstance(value, str) and not Path(value).exists())
            from_source = hasattr(source, "backbone_") or hasattr(source, "model_")
            params[key] = value if named and not from_source else None
            continue
        if key == "cache" and not _plain(value):
            # A FeatureCache or joblib.Memory is this process's store: a
            # loaded model uses the process-wide cache unless given one.
            params[key] = defaults[key]
            continue
        if key == "device" and not _plain(value):
            # An accelerator is the process's distributed state: a loaded
            # model trains in one process unless given one again.
            params[key] = defaults[key]
            continue
        if key == "head" and isinstance(value, type):
            params[key] = {"__class__": f"{value.__module__}:{value.__qualname__}"}
            continue
        if key in _TRAINING_ONLY and not _plain(value):
            params[key] = defaults[key]
            continue
        if key == "random_state":  # a seed is kept (numpy ints too); a RandomState is not
            value = int(value) if isinstance(value, Integral) else None
        if not _plain(value):
            raise TypeError(
                f"{key}={value!r} cannot be stored in the safe format (JSON); use "
                "a string option (a head as an nn.Module class), or pickle/joblib for "
                "this model."
            )
        params[key] = value
    return params


def _read_params(cls, params, trusted):
    """The parameters read from ``config.json``, a head class resolved."""
    params = dict(params)
    head = params.get("head")
    if isinstance(head, dict):
        if set(head) != {"__class__"}:
            raise SaveFormatError(f"The head in {_CONFIG} has the keys {sorted(head)}.")
        params["head"] = resolve_class(head["__class__"], trusted, where=_CONFIG)
    return params


def _encode(value):
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(key, value):
    """A fitted attribute read from JSON: plain values, and arrays of
    numbers, booleans or strings (an object array only of strings, as
    sklearn's ``feature_names_in_`` and a pandas-fitted ``classes_`` are)."""
    where = f"The fitted attribute {key!r} in {_CONFIG}"
    if isinstance(value, dict):
        if set(value) != {"__ndarray__", "dtype"}:
            raise SaveFormatError(f"{where} has the keys {sorted(value)}.")
        try:
            dtype = np.dtype(value["dtype"])
            array = np.asarray(value["__ndarray__"], dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise SaveFormatError(f"{where} is not an array: {exc}.") from exc
        if dtype.kind not in "biufcUSO" or (
                dtype.kind == "O" and not all(isinstance(v, str) for v in array.flat)):
            raise SaveFormatError(f"{where} is an array of dtype {dtype} holding other "
                                  "than numbers, booleans or strings.")
        return array
    scalars = (type(None), bool, int, float, str)
    if isinstance(value, scalars) or (isinstance(value, list)
                                      and all(isinstance(v, scalars) for v in value)):
        return value
    raise SaveFormatError(f"{where} is not plain data: {value!r}.")


def save(estimator, path):
    """Save a fitted sktl estimator to the folder ``path`` (safe format).

    The folder may be new, empty, or hold a previous save, which is
    replaced atomically: the weights are written first, under a new name,
    and ``config.json`` last (each file written whole, synced to disk and
    renamed into place), then the previous save's weights are removed. If
    the process is killed meanwhile, the folder still holds the previous
    save or the new one, never a mix. Other files in a save folder are left
    alone, and a non-empty folder that holds no sktl save is refused.

    Parameters
    ----------
    estimator : TransferClassifier, TransferRegressor, ContrastiveClassifier, \
FeatureExtractor or TransferDetector
        A fitted estimator whose backbone can be rebuilt from its recipe (a
        detector: from its torchvision architecture's name).
        Parameters that only matter in training and that JSON cannot hold
        (``criterion``, ``callbacks``, ``augment``, an ``EarlyStopping``
        object, a ``class_weight`` dict, an optimizer class) are saved as
        their defaults; a ``head`` class is saved by name (load it with
        ``trusted=[MyHead]``).
    path : str or os.PathLike
        Folder to create, or holding a previous save to replace.

    Raises
    ------
    FileExistsError
        If ``path`` is a file, or a non-empty folder without an sktl save.

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
    spec, n_features = estimator._safe_recipe()
    config = {
        "saved_by": _SAVED_BY,
        "format": _FORMAT,
        "sktl_version": __version__,
        "estimator": name,
        "params": _jsonable_params(estimator),
        "backbone": spec,
        "n_features": n_features,
        "n_outputs": estimator._safe_n_outputs(),
        "fitted": {k: _encode(getattr(estimator, k)) for k in estimator._saved_attributes
                   if hasattr(estimator, k)},
    }
    folder = Path(path)
    stale = _previous_save(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights, digest = _write_weights(estimator._safe_module(), folder)
    config.update(weights=weights, files={weights: digest})
    _write_atomic(folder / _CONFIG, json.dumps(config, indent=2).encode("utf-8"))
    # The new save is complete on disk: the previous one's data can go.
    for entry in folder.iterdir():
        if entry.name != weights and (_is_own(entry.name) or entry.name in stale):
            entry.unlink(missing_ok=True)


def _is_own(name):
    """A data or temporary file name only sktl.save writes."""
    return bool(_DATA.fullmatch(name)) or (name.startswith(_TMP_PREFIX)
                                            and name.endswith(_TMP_SUFFIX))


def _previous_save(folder):
    """Check that ``save`` may write into ``folder``; return the legacy file
    names it may remove once the new save is in place.

    Allowed: no folder, an empty one, one with an sktl ``config.json``, or
    one holding only sktl's own files (a first save that was interrupted).
    Any other folder holds the user's files, which sktl never overwrites.
    """
    if not folder.is_dir():
        return set()  # created by mkdir (which refuses a file in the way)
    config = _sktl_config(folder / _CONFIG)
    if config is not None:
        return {_LEGACY_DATA} if "format" not in config else set()
    foreign = sorted(p.name for p in folder.iterdir() if not _is_own(p.name))
    if foreign:
        raise FileExistsError(
            f"{folder} is not empty and holds no sktl save ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); sktl.save never overwrites files "
            "it did not write. Pass a new or empty folder, or a previous save's.")
    return set()


def _sktl_config(path):
    """The parsed ``config.json`` at ``path`` if sktl wrote it, else None."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if config.get("saved_by") == _SAVED_BY:
        return config
    # A save from before the format version had these keys and no marker.
    return config if {"sktl_version", "estimator", "backbone"} <= set(config) else None


def _temp_path(folder):
    # Not tempfile.mkstemp, whose files are private (0600): config.json
    # keeps the permissions the user's umask gives, as before.
    return folder / f"{_TMP_PREFIX}{secrets.token_hex(8)}{_TMP_SUFFIX}"


def _write_weights(module, folder):
    """Write ``module``'s weights to ``folder`` under their content's name;
    return the name and sha256. The file appears whole or not at all."""
    tmp = _temp_path(folder)
    try:
        save_model(module, str(tmp))
        digest = _sha256(tmp, sync=True)
        name = f"model-{digest[:16]}.safetensors"
        os.replace(tmp, folder / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(folder)  # the weights' name is on disk before config.json names it
    return name, digest


def _write_atomic(path, data):
    """Replace ``path`` by ``data``: written whole to a temporary file,
    synced, renamed over ``path``, and the rename synced."""
    tmp = _temp_path(path.parent)
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder):
    if os.name == "posix":  # a folder cannot be opened for fsync on Windows
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sha256(path, *, sync=False):
    digest = hashlib.sha256()
    with open(path, "r+b" if sync else "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
        if sync:
            os.fsync(fh.fileno())
    return digest.hexdigest()


def load(path, *, device="auto", trusted=()):
    """Load an estimator written by :func:`save`; nothing is unpickled.

    Nothing is imported that the folder names, unless it belongs to sktl,
    torch, torchvision or sentence-transformers, or its class is passed in
    ``trusted``. Every file is checked against the sha256 that
    ``config.json`` records: a file that was changed, truncated or taken
    from another save is an error, not a slightly different model. (The
    hashes guard against accidents, not against someone who can edit
    ``config.json`` too.)

    Parameters
    ----------
    path : str or os.PathLike
        Folder written by :func:`save`.
    device : str, default="auto"
        Where to put the model.
    trusted : sequence of classes, default=()
        Classes the save may name besides those of the trusted packages,
        imported by the caller: e.g. ``trusted=[MyNet]`` for a model saved
        with ``backbone=MyNet``, or a sentence-transformers module class
        that the encoder folder's ``modules.json`` lists. Matched by module
        and qualified name; strings are not accepted.

    Returns
    -------
    estimator
        A fitted TransferClassifier, TransferRegressor, ContrastiveClassifier,
        FeatureExtractor or TransferDetector.

    Raises
    ------
    sktl.exceptions.UntrustedTypeError
        If the save names a class outside the trusted packages and ``trusted``.
    sktl.exceptions.SaveIntegrityError
        If a file is missing or does not match its recorded sha256.
    sktl.exceptions.SaveFormatError
        If ``path`` holds no sktl save of this format version, or its
        configuration is not one :func:`save` writes.
    sklearn.utils._param_validation.InvalidParameterError
        If a saved parameter is not a valid value for the estimator.
    """
    trusted = check_trusted(trusted)
    folder = Path(path)
    config = _read_config(folder)
    cls = _estimator_class(config["estimator"])
    params = config["params"]
    unknown = sorted(set(params) - (set(cls._get_param_names()) - {cls._safe_source_param}))
    if unknown:
        raise SaveFormatError(f"{_CONFIG} gives {cls.__name__} unknown parameters {unknown}.")
    unknown = sorted(set(config["fitted"]) - set(cls._saved_attributes))
    if unknown:
        raise SaveFormatError(f"{_CONFIG} holds unknown fitted attributes {unknown}.")
    spec = config["backbone"]
    estimator = cls._safe_new(spec, trusted, _read_params(cls, params, trusted))
    estimator._validate_params()  # the constructor's checks, on values read from a file
    for key, value in config["fitted"].items():
        setattr(estimator, key, _decode(key, value))
    weights = _verified_weights(folder, config)
    backbone = estimator._safe_rebuild(spec, trusted, config["n_features"])
    module = estimator._safe_skeleton(backbone, config["n_outputs"])
    _load_weights(module, weights)
    estimator._safe_restore(backbone, module, resolve_device(device))
    return estimator


def _read_config(folder):
    """The folder's ``config.json``, checked to be an sktl save of this
    format with the keys :func:`save` writes."""
    path = folder / _CONFIG
    if not path.is_file():
        raise SaveFormatError(f"{folder} holds no {_CONFIG}: it is not a folder "
                              "written by sktl.save.")
    config = _sktl_config(path)
    if config is None:
        raise SaveFormatError(f"{path} was not written by sktl.save.")
    if config.get("format") != _FORMAT:
        version = config.get("sktl_version", "unknown")
        written = ("without a format version (before sktl.save recorded the hashes of "
                   "its files)" if "format" not in config
                   else f"in format {config['format']!r}")
        raise SaveFormatError(
            f"{folder} was saved by sktl {version} {written}; this sktl ({__version__}) "
            f"reads format {_FORMAT}. Load it with the sktl that wrote it and save it "
            "again with this one, or use pickle/joblib.")
    if set(config) != _KEYS:
        raise SaveFormatError(f"{path} has the keys {sorted(config)}; sktl.save writes "
                              f"{sorted(_KEYS)}.")
    for key in ("params", "fitted", "files"):
        if not isinstance(config[key], dict):
            raise SaveFormatError(f"{key!r} in {path} is not a JSON object.")
    counts = [config["n_features"], config["n_outputs"]]
    if not all(n is None or (isinstance(n, int) and not isinstance(n, bool) and n > 0)
               for n in counts):
        raise SaveFormatError(f"n_features and n_outputs in {path} are not positive "
                              "integers (or null).")
    return config


def _estimator_class(name):
    """The sktl estimator class ``config.json`` names: only sktl's own."""
    classes = _estimator_classes()
    if name not in classes:
        raise SaveFormatError(
            f"{_CONFIG} names the estimator {name!r}; sktl.load builds only "
            f"{', '.join(sorted(classes))}.")
    return classes[name]


def _verified_weights(folder, config):
    """The path of the weights, once every file of the save matches the
    sha256 that ``config.json`` records for it."""
    files, weights = config["files"], config["weights"]
    for name, digest in files.items():
        # Names are sktl's own pattern (no path can point outside the folder).
        if not (isinstance(digest, str) and name == f"model-{digest[:16]}.safetensors"
                and _DATA.fullmatch(name)):
            raise SaveFormatError(f"{_CONFIG} lists {name!r} with sha256 {digest!r}, "
                                  "which is not a file sktl.save writes.")
        try:
            actual = _sha256(folder / name)
        except FileNotFoundError:
            raise SaveIntegrityError(
                f"{name}, listed in {_CONFIG}, is missing from {folder}: the save is "
                "incomplete.") from None
        if actual != digest:
            raise SaveIntegrityError(
                f"{folder / name} does not match the sha256 that {_CONFIG} records for "
                "it: it was changed, truncated or replaced (by a file of another save?) "
                "after it was saved. Restore the file or save the model again.")
    if weights not in files:
        raise SaveFormatError(f"The weights {weights!r} are not among the files listed "
                              f"in {_CONFIG}.")
    return folder / weights


def _load_weights(module, path):
    # A first non-strict load gives lazy modules their shapes; load_model
    # then checks every key strictly and restores tied (shared) tensors.
    module.load_state_dict(load_file(str(path)), strict=False)
    load_model(module, str(path))
