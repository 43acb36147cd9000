"""TransferClassifier: fine-tune a pretrained backbone with a new head."""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

from ._base import CLASS_WEIGHT_CONSTRAINT, LogitClassifierMixin, TransferEstimator
from ._labels import check_label_types
from .domain import is_unlabelled
from .losses import CrossEntropyLoss, DomainAwareLoss

__all__ = ["TransferClassifier"]

#: Parameters the fine-tuning estimators document alike (numpydoc text).
OPTIMISATION_PARAMETERS = """\
    lr : float, default=1e-3
        Learning rate of the head.
    backbone_lr : float or None, default=None
        Learning rate of the unfrozen backbone blocks (discriminative
        fine-tuning); ``None`` means ``lr / 10``.
    lr_schedule : {"constant", "linear", "cosine", "onecycle"}, default="constant"
        How both learning rates move over the optimiser steps: constant;
        a linear warm-up over the first 10% of the steps, then a linear
        (``"linear"``) or cosine (``"cosine"``) decay to 0; or one cycle up
        to the learning rate and down again (``"onecycle"``).
    max_epochs : int, default=10
        Passes over the training data.
    batch_size : int, default=32
        Batch size for training and inference.
    optimizer : {"adamw", "adam", "sgd"} or torch optimizer class, default="adamw"
    early_stopping : bool, int or sktl.callbacks.EarlyStopping, default=False
        Hold out a share of the training rows (10%; stratified for
        classifiers) and stop when the validation loss has not improved
        for 5 epochs (an int: that many); the best weights are restored.
        An :class:`~sktl.callbacks.EarlyStopping` sets the patience and
        the share (``validation_fraction``).
"""
RUNTIME_PARAMETERS = """\
    augment : callable or None, default=None
        Applied to each training batch only, never at prediction: images
        as a float tensor ``(n, c, h, w)`` in ``[0, 1]`` before the
        backbone's normalisation (a torchvision ``v2`` transform such as
        ``v2.Compose([v2.RandomHorizontalFlip(), v2.RandomCrop(32, 4)])``),
        texts as a list of strings, arrays as a float tensor. Augmented
        inputs change what the frozen blocks output, so a fit with
        ``augment`` runs every training batch through the whole backbone:
        the feature cache and frozen-prefix caching are off for its
        training rows.
    callbacks : list of skorch callbacks or None, default=None
        Called with skorch's events during training (``Checkpoint``,
        ``LRScheduler``, ``ProgressBar``, ``TensorBoard``, ``WandbLogger``,
        ``MlflowLogger``, :class:`~sktl.callbacks.GradientAccumulation`, your
        own ``skorch.callbacks.Callback``), or ``(name, callback)`` pairs.
        The objects you pass receive the events (clones get copies).
    device : str or accelerate.Accelerator, default="auto"
        ``"auto"`` uses CUDA when available; or ``"cpu"``, ``"cuda:0"``, ...
        An ``accelerate.Accelerator`` trains through Hugging Face accelerate
        (skorch's ``AccelerateMixin``): under ``accelerate launch`` or
        ``torchrun`` every process fits the same estimator on the same
        data, the model is wrapped in ``DistributedDataParallel`` on the
        process's device and each process trains on its share of the
        batches (multi-GPU, multi-node). Shared, not copied, by clones.
    random_state : int, RandomState or None, default=None
        Seeds weight initialisation, shuffling, dropout, augmentation and
        the validation split: the same value and data give identical
        predictions.
    cache : bool, str, os.PathLike, joblib.Memory or FeatureCache, default=True
        What the frozen blocks output is computed once per sample and kept
        in the feature cache (shared with :class:`FeatureExtractor`, clones,
        CV folds and grid-search candidates; a folder path or a
        ``joblib.Memory`` also keeps it on disk, across restarts and
        ``n_jobs>1`` workers): with ``unfreeze=0`` the features, and only
        the head trains on them; with ``0 < unfreeze < n_blocks_`` the last
        frozen block's output, and the unfrozen top trains on it (frozen
        blocks are deterministic, so the model is the same up to float
        rounding). ``False``: nothing is kept between fits (frozen outputs
        are still computed once per fit when they fit in memory);
        ``FeatureCache(prefix=False)``: a partial fine-tune runs its frozen
        blocks every epoch.
    verbose : int, default=0
        ``1`` prints a line per epoch and progress bars over long passes;
        ``2`` adds a per-batch training progress bar.
    precision : {"32", "bf16", "fp16"}, default="32"
        Mixed precision: training and prediction run under
        ``torch.autocast`` in bfloat16 or float16 (weights stay float32;
        ``"fp16"`` also scales the loss, and needs CUDA; ``"bf16"`` also runs
        on CPUs). With an accelerator as ``device``, set it there instead.
"""


class TransferClassifier(LogitClassifierMixin, ClassifierMixin, TransferEstimator):
    """Classifier that transfers a pretrained backbone to a new task.

    The backbone is cut below its original head, a new head sized for the
    classes in ``y`` is added, and the top ``unfreeze`` blocks of the
    backbone are fine-tuned with it by the criterion (cross-entropy by
    default; built on skorch). With ``unfreeze=0`` the backbone runs once
    per sample and only the head trains on its features.

    Parameters
    ----------
    backbone : str, os.PathLike, torch.nn.Module, type or fitted estimator, default="resnet18"
        A torchvision model name (``"resnet18"``, ``"vit_b_16"``, ...), a
        sentence-transformers folder or hub name, a ``torch.nn.Module`` class
        or instance (copied, never modified), or a fitted sktl estimator whose
        trained backbone becomes the starting point (pretrain on a source
        domain, then ``TransferClassifier(backbone=source_clf)`` on the target).
        Stored as given; loaded in :meth:`fit`.
    weights : str, os.PathLike or None, default="DEFAULT"
        torchvision weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"``), a local
        checkpoint (``.pth``/``.safetensors``), or ``None`` for random
        initialisation.
    unfreeze : int or "all", default=0
        Number of backbone blocks, counted from the top, that are trained.
        ``0`` trains the head only; ``"all"`` fine-tunes the whole network.
        Frozen blocks keep their weights and BatchNorm statistics.
    head : {"linear", "mlp"} or callable, default="linear"
        The new head, or ``head(n_features, n_classes) -> nn.Module``.
    criterion : sktl.losses.Loss, torch loss or None, default=None
        What training minimises (see :mod:`sktl.losses`): ``None`` is
        :class:`~sktl.losses.CrossEntropyLoss`;
        :class:`~sktl.losses.DomainAwareLoss` adds a domain loss (CORAL,
        MMD, DANN) between the labelled rows and the unlabelled target rows
        (``y = -1``, see :mod:`sktl.domain`; needs ``unfreeze >= 1``);
        :class:`~sktl.losses.DistillationLoss` learns a teacher's
        ``soft_targets``; a plain torch loss gets ``(logits, y)``.
{optimisation}
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the loss, as in scikit-learn: a dict
        ``{label: weight}``, or ``"balanced"`` (``n_samples / (n_classes *
        count)``, over the labelled rows). Multiplies ``sample_weight``;
        unlabelled rows (``-1``) carry none.
{runtime}
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels seen in :meth:`fit`.
    n_features_in_ : int
        Number of features, for array inputs only.
    backbone_ : sktl.backbones.Backbone
        The fine-tuned backbone, with its blocks and preprocessing.
    module_ : torch.nn.Module
        Backbone plus head.
    history_ : skorch.History
        Per-epoch training log (losses, durations).
    n_blocks_ : int
        Number of blocks ``unfreeze`` counts from.
    device_ : str
        Device the model lives on.

    See Also
    --------
    ContrastiveClassifier : Few-shot text classification (SetFit-style).
    TransferRegressor : The same for regression targets.
    FeatureExtractor : Frozen features for any scikit-learn estimator.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktl import TransferClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(60, 4)).astype("float32")
    >>> y = (X[:, 0] > 0).astype(int)
    >>> body = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
    >>> clf = TransferClassifier(body, unfreeze="all", lr=0.05, max_epochs=20,
    ...                          random_state=0).fit(X, y)
    >>> clf.classes_
    array([0, 1])
    >>> clf.score(X, y) > 0.9
    True

    Imbalanced classes, and a learning-rate schedule:

    >>> y = (X[:, 0] > 1).astype(int)  # about 1 in 6 positive
    >>> clf = TransferClassifier(body, unfreeze="all", lr=0.05, max_epochs=20,
    ...                          class_weight="balanced", lr_schedule="cosine",
    ...                          random_state=0).fit(X, y)
    """

    __doc__ = __doc__.replace("{optimisation}\n", OPTIMISATION_PARAMETERS).replace(
        "{runtime}\n", RUNTIME_PARAMETERS)

    _default_criterion = CrossEntropyLoss
    _y_validation = {"y_numeric": False}
    _parameter_constraints = {**TransferEstimator._parameter_constraints,
                              "class_weight": CLASS_WEIGHT_CONSTRAINT}

    def __init__(self, backbone="resnet18", *, weights="DEFAULT", unfreeze=0,
                 head="linear", criterion=None, lr=1e-3, backbone_lr=None,
                 lr_schedule="constant", max_epochs=10, batch_size=32, optimizer="adamw",
                 early_stopping=False, class_weight=None, augment=None, callbacks=None,
                 device="auto", random_state=None, cache=True, verbose=0, precision="32"):
        super().__init__(backbone, weights=weights, unfreeze=unfreeze, head=head,
                         criterion=criterion, lr=lr, backbone_lr=backbone_lr,
                         lr_schedule=lr_schedule, max_epochs=max_epochs,
                         batch_size=batch_size, optimizer=optimizer,
                         early_stopping=early_stopping, augment=augment,
                         callbacks=callbacks, device=device, random_state=random_state,
                         cache=cache, verbose=verbose, precision=precision)
        self.class_weight = class_weight

    def fit(self, X, y, sample_weight=None, soft_targets=None):
        """Fit the head (and the unfrozen blocks) on ``X``, ``y``.

        Parameters
        ----------
        X : array-like, list of str, list of PIL images or paths
            Inputs of the kind the backbone reads.
        y : array-like of shape (n_samples,)
            Class labels of any type; with a criterion that uses unlabelled
            rows (domain adaptation, distillation), ``-1`` marks them.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the rows in the loss (a weighted mean:
            an integer weight counts a row that many times, a zero weight
            as if it were absent). Routed by scikit-learn's metadata routing
            when requested (``set_fit_request(sample_weight=True)``).
        soft_targets : array-like of shape (n_samples, n_classes), default=None
            Class probabilities per row (columns as the sorted labels), for
            a criterion that learns from them
            (:class:`~sktl.losses.DistillationLoss`).

        Returns
        -------
        self : TransferClassifier
        """
        self._validate_params()
        check_label_types(y)
        return self._fit(X, y, sample_weight=sample_weight, soft_targets=soft_targets)

    def _encode_targets(self, y, criterion):
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if criterion.uses_unlabelled:
            return self._encode_with_target_rows(y, criterion)
        return self._encode_labelled(y)

    def _encode_with_target_rows(self, y, criterion):
        """Labels for the labelled rows; -1 marks unlabelled rows."""
        target = is_unlabelled(y)
        if isinstance(criterion, DomainAwareLoss) and not target.any():
            raise ValueError(
                "criterion=DomainAwareLoss(...) needs unlabelled target-domain rows: "
                "stack them with the source rows in X and give them the label -1 "
                "in y (sktl.domain.UNLABELLED).")
        codes, n_classes, attrs = self._encode_labelled(y[~target])
        full = np.full(len(y), -1, dtype=np.int64)
        full[~target] = codes
        return full, n_classes, attrs

    def _encode_labelled(self, y):
        encoder = LabelEncoder().fit(y)
        if len(encoder.classes_) < 2:
            found = (f"only one class ({encoder.classes_[0]!r})" if len(encoder.classes_)
                     else "no labelled row (every label is -1, unlabelled)")
            raise ValueError(f"y contains {found}; a classifier needs samples of at least "
                             "two classes.")
        codes = encoder.transform(y).astype(np.int64)
        return codes, len(encoder.classes_), {"classes_": encoder.classes_}

    def _stratify(self, codes):
        return codes
