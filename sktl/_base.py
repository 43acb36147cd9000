"""What every sktl estimator shares: backbone resolution, input validation,
reproducible seeding, cloning and pickling; and the fine-tuning core of
:class:`~sktl.TransferClassifier` / :class:`~sktl.TransferRegressor`."""

from __future__ import annotations

import copy
import io
import warnings
from numbers import Real

import numpy as np
import torch
from scipy.special import softmax
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_consistent_length, check_is_fitted, validate_data
from torch import nn

from ._atomic import atomic_fit
from ._cache import CACHE_CONSTRAINT, resolve_cache
from ._config import get_config
from ._constraints import Count
from ._engine import (
    EXTREME_INPUTS,
    LR_SCHEDULES,
    OPTIMIZERS,
    PRECISIONS,
    FrozenReader,
    Rows,
    TransferModule,
    autocast,
    check_finite,
    check_finite_rows,
    check_precision,
    forward_batches,
    freeze,
    make_head,
    optimizer_class,
    precompute,
    probe_width,
    resolve_device,
    seeded_torch,
    split_at,
    train,
    worker_threads,
)
from ._streaming import default_chunk_size, is_stream, map_chunks
from .backbones import (
    Backbone,
    backbone_param,
    is_fitted_sktl_estimator,
    n_samples,
    rebuild_backbone,
    resolve_backbone,
    validate_images,
    validate_texts,
)
from .callbacks import EarlyStopping
from .losses import DomainAwareLoss, as_loss

__all__ = ["BackboneEstimatorMixin", "LogitClassifierMixin", "TrainingEstimatorMixin",
           "TransferEstimator"]


class BackboneEstimatorMixin:
    """Backbone handling shared by every estimator with a ``backbone``."""

    #: marks sktl estimators, whose fitted backbone another estimator can reuse
    __sktl_backbone__ = True

    # -- the safe format (sktl.save / sktl.load): the parameter that names the
    # pretrained model, which the save replaces by a recipe to rebuild it.
    _safe_source_param = "backbone"

    def _safe_recipe(self):
        """``(spec, n_features)``: how :func:`sktl.load` rebuilds the backbone."""
        spec = self.backbone_.spec
        if spec.get("kind") == "module" and spec.get("instance"):
            raise TypeError(
                "The backbone was passed as a module instance, whose constructor "
                "arguments are unknown; pass the class (backbone=MyNet) to use the "
                "safe format, or store this model with pickle/joblib."
            )
        if spec.get("kind") == "module" and spec.get("class", "").startswith("__main__:"):
            raise TypeError("The backbone class is defined in __main__; move it to an "
                            "importable module so that sktl.load can rebuild it.")
        return spec, self.backbone_.n_features

    @classmethod
    def _safe_new(cls, spec, trusted, params):
        """The unfitted estimator of a save: its parameters, the backbone by name
        (or trusted class)."""
        return cls(backbone=backbone_param(spec, trusted), **params)

    def _safe_rebuild(self, spec, trusted, n_features):
        """The saved backbone's architecture, for the saved weights to fill."""
        backbone = rebuild_backbone(spec, trusted)
        backbone.n_features = n_features
        return backbone

    # -- cloning: a fitted estimator passed as ``backbone`` is the pretrained
    # model; sklearn's clone would replace it by an unfitted copy and lose
    # its weights inside GridSearchCV/cross_validate. We keep the reference
    # (it is only read: resolve_backbone deep-copies its backbone).
    def __sklearn_clone__(self):
        params = self.get_params(deep=False)
        # An accelerate.Accelerator (as device) holds this process's
        # distributed state: shared, never copied.
        cloned = {k: v if is_fitted_sktl_estimator(v) or (k == "device" and is_accelerator(v))
                  else clone(v, safe=False) for k, v in params.items()}
        new = type(self)(**cloned)
        # What sklearn's own clone carries over besides parameters.
        for attr in ("_sklearn_output_config", "_metadata_request"):
            if attr in self.__dict__:
                setattr(new, attr, copy.deepcopy(self.__dict__[attr]))
        return new

    def get_params(self, deep=True):
        params = super().get_params(deep=False)
        if deep:
            for key, value in list(params.items()):
                # A backbone estimator is an artifact, not a tunable step:
                # exposing its params would let set_params mutate a shared,
                # fitted source model.
                if key != "backbone" and hasattr(value, "get_params"):
                    params.update((f"{key}__{k}", v) for k, v in value.get_params().items())
        return params

    # -- inputs ---------------------------------------------------------------
    def _validate_X(self, X, kind, *, reset, y=None, y_kwargs=None):
        """Validate X (and y) for the backbone's input kind."""
        if kind == "array":
            if y is None:
                X = validate_data(self, X, reset=reset, dtype=np.float32, allow_nd=True)
            else:
                X, y = validate_data(self, X, y, reset=reset, dtype=np.float32,
                                     allow_nd=True, **(y_kwargs or {}))
            self._check_sample_shape(X, reset)
            return X, y
        X = validate_images(X) if kind == "image" else validate_texts(X)
        if reset:  # images and texts have no columns: drop a last array fit's
            for name in ("n_features_in_", "feature_names_in_", "_sample_shape"):
                self.__dict__.pop(name, None)
        if y is not None:
            check_consistent_length(X, y)
        return X, y

    def _check_sample_shape(self, X, reset):
        """Array samples of more than one axis (sequences, grids) keep the shape
        seen in fit: scikit-learn's check reads ``X.shape[1]`` only, and a
        wrong last axis would reach the network as a raw torch error."""
        if reset:
            if 0 in X.shape[1:]:
                raise ValueError(f"X has samples of shape {tuple(X.shape[1:])}, which hold "
                                 "no value; each sample needs at least one feature.")
            self._sample_shape = tuple(int(d) for d in X.shape[1:])
            return
        expected = getattr(self, "_sample_shape", None)
        if expected is not None and tuple(X.shape[1:]) != tuple(expected):
            raise ValueError(
                f"X has samples of shape {tuple(X.shape[1:])}, but {type(self).__name__} "
                f"was fitted on samples of shape {tuple(expected)}.")

    # -- randomness -----------------------------------------------------------
    def _torch_seed(self):
        return int(check_random_state(self.random_state).randint(0, 2**31 - 1))

    # -- pickling: torch objects go through torch.save so that a model fitted
    # on a GPU loads on a CPU-only machine (map_location).
    def _runnable_precision(self, precision):
        """``precision`` on ``device_``: a GPU-trained fp16 model unpickled on
        a CPU machine still predicts, in float32, with a warning."""
        if precision == "fp16" and torch.device(self.device_).type != "cuda":
            warnings.warn("precision='fp16' needs a CUDA device; this model runs on "
                          f"{self.device_!r} and predicts in float32.", UserWarning,
                          stacklevel=5)
            precision = "32"
        check_precision(precision, self.device_)
        return precision

    def __getstate__(self):
        state = dict(super().__getstate__())  # may be self.__dict__ itself
        # Tied to this process's tensors; predictions fall back to the full
        # forward pass after unpickling.
        state.pop("_frozen_reader", None)
        state.pop("_float32_reader_", None)
        torch_keys = [k for k, v in state.items() if k.endswith("_") and
                      isinstance(v, (torch.nn.Module, Backbone))]
        if torch_keys:
            buffer = io.BytesIO()
            torch.save({k: state.pop(k) for k in torch_keys}, buffer)
            state["_sktl_torch_state"] = buffer.getvalue()
        return state

    def __setstate__(self, state):
        blob = state.pop("_sktl_torch_state", None)
        super().__setstate__(state)  # sklearn's version-mismatch warning
        if blob is not None:
            location = None if torch.cuda.is_available() else "cpu"
            self.__dict__.update(torch.load(io.BytesIO(blob), map_location=location,
                                            weights_only=False))
            fitted_on = str(getattr(self, "device_", "cpu"))
            if location == "cpu" and fitted_on.startswith("cuda"):
                self.device_ = "cpu"
            elif (fitted_on == "cpu" and getattr(self, "device", None) in (None, "auto")
                  and location is None):
                # device="auto" means this machine's GPU; predict moves the model.
                self.device_ = "cuda"


def training_device(device, precision):
    """``(device name, accelerator or None)`` of a ``device`` parameter, with
    ``precision`` checked against it: with an accelerator, each process uses
    the device it assigns (``cuda:<local rank>`` under ``accelerate launch`` /
    ``torchrun``)."""
    if is_accelerator(device):
        check_precision(precision, str(device.device), device)
        return str(device.device), device
    name = resolve_device(device)
    check_precision(precision, name)
    return name, None


def is_accelerator(device):
    """Whether a ``device`` value is an ``accelerate.Accelerator`` (duck-typed:
    accelerate is an optional dependency)."""
    return all(hasattr(device, name) for name in ("prepare", "backward", "device"))


#: ``_parameter_constraints`` entry of ``criterion``: an sktl loss, a torch loss
#: module (instance or class), or None for the estimator's default.
CRITERION_CONSTRAINT = [nn.Module, type, None]


def class_weight_rows(class_weight, codes, classes):
    """Per-row weights of ``class_weight`` (``"balanced"`` or ``{label:
    weight}``, as scikit-learn's) over the rows with a class code, 1 for
    unlabelled rows (code ``-1``); None without class weights."""
    if class_weight is None:
        return None
    labelled = codes >= 0
    spec = class_weight
    if isinstance(spec, dict):
        unknown = [k for k in spec if k not in set(classes.tolist())]
        if unknown:
            raise ValueError(f"class_weight names labels {unknown} that are not among "
                             f"the classes of y {classes.tolist()}.")
        spec = {int(np.flatnonzero(classes == k)[0]): w for k, w in spec.items()}
    per_class = compute_class_weight(spec, classes=np.arange(len(classes)), y=codes[labelled])
    weights = np.ones(len(codes))
    weights[labelled] = per_class[codes[labelled]]
    return weights


def row_weights(sample_weight, class_weights, labelled):
    """``sample_weight`` (checked) times ``class_weights``, scaled to a mean
    of 1 over the ``labelled`` rows (see :func:`sktl.losses.weighted_mean`),
    or None when neither is given."""
    weights = None if sample_weight is None else check_row_weights(sample_weight,
                                                                    len(labelled))
    if class_weights is not None:
        weights = class_weights if weights is None else weights * class_weights
    return None if weights is None else unit_mean(weights, labelled)


def unit_mean(weights, rows):
    """``weights`` divided by their mean over ``rows``: every row keeps its
    weight relative to the others, unlabelled ones included."""
    weights = np.asarray(weights, dtype=np.float64)
    mean = weights[rows].mean()
    if mean <= 0:
        raise ValueError("every sample weight of the labelled rows is zero: at least one "
                         "labelled sample needs a positive weight.")
    return weights / mean


def check_row_weights(sample_weight, n):
    """``sample_weight`` as a float64 array of ``n`` finite, non-negative
    values with a positive sum, or a ValueError saying what is wrong."""
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim != 1 or len(w) != n:
        raise ValueError(f"sample_weight must be 1-D with one weight per sample ({n}); got "
                         f"shape {w.shape}.")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must hold finite, non-negative weights.")
    if w.sum() <= 0:
        raise ValueError("every sample weight is zero: at least one sample needs a positive "
                         "weight.")
    return w


class TrainingEstimatorMixin:
    """What every estimator that trains a backbone shares: its training
    settings (device or accelerator, precision, early stopping),
    predictions through the trained ``module_``, and its hooks of the safe
    save format (:func:`sktl.save` / :func:`sktl.load`)."""

    # -- the safe format: the fitted attributes kept in JSON, the module
    # whose weights are saved, and how to rebuild it from the backbone.
    _saved_attributes = ("classes_", "n_features_in_", "feature_names_in_", "n_blocks_",
                         "_float32_frozen_blocks", "_sample_shape")

    def _safe_module(self):
        return self.module_

    def _safe_n_outputs(self):
        return len(self.classes_)

    def _safe_head(self, n_features, n_outputs):
        return make_head(self.head, n_features, n_outputs)

    def _safe_skeleton(self, backbone, n_outputs):
        """The fitted module's architecture, for the saved weights to fill."""
        return TransferModule(backbone.module, self._safe_head(backbone.n_features, n_outputs))

    def _safe_restore(self, backbone, module, device):
        """Publish a loaded model as this estimator's fitted state."""
        # Freeze after loading: lazy modules only have parameters by now.
        module.__dict__["trainable_blocks"] = freeze(backbone, self.unfreeze)
        self.backbone_ = backbone
        self.module_ = module.to(device).eval()
        self.device_ = device

    def _precision(self):
        return getattr(self, "precision", "32")

    def _training_device(self):
        return training_device(self.device, self._precision())

    def _early_stopping(self):
        """The EarlyStopping callback of ``early_stopping``, or None."""
        value = self.early_stopping
        if value is False:
            return None
        if value is True:
            return EarlyStopping()
        if isinstance(value, EarlyStopping):
            return copy.deepcopy(value)
        return EarlyStopping(patience=int(value))

    def _forward(self, X):
        """X -> raw network outputs (numpy, float32).

        A stream (generator, memmap, folder of images: see
        :func:`~sktl.iter_chunks`) is read chunk by chunk, each chunk going
        through the in-memory path.
        """
        check_is_fitted(self)
        if is_stream(X):
            return map_chunks(lambda chunk: self._checked_forward(chunk, progress=False),
                              X, chunk_size=default_chunk_size(X, self.batch_size),
                              progress=self.verbose >= 1, desc="predict")
        return self._checked_forward(X, progress=self.verbose >= 1)

    def _checked_forward(self, X, *, progress):
        return check_finite(self._forward_in_memory(X, progress=progress),
                            "The model's outputs", EXTREME_INPUTS)

    def _forward_in_memory(self, X, *, progress):
        X, _ = self._validate_X(X, self.backbone_.input_kind, reset=False)
        self.module_.to(self.device_)
        reader = getattr(self, "_frozen_reader", None)
        cache = resolve_cache(self.cache)
        precision = self._runnable_precision(self._precision())
        with worker_threads():
            if reader is None or cache is None or not reader.valid():
                reader, cache = (None if precision == "32" else self._float32_reader(X)), None
            if reader is None:
                with autocast(precision, self.device_):
                    return forward_batches(self.module_, self.backbone_.preprocess, X,
                                           batch_size=self.batch_size, device=self.device_,
                                           progress=progress, desc="predict")
            # Stored rows are float32: the frozen blocks run in full
            # precision, whatever ``precision`` is, as in training.
            return reader.outputs(self.backbone_.preprocess, X, cache,
                                  batch_size=self.batch_size, device=self.device_,
                                  progress=progress,
                                  autocast=lambda: autocast(precision, self.device_))

    def _float32_reader(self, X):
        """When the fit ran the frozen blocks once in float32 under a lower
        ``precision``: a reader that does so without the cache, so that a
        model without its reader (pickled, ``cache=False``) predicts as it
        was trained; else None."""
        n_frozen = getattr(self, "_float32_frozen_blocks", None)
        if n_frozen is None:
            return None
        if "_float32_reader_" not in self.__dict__:  # cut and checked once
            split = split_at(self.backbone_, n_frozen, X, self.device_)
            trainable = self.module_.trainable_blocks
            self.__dict__["_float32_reader_"] = None if split is None else FrozenReader(
                split, TransferModule(split.top, self.module_.head, trainable), None,
                self.backbone_.module, trainable)
        return self.__dict__["_float32_reader_"]


#: ``_parameter_constraints`` of the settings every training estimator has.
TRAINING_CONSTRAINTS = {
    "backbone": "no_validation",
    "weights": "no_validation",
    "lr": [Interval(Real, 0, None, closed="neither")],
    "lr_schedule": [StrOptions(set(LR_SCHEDULES))],
    "max_epochs": [Count(1)],
    "optimizer": [StrOptions(set(OPTIMIZERS)), type],
    "early_stopping": ["boolean", Count(1), EarlyStopping],
    "augment": [callable, None],
    "callbacks": [list, tuple, None],
    "device": [str, None, HasMethods(["prepare", "backward"])],
    "random_state": ["random_state"],
    "cache": CACHE_CONSTRAINT,
    "verbose": ["verbose"],
    "precision": [StrOptions(set(PRECISIONS))],
}
#: ``_parameter_constraints`` entry of ``class_weight``.
CLASS_WEIGHT_CONSTRAINT = [StrOptions({"balanced"}), dict, None]


class LogitClassifierMixin:
    """``decision_function``, ``predict_proba`` and ``predict`` of a
    classifier whose network outputs one logit per class (``_forward``)."""

    def decision_function(self, X):
        """Logits; for two classes the logit of ``classes_[1]`` minus ``classes_[0]``.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        logits = self._forward(X).astype(np.float64)
        if logits.shape[1] == 2:
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_proba(self, X):
        """Class probabilities, columns ordered as ``classes_``.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        return softmax(self._forward(X).astype(np.float64), axis=1)

    def predict(self, X):
        """Most probable class per sample.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        logits = self._forward(X)
        return self.classes_[np.argmax(logits, axis=1)]


class TransferEstimator(TrainingEstimatorMixin, BackboneEstimatorMixin, BaseEstimator):
    """Fine-tuning core shared by :class:`~sktl.TransferClassifier` and
    :class:`~sktl.TransferRegressor` (not for direct use)."""

    _parameter_constraints = {
        **TRAINING_CONSTRAINTS,
        "unfreeze": [Count(0), StrOptions({"all"})],
        "head": [StrOptions({"linear", "mlp"}), callable],
        "criterion": CRITERION_CONSTRAINT,
        "backbone_lr": [Interval(Real, 0, None, closed="left"), None],
        "batch_size": [Count(1)],
    }

    def __init__(self, backbone="resnet18", *, weights="DEFAULT", unfreeze=0,
                 head="linear", criterion=None, lr=1e-3, backbone_lr=None,
                 lr_schedule="constant", max_epochs=10, batch_size=32, optimizer="adamw",
                 early_stopping=False, augment=None, callbacks=None, device="auto",
                 random_state=None, cache=True, verbose=0, precision="32"):
        self.backbone = backbone
        self.weights = weights
        self.unfreeze = unfreeze
        self.head = head
        self.criterion = criterion
        self.lr = lr
        self.backbone_lr = backbone_lr
        self.lr_schedule = lr_schedule
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.early_stopping = early_stopping
        self.augment = augment
        self.callbacks = callbacks
        self.device = device
        self.random_state = random_state
        self.cache = cache
        self.verbose = verbose
        self.precision = precision

    # Subclasses define: _default_criterion (an sktl.losses class),
    # _encode_targets(y, criterion) -> (y codes or values, n_outputs, fitted
    # attrs), _stratify(y) and _y_validation (validate_data kwargs).

    def _training_criterion(self):
        """A private copy of ``criterion`` (the parameter is never trained or
        mutated) as an :class:`sktl.losses.Loss`."""
        criterion = self._default_criterion() if self.criterion is None else self.criterion
        return as_loss(copy.deepcopy(criterion))

    @atomic_fit
    def _fit(self, X, y, sample_weight=None, soft_targets=None):
        self._validate_params()
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, "
                             "but the target y is None.")
        criterion = self._training_criterion()
        self._check_criterion(criterion)
        device, accelerator = self._training_device()
        with worker_threads(), seeded_torch(self._torch_seed(), device):
            backbone = resolve_backbone(self.backbone, self.weights)
            X, y = self._validate_X(X, backbone.input_kind, reset=True, y=y,
                                    y_kwargs=self._y_validation)
            codes, n_outputs, target_attrs = self._encode_targets(y, criterion)
            targets = {"y": codes}
            weights = self._row_weights(sample_weight, codes, target_attrs)
            if weights is not None:
                targets["sample_weight"] = weights.astype(np.float32)
            if soft_targets is not None or criterion.uses_soft_targets:
                targets["soft"] = self._check_soft_targets(soft_targets, criterion,
                                                           len(codes), n_outputs)
            backbone.module.to(device)
            if backbone.n_features is None:
                backbone.n_features = probe_width(backbone.module, backbone.preprocess, X,
                                                  device)
            trainable = freeze(backbone, self.unfreeze)
            head = make_head(self.head, backbone.n_features, n_outputs).to(device)
            criterion.prepare(backbone.n_features, n_outputs)
            module = TransferModule(backbone.module, head, trainable)
            history, reader, precomputed = self._train(module, backbone, X, targets, device,
                                                       accelerator, criterion)
        self._set_fitted(target_attrs, backbone, module, history, device,
                         len(backbone.blocks), reader)
        # The frozen blocks ran once, in float32: predictions without the
        # reader must run them so too (see _float32_reader). Their count is
        # fitted state: ``unfreeze`` may be set to another value after fit.
        if precomputed:
            n_blocks = len(backbone.blocks)
            self._float32_frozen_blocks = n_blocks - (self.unfreeze or 0)
        return self

    def _check_criterion(self, criterion):
        if isinstance(criterion, DomainAwareLoss) and self.unfreeze == 0:
            raise ValueError(
                "criterion=DomainAwareLoss(...) aligns the backbone's features, which "
                "cannot move with unfreeze=0; unfreeze at least one block (unfreeze=1, "
                "..., 'all') or adapt frozen features with "
                "sktl.DomainAdaptTransformer instead.")
        if not criterion.trains_head:
            raise ValueError(
                f"criterion={type(criterion).__name__}(...) trains the backbone's features "
                f"only, not a head; use sktl.ContrastiveClassifier for contrastive tuning.")

    def _row_weights(self, sample_weight, codes, target_attrs):
        """Per-row weights (``sample_weight`` times ``class_weight``), or None."""
        classes = target_attrs.get("classes_")
        if classes is None:  # a regressor: every row is labelled, no class weights
            return row_weights(sample_weight, None, np.ones(len(codes), dtype=bool))
        return row_weights(sample_weight,
                           class_weight_rows(self.class_weight, codes, classes), codes >= 0)

    @staticmethod
    def _check_soft_targets(soft_targets, criterion, n, n_outputs):
        name = type(criterion).__name__
        if soft_targets is None:
            raise ValueError(f"criterion={name}(...) learns from class probabilities: pass "
                             "them to fit as soft_targets=..., one row per sample.")
        if not criterion.uses_soft_targets:
            raise ValueError(f"soft_targets were passed to fit, but criterion={name}(...) "
                             "does not read them; use criterion=sktl.losses."
                             "DistillationLoss(...).")
        soft = np.asarray(soft_targets, dtype=np.float32)
        if soft.shape != (n, n_outputs):
            raise ValueError(f"soft_targets must have shape (n_samples, n_classes) = "
                             f"{(n, n_outputs)}; got {soft.shape}.")
        if not np.isfinite(soft).all() or (soft < 0).any():
            raise ValueError("soft_targets must hold finite, non-negative probabilities.")
        return soft

    def _backbone_lr(self):
        return self.lr / 10 if self.backbone_lr is None else self.backbone_lr

    def _set_fitted(self, target_attrs, backbone, module, history, device, n_blocks,
                    reader):
        """Publish a finished fit's results as fitted attributes."""
        for name, value in target_attrs.items():
            setattr(self, name, value)
        self.backbone_ = backbone
        self.module_ = module.eval()
        self.history_ = history
        self.device_ = device
        self.n_blocks_ = n_blocks
        self._frozen_reader = reader
        self._float32_frozen_blocks = None
        self.__dict__.pop("_float32_reader_", None)

    def _split(self, n, codes, stopping):
        idx = np.arange(n)
        if stopping is None:
            return idx, None
        stratify = self._stratify(codes)
        try:
            return train_test_split(idx, test_size=stopping.validation_fraction,
                                    random_state=self._torch_seed(), stratify=stratify)
        except ValueError:  # a class too small to stratify
            return train_test_split(idx, test_size=stopping.validation_fraction,
                                    random_state=self._torch_seed())

    def _train(self, module, backbone, X, targets, device, accelerator, criterion):
        stopping = self._early_stopping()
        train_idx, valid_idx = self._split(n_samples(X), targets["y"], stopping)
        trained, inputs, to_batch, reader = module, X, backbone.preprocess, None
        n_frozen = len(backbone.blocks) - (len(backbone.blocks) if self.unfreeze == "all"
                                           else self.unfreeze)
        # Augmented inputs change what the frozen blocks output: train through them.
        cache = resolve_cache(self.cache)
        stored = None if self.augment is not None else precompute(
            backbone, X, n_frozen, cache=cache, batch_size=self.batch_size, device=device,
            progress=self.verbose >= 1)
        if stored is not None:
            split, inputs, key = stored
            check_finite_rows(inputs, "The frozen blocks' outputs",
                              "the frozen backbone gives no usable features for these "
                              "inputs: check them for extreme values, and the backbone's "
                              "weights")
            trained = TransferModule(split.top, module.head, module.trainable_blocks)
            to_batch = split.collate
        train_rows = Rows(inputs, targets, to_batch, train_idx, augment=self.augment)
        valid_rows = None if valid_idx is None else Rows(inputs, targets, to_batch, valid_idx)
        net = train(trained, criterion, train_rows, valid_rows, lr=self.lr,
                    backbone_lr=self._backbone_lr(), optimizer=optimizer_class(self.optimizer),
                    max_epochs=self.max_epochs, batch_size=self.batch_size, device=device,
                    lr_schedule=self.lr_schedule, early_stopping=stopping,
                    callbacks=self.callbacks, precision=self._precision(),
                    accelerator=accelerator, num_workers=get_config()["num_workers"],
                    verbose=self.verbose)
        if stored is not None and cache is not None:
            # Made now: the frozen tensors as the fit leaves them (restoring
            # the best epoch's weights copies into them in place).
            reader = FrozenReader(split, trained, key, backbone.module, module.trainable_blocks)
        return net.history, reader, stored is not None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags
