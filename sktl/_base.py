"""What every sktl estimator shares: backbone resolution, input validation,
reproducible seeding, cloning and pickling; and the fine-tuning core of
:class:`~sktl.TransferClassifier` / :class:`~sktl.TransferRegressor`."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from numbers import Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_consistent_length, check_is_fitted, validate_data

from ._atomic import atomic_fit
from ._cache import CACHE_CONSTRAINT, RowSpec, extraction_key, resolve_cache
from ._constraints import Count
from ._distributed import PRECISIONS, autocast, check_precision, distributed_net
from ._inference import (
    EXTREME_INPUTS,
    check_finite,
    forward_batches,
    probe_width,
    resolve_device,
    seeded_torch,
    worker_threads,
)
from ._prefix import FrozenReader, prefix_storage, split_frozen_prefix
from ._streaming import default_chunk_size, is_stream, map_chunks
from ._training import OPTIMIZERS, RawDataset, TransferModule, build_net, freeze, make_head
from .backbones import is_fitted_sktl_estimator, resolve_backbone
from .backbones._inputs import n_samples, validate_images, validate_texts

__all__ = ["BackboneEstimatorMixin", "TransferEstimator"]


class BackboneEstimatorMixin:
    """Backbone handling shared by every estimator with a ``backbone``."""

    #: marks sktl estimators, whose fitted backbone another estimator can reuse
    __sktl_backbone__ = True

    # -- cloning: a fitted estimator passed as ``backbone`` is the pretrained
    # model; sklearn's clone would replace it by an unfitted copy and lose
    # its weights inside GridSearchCV/cross_validate. We keep the reference
    # (it is only read: resolve_backbone deep-copies its backbone).
    def __sklearn_clone__(self):
        params = self.get_params(deep=False)
        # An accelerate.Accelerator holds this process's distributed state:
        # shared, never copied.
        cloned = {k: v if is_fitted_sktl_estimator(v) or k == "accelerator"
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
    def _model_lock(self):
        """Held while the fitted model is read whole (pickled, saved, copied
        as another estimator's backbone); see the classifier's override."""
        return contextlib.nullcontext()

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
        with self._model_lock():
            return self._picklable_state()

    def _picklable_state(self):
        state = dict(super().__getstate__())  # may be self.__dict__ itself
        # Tied to this process's tensors; predictions fall back to the full
        # forward pass after unpickling.
        state.pop("_frozen_reader", None)
        torch_keys = [k for k, v in state.items() if k.endswith("_") and
                      (isinstance(v, torch.nn.Module) or type(v).__name__ == "Backbone")]
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


def _as_tensor(rows):
    return torch.from_numpy(np.ascontiguousarray(rows))


class TransferEstimator(BackboneEstimatorMixin, BaseEstimator):
    """Fine-tuning core shared by :class:`~sktl.TransferClassifier` and
    :class:`~sktl.TransferRegressor` (not for direct use)."""

    _parameter_constraints = {
        "backbone": "no_validation",
        "weights": "no_validation",
        "unfreeze": [Count(0), StrOptions({"all"})],
        "head": [StrOptions({"linear", "mlp"}), callable],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "backbone_lr": [Interval(Real, 0, None, closed="left"), None],
        "max_epochs": [Count(1)],
        "batch_size": [Count(1)],
        "optimizer": [StrOptions(set(OPTIMIZERS)), type],
        "early_stopping": ["boolean", Count(1)],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "device": [str, None],
        "random_state": ["random_state"],
        "cache": CACHE_CONSTRAINT,
        "cache_prefix": ["boolean"],
        "verbose": ["verbose"],
        "precision": [StrOptions(set(PRECISIONS))],
        "accelerator": "no_validation",
    }

    def __init__(self, backbone="resnet18", *, weights="DEFAULT", unfreeze=0,
                 head="linear", lr=1e-3, backbone_lr=None, max_epochs=10,
                 batch_size=32, optimizer="adamw", early_stopping=False,
                 validation_fraction=0.1, device="auto", random_state=None,
                 cache=True, cache_prefix=True, verbose=0, precision="32",
                 accelerator=None):
        self.backbone = backbone
        self.weights = weights
        self.unfreeze = unfreeze
        self.head = head
        self.lr = lr
        self.backbone_lr = backbone_lr
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state
        self.cache = cache
        self.cache_prefix = cache_prefix
        self.verbose = verbose
        self.precision = precision
        self.accelerator = accelerator

    # Subclasses define: _encode_targets(y) -> (targets, n_outputs, fitted attrs),
    # _criterion, _stratify(targets) and _y_validation (validate_data kwargs).

    @atomic_fit
    def _fit(self, X, y, *, encode=None, criterion=None):
        """Fit; ``encode(y)`` and ``criterion`` override the subclass's target
        encoding and loss (distillation trains on soft targets this way)."""
        self._validate_params()
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, "
                             "but the target y is None.")
        device = self._training_device()
        with worker_threads(), seeded_torch(self._torch_seed(), device):
            backbone, X, targets, n_outputs, target_attrs, trainable = self._prepare_fit(
                X, y, device, encode)
            head = make_head(self.head, backbone.n_features, n_outputs).to(device)
            module = TransferModule(backbone.module, head, trainable)
            history, reader, precomputed = self._train(module, backbone, X, targets, device,
                                                       criterion or self._criterion)
        self._set_fitted(target_attrs, backbone, module, history, device,
                         len(backbone.blocks), reader)
        # The frozen blocks ran once, in float32: predictions without the
        # reader must run them so too (see _float32_prefix). Their count is
        # fitted state: ``unfreeze`` may be set to another value after fit.
        if precomputed:
            n_blocks = len(backbone.blocks)
            self._float32_frozen_blocks = n_blocks - (self.unfreeze or 0)
        return self

    def _prepare_fit(self, X, y, device, encode=None):
        """A fresh backbone on ``device``, the validated inputs, the encoded
        targets and the blocks that train; nothing is set on ``self``."""
        backbone = resolve_backbone(self.backbone, self.weights)
        X, y = self._validate_X(X, backbone.input_kind, reset=True, y=y,
                                y_kwargs=self._y_validation)
        targets, n_outputs, target_attrs = (encode or self._encode_targets)(y)
        backbone.module.to(device)
        if backbone.n_features is None:
            backbone.n_features = probe_width(backbone.module, backbone.preprocess, X, device)
        trainable = freeze(backbone, self.unfreeze)
        return backbone, X, targets, n_outputs, target_attrs, trainable

    def _backbone_lr(self):
        return self.lr / 10 if self.backbone_lr is None else self.backbone_lr

    def _set_fitted(self, target_attrs, backbone, module, history, device, n_blocks,
                    reader):
        """Publish a finished fit's results as fitted attributes."""
        for name, value in target_attrs.items():
            setattr(self, name, value)
        self.backbone_ = backbone
        self.module_ = module
        self.history_ = history
        self.device_ = device
        self.n_blocks_ = n_blocks
        self._frozen_reader = reader
        self._float32_frozen_blocks = None

    # -- mixed precision and distributed training. ``precision`` and
    # ``accelerator`` are parameters of the subclasses that declare them;
    # the others train in float32 in this process.
    def _precision(self):
        return getattr(self, "precision", "32")

    def _training_device(self):
        accelerator = getattr(self, "accelerator", None)
        # With an accelerator, each process uses the device it assigns
        # (cuda:<local rank> under accelerate launch / torchrun).
        device = (str(accelerator.device) if accelerator is not None
                  else resolve_device(self.device))
        check_precision(self._precision(), device, accelerator)
        return device

    def _split(self, n, targets):
        idx = np.arange(n)
        if not self.early_stopping:
            return idx, None
        stratify = self._stratify(targets)
        try:
            return train_test_split(idx, test_size=self.validation_fraction,
                                    random_state=self._torch_seed(), stratify=stratify)
        except ValueError:  # a class too small to stratify
            return train_test_split(idx, test_size=self.validation_fraction,
                                    random_state=self._torch_seed())

    def _train(self, module, backbone, X, targets, device, criterion):
        train_idx, valid_idx = self._split(n_samples(X), targets)
        common = {"lr": self.lr, "backbone_lr": self._backbone_lr(), "optimizer": self.optimizer,
                  "max_epochs": self.max_epochs, "batch_size": self.batch_size,
                  "device": device, "early_stopping": self.early_stopping,
                  "verbose": self.verbose}
        domain = self._domain_loss_module(backbone)
        if domain is not None and self.unfreeze == 0:
            raise ValueError(
                f"domain_loss={self.domain_loss!r} aligns the backbone's features, "
                "which cannot move with unfreeze=0; unfreeze at least one block "
                "(unfreeze=1, ..., 'all') or adapt frozen features with "
                "sktl.domain.DomainAdaptTransformer instead.")
        common["domain"] = domain is not None
        precomputed = self._precompute(module, backbone, X, device)
        reader = None
        if precomputed is None:  # train through every block, every epoch
            # One dataset of global indices, so that the one collate function
            # both iterators use reads training and validation rows alike.
            data = RawDataset(X, targets, backbone.preprocess)
            train = torch.utils.data.Subset(data, train_idx)
            valid = None if valid_idx is None else torch.utils.data.Subset(data, valid_idx)
            net = build_net(module, criterion, valid_dataset=valid,
                            collate=data.collate, **common)
        else:
            trained, inputs, reader = precomputed
            check_finite(inputs, "The frozen blocks' outputs",
                         "the frozen backbone gives no usable features for these inputs: "
                         "check them for extreme values, and the backbone's weights")
            data = torch.utils.data.TensorDataset
            train = data(torch.from_numpy(inputs[train_idx]),
                         torch.from_numpy(targets[train_idx]))
            valid = None if valid_idx is None else data(
                torch.from_numpy(inputs[valid_idx]), torch.from_numpy(targets[valid_idx]))
            net = build_net(trained, criterion, valid_dataset=valid,
                            collate=None, **common)
        net = distributed_net(net, precision=self._precision(),
                              accelerator=getattr(self, "accelerator", None))
        trained = net.module
        if domain is not None:
            trained.domain = domain.to(device)
        try:
            net.fit(train, y=None)
        finally:
            if domain is not None:  # training-only: not part of the fitted model
                del trained.domain
                trained.__dict__.pop("last_features", None)
        return net.history, reader, precomputed is not None

    def _domain_loss_module(self, backbone):
        """The domain loss for ``domain_loss`` (classifiers only), or None."""
        name = getattr(self, "domain_loss", None)
        if name is None:
            return None
        from .domain._losses import make_domain_loss

        return make_domain_loss(name, backbone.n_features, self.domain_weight)

    def _precompute(self, module, backbone, X, device):
        """What the frozen blocks compute, run once: ``(module to train, its
        inputs, FrozenReader or None)``, or ``None`` to train through the
        frozen blocks.

        ``unfreeze=0``: the features, and only the head trains. Partial
        fine-tuning with ``cache_prefix``: the last frozen block's output,
        and the unfrozen top (cut out of the backbone, sharing its weights)
        trains on it with the head. Rows go through the feature cache, so
        CV folds and grid points with the same frozen blocks share them.
        """
        cache = resolve_cache(self.cache)
        run = {"batch_size": self.batch_size, "device": device,
               "progress": self.verbose >= 1}
        if self.unfreeze == 0:
            key = None if cache is None else extraction_key(backbone, layer=None,
                                                             pooling="auto")
            like = RowSpec(np.float32, (backbone.n_features,))
            features = forward_batches(backbone.module, backbone.preprocess, X,
                                       desc="features", cache=cache, key=key, like=like,
                                       **run)
            reader = None if cache is None else FrozenReader(
                backbone.module, module.head, key, True, backbone.module, [], like)
            return module.head, features, reader
        n_frozen = len(backbone.blocks) - (len(backbone.blocks) if self.unfreeze == "all"
                                           else self.unfreeze)
        if not self.cache_prefix or n_frozen == 0:
            return None
        split = split_frozen_prefix(backbone, n_frozen, X, device)
        if split is None:
            return None
        held, cache = prefix_storage(split.row_nbytes * n_samples(X), cache)
        if not held:
            return None
        key = None if cache is None else extraction_key(backbone, layer=split.block_name,
                                                         pooling=None)
        inputs = forward_batches(split.prefix, backbone.preprocess, X, desc="frozen blocks",
                                 cache=cache, key=key, pool=False, like=split.row_spec,
                                 **run)
        top = TransferModule(split.suffix, module.head, module.trainable_blocks)
        reader = None if cache is None else FrozenReader(
            split.prefix, top, key, False, backbone.module, module.trainable_blocks,
            split.row_spec)
        return top, inputs, reader

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
        run = {"batch_size": self.batch_size, "device": self.device_, "progress": progress}
        reader = getattr(self, "_frozen_reader", None)
        cache = resolve_cache(self.cache)
        precision = self._runnable_precision(self._precision())
        with worker_threads():
            no_reader = reader is None or cache is None or not reader.valid()
            parts = self._float32_prefix(X) if no_reader and precision != "32" else None
            if parts is not None:
                frozen, top, pool = parts
                inputs = forward_batches(frozen, self.backbone_.preprocess, X,
                                         desc="frozen blocks", pool=pool, **run)
                with autocast(precision, self.device_):
                    return forward_batches(top, _as_tensor, inputs, desc="predict", **run)
            if no_reader:
                with autocast(precision, self.device_):
                    return forward_batches(self.module_, self.backbone_.preprocess, X,
                                           desc="predict", **run)
            # Cached rows are float32 features: the frozen blocks run in
            # full precision, whatever ``precision`` is.
            frozen = forward_batches(reader.frozen, self.backbone_.preprocess, X,
                                     desc="frozen blocks", cache=cache, key=reader.key,
                                     pool=reader.pool, like=reader.like, **run)
            with autocast(precision, self.device_):
                return forward_batches(reader.top, _as_tensor, frozen, desc="predict", **run)

    def _float32_prefix(self, X):
        """``(frozen part, trained top, pool)`` when the fit ran the frozen
        blocks once in float32 (``_precompute``) under a lower ``precision``,
        else None: a model without its reader (pickled, ``cache=False``)
        predicts as it was trained."""
        n_frozen = getattr(self, "_float32_frozen_blocks", None)
        if n_frozen is None:
            return None
        if n_frozen == len(self.backbone_.blocks):  # unfreeze=0: only the head trained
            return self.backbone_.module, self.module_.head, True
        split = split_frozen_prefix(self.backbone_, n_frozen, X, self.device_)
        if split is None:
            return None
        return (split.prefix,
                TransferModule(split.suffix, self.module_.head, self.module_.trainable_blocks),
                False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags
