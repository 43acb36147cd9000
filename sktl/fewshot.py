"""ContrastiveClassifier: few-shot text classification in the manner of SetFit.

SetFit (Tunstall et al. 2022) tunes a sentence encoder on pairs built from a
handful of labels, so that embeddings of the same class get close and those
of different classes apart, then fits a logistic regression on the tuned
embeddings. With 8 to 64 examples per class this beats both a frozen
encoder with logistic regression and end-to-end cross-entropy
fine-tuning, which overfits.

:class:`ContrastiveClassifier` does the same through sktl's one training
engine, with its own defaults: every pair of a class-balanced batch counts
(a batch of ``B`` sentences gives ``B (B - 1) / 2`` pairs for ``B`` forward
passes, where SetFit's pair list spends two passes per pair), under the
supervised contrastive loss, with SetFit's warm-up and linear decay.
"""

from __future__ import annotations

import copy
from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d
from torch import nn

from ._atomic import atomic_fit
from ._base import (
    CLASS_WEIGHT_CONSTRAINT,
    CRITERION_CONSTRAINT,
    TRAINING_CONSTRAINTS,
    BackboneEstimatorMixin,
    LogitClassifierMixin,
    TrainingEstimatorMixin,
    class_weight_rows,
    row_weights,
)
from ._cache import resolve_cache
from ._config import get_config
from ._constraints import Count
from ._engine import (
    BalancedBatches,
    FrozenReader,
    Rows,
    TransferModule,
    autocast,
    forward_batches,
    freeze,
    logistic_head,
    normalized_head,
    optimizer_class,
    precompute,
    probe_width,
    seeded_torch,
    train,
    worker_threads,
)
from ._labels import check_label_types
from .backbones import resolve_backbone
from .losses import CosinePairLoss, SupConLoss, as_loss

__all__ = ["ContrastiveClassifier", "auto_temperature"]

#: The SupCon temperature by labelled examples per class (``"auto"``): a
#: softer softmax with few examples, a sharper one with more (chosen on dev
#: sets of the few-shot benchmark; see the benchmarks page).
AUTO_TEMPERATURES = {8: 0.5, 64: 0.1}


def auto_temperature(n_per_class):
    """The temperature of ``criterion="supcon"``: that of the nearest of
    8 and 64 examples per class on a log scale (22 or fewer: 0.5; more:
    0.1).

    Examples
    --------
    >>> from sktl.fewshot import auto_temperature
    >>> auto_temperature(8), auto_temperature(16), auto_temperature(64)
    (0.5, 0.5, 0.1)
    """
    nearest = min(AUTO_TEMPERATURES, key=lambda n: abs(np.log(n_per_class / n)))
    return AUTO_TEMPERATURES[nearest]


class ContrastiveClassifier(LogitClassifierMixin, ClassifierMixin, TrainingEstimatorMixin,
                            BackboneEstimatorMixin, BaseEstimator):
    """Few-shot classifier: contrastive tuning of an encoder, then a
    logistic-regression head (SetFit-style).

    :meth:`fit` first trains the unfrozen blocks of the backbone alone so
    that embeddings of the same class get close and those of different
    classes apart, on class-balanced batches in which every pair counts,
    then fits an L2-regularised logistic regression on the tuned,
    unit-length embeddings. The defaults are the configuration of sktl's
    few-shot benchmark: ``ContrastiveClassifier(encoder).fit(X_few,
    y_few)`` is the benchmarked method.

    Parameters
    ----------
    backbone : str, os.PathLike, torch.nn.Module, type or fitted estimator, default="sentence-transformers/all-MiniLM-L6-v2"
        A sentence-transformers folder or hub name (or any sktl backbone:
        a torchvision model, a module, a fitted estimator).
    weights : str, os.PathLike or None, default="DEFAULT"
        As in :class:`~sktl.TransferClassifier`.
    unfreeze : int or "all", default="all"
        Blocks tuned, counted from the top (``"all"``: every layer, as
        SetFit). With ``0 < unfreeze < n_blocks_``, the frozen blocks run
        once per sentence (their outputs go through ``cache``) and each step
        runs the top only, several times faster.
    criterion : {"supcon", "cosine"}, sktl.losses.Loss or None, default="supcon"
        The contrastive loss (``None``: ``"supcon"``): supervised contrastive
        (:class:`~sktl.losses.SupConLoss`) at a temperature chosen from
        the median number of examples per class (:func:`auto_temperature`:
        0.5 with about 8, 0.1 with about 64); SetFit's cosine-similarity
        loss (:class:`~sktl.losses.CosinePairLoss`); or a loss instance
        that trains features only (``SupConLoss(temperature=0.3)``).
    lr : float, default=5e-5
        Learning rate of the tuned blocks.
    lr_schedule : {"constant", "linear", "cosine", "onecycle"}, default="linear"
        As in :class:`~sktl.TransferClassifier` (``"linear"``: SetFit's
        warm-up over 10% of the steps, then linear decay).
    max_epochs : int, default=1
        Passes of contrastive tuning (SetFit's ``num_epochs``).
    batch_size : int, default=16
        Sentences per class-balanced batch (more than the number of
        classes, so that a batch holds positive pairs); also the inference
        batch size.
    pair_iterations : int, default=20
        SetFit's ``num_iterations``: per epoch, each example is drawn this
        many times on average (every class gets an equal share of each
        batch, so examples of smaller classes are drawn more often); an
        epoch is ``ceil(pair_iterations * n_samples / batch_size)`` steps.
    optimizer : {"adamw", "adam", "sgd"} or torch optimizer class, default="adamw"
    head_C : float, default=1.0
        Inverse regularisation strength of the logistic-regression head.
    early_stopping : bool, int or sktl.callbacks.EarlyStopping, default=False
        Hold out a stratified share of the rows (10% by default) and stop
        tuning when their contrastive loss has not improved for 5 epochs
        (an int: that many); the best weights are restored. Needs
        ``max_epochs > 1`` and two held-out examples of every class.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the contrastive loss (per anchor) and
        the head, as in scikit-learn; multiplies ``sample_weight``.
    augment : callable or None, default=None
        Applied to each training batch of texts (a list of str) during
        tuning, never at prediction (e.g. random word dropout); the frozen
        prefix is then run every step.
    callbacks, device, random_state, cache, verbose, precision
        As in :class:`~sktl.TransferClassifier`. With an accelerator as
        ``device``, each process computes the contrastive loss over the
        pairs of its own batches (embeddings are not gathered across
        processes), as in SetFit's data-parallel training.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    backbone_ : sktl.backbones.Backbone
        The tuned backbone.
    module_ : torch.nn.Module
        Backbone, normalisation and the logistic-regression head.
    temperature_ : float or None
        The SupCon temperature used (``None`` with another loss).
    history_ : skorch.History
        Per-epoch log of the contrastive loss (``train_loss``).
    n_blocks_ : int
    device_ : str

    See Also
    --------
    TransferClassifier : End-to-end fine-tuning by cross-entropy.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktl import ContrastiveClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(16, 4)).astype("float32")
    >>> y = np.repeat([0, 1], 8)
    >>> X[y == 1] += 1.0
    >>> body = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
    >>> clf = ContrastiveClassifier(body, lr=1e-2, batch_size=8, max_epochs=5,
    ...                             random_state=0).fit(X, y)
    >>> bool(clf.history_[-1, "train_loss"] < clf.history_[0, "train_loss"])
    True
    >>> clf.score(X, y) > 0.9
    True
    """

    _parameter_constraints = {
        **TRAINING_CONSTRAINTS,
        "unfreeze": [Count(1), StrOptions({"all"})],
        "criterion": [StrOptions({"supcon", "cosine"}), *CRITERION_CONSTRAINT],
        "batch_size": [Count(2)],
        "pair_iterations": [Count(1)],
        "head_C": [Interval(Real, 0, None, closed="neither")],
        "class_weight": CLASS_WEIGHT_CONSTRAINT,
    }

    def __init__(self, backbone="sentence-transformers/all-MiniLM-L6-v2", *,
                 weights="DEFAULT", unfreeze="all", criterion="supcon", lr=5e-5,
                 lr_schedule="linear", max_epochs=1, batch_size=16, pair_iterations=20,
                 optimizer="adamw", head_C=1.0, early_stopping=False, class_weight=None,
                 augment=None, callbacks=None, device="auto", random_state=None, cache=True,
                 verbose=0, precision="32"):
        self.backbone = backbone
        self.weights = weights
        self.unfreeze = unfreeze
        self.criterion = criterion
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.pair_iterations = pair_iterations
        self.optimizer = optimizer
        self.head_C = head_C
        self.early_stopping = early_stopping
        self.class_weight = class_weight
        self.augment = augment
        self.callbacks = callbacks
        self.device = device
        self.random_state = random_state
        self.cache = cache
        self.verbose = verbose
        self.precision = precision

    _saved_attributes = (*TrainingEstimatorMixin._saved_attributes, "temperature_")

    def _safe_head(self, n_features, n_outputs):
        return normalized_head(nn.Linear(n_features, n_outputs))

    def fit(self, X, y, sample_weight=None):
        """Tune the encoder on ``X``, ``y``, then fit the head.

        Parameters
        ----------
        X : list of str (or what the backbone reads)
        y : array-like of shape (n_samples,)
            At least two classes, each with at least two examples.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the rows as anchors of the contrastive loss and in
            the head's fit.

        Returns
        -------
        self : ContrastiveClassifier
        """
        self._validate_params()
        check_label_types(y)
        return self._fit(X, y, sample_weight)

    @atomic_fit
    def _fit(self, X, y, sample_weight):
        criterion = "supcon" if self.criterion is None else self.criterion
        if isinstance(criterion, str):
            criterion = SupConLoss() if criterion == "supcon" else CosinePairLoss()
        else:
            criterion = as_loss(copy.deepcopy(criterion))
        if criterion.trains_head:
            raise ValueError(f"criterion={type(criterion).__name__}(...) trains a head; "
                             "ContrastiveClassifier tunes features with a contrastive loss "
                             "(SupConLoss, CosinePairLoss). Use TransferClassifier for it.")
        stopping = self._early_stopping()
        if stopping is not None and self.max_epochs == 1:
            raise ValueError("early_stopping needs max_epochs > 1: with one epoch of "
                             "tuning there is nothing to stop early.")
        device, accelerator = self._training_device()
        seed = self._torch_seed()
        with worker_threads(), seeded_torch(seed, device):
            backbone = resolve_backbone(self.backbone, self.weights)
            X, y = self._validate_X(X, backbone.input_kind, reset=True, y=y)
            codes, classes = self._codes(y)
            temperature = None
            if self.criterion in ("supcon", None):
                temperature = auto_temperature(float(np.median(np.bincount(codes))))
                criterion.temperature = temperature
            weights = row_weights(sample_weight,
                                  class_weight_rows(self.class_weight, codes, classes),
                                  np.ones(len(codes), dtype=bool))
            targets = {"y": codes}
            if weights is not None:
                targets["sample_weight"] = weights.astype(np.float32)
            backbone.module.to(device)
            if backbone.n_features is None:
                backbone.n_features = probe_width(backbone.module, backbone.preprocess, X,
                                                  device)
            trainable = freeze(backbone, self.unfreeze)
            train_idx, valid_idx = self._split(codes, stopping, seed)
            rng = np.random.RandomState(seed)
            n_blocks = len(backbone.blocks)
            n_frozen = n_blocks - (n_blocks if self.unfreeze == "all" else self.unfreeze)
            # The frozen blocks run once per sentence, through the cache (not
            # with an augmentation, which changes what they output).
            cache = resolve_cache(self.cache)
            stored = None if self.augment is not None else precompute(
                backbone, X, n_frozen, cache=cache, batch_size=self.batch_size,
                device=device, progress=self.verbose >= 1)
            inputs, to_batch, top = X, backbone.preprocess, backbone.module
            if stored is not None:
                split, inputs, key = stored
                to_batch, top = split.collate, split.top
            body = TransferModule(top, None, trainable)
            train_rows = Rows(inputs, targets, to_batch, train_idx, augment=self.augment)
            valid_rows = (None if valid_idx is None
                          else Rows(inputs, targets, to_batch, valid_idx))
            net = train(body, criterion, train_rows, valid_rows, lr=self.lr, backbone_lr=self.lr,
                        optimizer=optimizer_class(self.optimizer), max_epochs=self.max_epochs,
                        batch_size=self.batch_size, device=device,
                        lr_schedule=self.lr_schedule,
                        batch_sampler=BalancedBatches(codes[train_idx], self.batch_size,
                                                      self.pair_iterations, rng),
                        early_stopping=stopping, callbacks=self.callbacks,
                        precision=self._precision(), accelerator=accelerator,
                        num_workers=get_config()["num_workers"], verbose=self.verbose,
                        hint=f"Lower lr (now {self.lr:g})")
            with autocast(self._precision(), device):  # as predictions will run
                features = forward_batches(body, to_batch, inputs, batch_size=self.batch_size,
                                           device=device, progress=self.verbose >= 1,
                                           desc="embeddings").astype(np.float64)
            head = normalized_head(logistic_head(features, codes, len(classes), self.head_C,
                                                 seed, sample_weight=weights).to(device))
            module = TransferModule(backbone.module, head, trainable).eval()
            reader = None
            if stored is not None and cache is not None:
                reader = FrozenReader(split, TransferModule(split.top, head, trainable), key,
                                      backbone.module, trainable)
        self.classes_ = classes
        self.backbone_ = backbone
        self.module_ = module
        self.history_ = net.history
        self.temperature_ = temperature
        self.n_blocks_ = len(backbone.blocks)
        self.device_ = device
        # Predictions read the frozen rows from the cache, as training did
        # (in float32, whatever ``precision``: see _float32_reader).
        self._frozen_reader = reader
        self._float32_frozen_blocks = n_frozen if stored is not None else None
        return self


    def _codes(self, y):
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        classes, codes = np.unique(y, return_inverse=True)
        counts = np.bincount(codes)
        if len(classes) < 2:
            raise ValueError(f"y contains {len(classes)} class(es); contrastive tuning needs "
                             "samples of at least two classes to build negative pairs.")
        if counts.min() < 2:
            raise ValueError(
                f"contrastive tuning needs at least 2 examples of every class to build "
                f"positive pairs; class {classes[int(counts.argmin())].tolist()!r} has "
                f"{int(counts.min())}. Use more labels, or TransferClassifier.")
        if self.batch_size <= len(classes):
            raise ValueError(
                f"batch_size={self.batch_size} with {len(classes)} classes: a class-balanced "
                "batch gives every class a slot before any class a second one, so no batch "
                f"would hold a positive pair. Use batch_size > {len(classes)}.")
        return codes.astype(np.int64), classes

    def _split(self, codes, stopping, seed):
        idx = np.arange(len(codes))
        if stopping is None:
            return idx, None
        try:
            train_idx, valid_idx = train_test_split(
                idx, test_size=stopping.validation_fraction, random_state=seed,
                stratify=codes)
        except ValueError as exc:
            raise ValueError(f"early_stopping cannot hold out a stratified validation share "
                             f"of these few examples ({exc}); use more labels, a larger "
                             "validation_fraction, or no early stopping.") from None
        if np.bincount(codes[valid_idx], minlength=codes.max() + 1).min() < 2:
            raise ValueError(
                "early_stopping holds out too few examples to score the contrastive loss "
                "(every class needs 2 held-out examples, a positive pair); raise "
                "EarlyStopping(validation_fraction=...) or fit without early stopping.")
        return train_idx, valid_idx

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags

