"""TransferClassifier: fine-tune a pretrained backbone with a new head."""

from __future__ import annotations

from numbers import Real

import numpy as np
from scipy.special import softmax
from sklearn.base import ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d
from torch import nn

from ._base import TransferEstimator
from .domain._convention import is_unlabelled
from .domain._losses import DOMAIN_LOSSES

__all__ = ["TransferClassifier"]


class TransferClassifier(ClassifierMixin, TransferEstimator):
    """Classifier that transfers a pretrained backbone to a new task.

    The backbone is cut below its original head, a new head sized for the
    classes in ``y`` is added, and the top ``unfreeze`` blocks of the
    backbone are fine-tuned with it (built on skorch). With ``unfreeze=0``
    the backbone runs once per fit and only the head trains on its features.

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
    lr : float, default=1e-3
        Learning rate of the head.
    backbone_lr : float or None, default=None
        Learning rate of the unfrozen backbone blocks (discriminative
        fine-tuning); ``None`` means ``lr / 10``.
    max_epochs : int, default=10
        Passes over the training data.
    batch_size : int, default=32
        Batch size for training and inference.
    optimizer : {"adamw", "adam", "sgd"} or torch optimizer class, default="adamw"
    early_stopping : bool or int, default=False
        Hold out ``validation_fraction`` of the data and stop when the
        validation loss has not improved for 5 epochs (or this many, if an
        int); the best weights are restored.
    validation_fraction : float, default=0.1
        Fraction held out when ``early_stopping`` is on.
    device : str, default="auto"
        ``"auto"`` uses CUDA when available; or ``"cpu"``, ``"cuda:0"``, ...
    random_state : int, RandomState or None, default=None
        Seeds weight initialisation, shuffling, dropout and the validation
        split: the same value and data give identical predictions.
    cache : bool, str, os.PathLike, joblib.Memory or FeatureCache, default=True
        With ``unfreeze=0``, read the frozen backbone's features from the
        feature cache (shared with :class:`FeatureExtractor`, clones, CV
        folds and grid-search candidates); a folder path or a
        ``joblib.Memory`` also keeps them on disk, across restarts and
        ``n_jobs>1`` workers; see :class:`FeatureExtractor`.
    cache_prefix : bool, default=True
        With ``0 < unfreeze < n_blocks_``, run the frozen blocks once per fit
        (their outputs go through ``cache``, so CV folds and grid points
        share them) and train the unfrozen top on what they output, instead
        of running them every epoch. Frozen blocks are deterministic (eval
        mode), so the model is the same up to float rounding. Used when the
        backbone can be split with ``torch.fx`` (torchvision CNNs, most
        custom modules) and the stored outputs fit in 2 GiB; otherwise
        training runs through the frozen blocks. ``False`` always does.
    domain_loss : {"coral", "mmd", "dann"} or None, default=None
        Deep domain adaptation: rows of ``y`` equal to ``-1`` are unlabelled
        target-domain rows (see :mod:`sktl.domain`); each training batch adds
        to the cross-entropy of its labelled rows a loss that aligns the
        backbone's features of its source and target rows: Deep CORAL
        (covariances), multi-kernel MMD (DAN), or DANN (a domain
        discriminator behind a gradient-reversal layer). Needs
        ``unfreeze >= 1``. ``None``: ``-1`` is an ordinary label.
    domain_weight : float, default=1.0
        Weight of the domain loss.
    verbose : int, default=0
        ``1`` prints an epoch log and progress bars for feature extraction
        and prediction; ``2`` adds a per-batch training progress bar.

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
    """

    _criterion = nn.CrossEntropyLoss
    _y_validation = {"y_numeric": False}
    _parameter_constraints = {
        **TransferEstimator._parameter_constraints,
        "domain_loss": [StrOptions(set(DOMAIN_LOSSES)), None],
        "domain_weight": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, backbone="resnet18", *, weights="DEFAULT", unfreeze=0,
                 head="linear", lr=1e-3, backbone_lr=None, max_epochs=10,
                 batch_size=32, optimizer="adamw", early_stopping=False,
                 validation_fraction=0.1, device="auto", random_state=None,
                 cache=True, cache_prefix=True, domain_loss=None, domain_weight=1.0,
                 verbose=0):
        super().__init__(backbone, weights=weights, unfreeze=unfreeze, head=head, lr=lr,
                         backbone_lr=backbone_lr, max_epochs=max_epochs,
                         batch_size=batch_size, optimizer=optimizer,
                         early_stopping=early_stopping,
                         validation_fraction=validation_fraction, device=device,
                         random_state=random_state, cache=cache,
                         cache_prefix=cache_prefix, verbose=verbose)
        self.domain_loss = domain_loss
        self.domain_weight = domain_weight

    def fit(self, X, y):
        """Fit the head (and the unfrozen blocks) on ``X``, ``y``.

        Parameters
        ----------
        X : array-like, list of str, list of PIL images or paths
            Inputs of the kind the backbone reads.
        y : array-like of shape (n_samples,)
            Class labels of any type.

        Returns
        -------
        self : TransferClassifier
        """
        return self._fit(X, y)

    def _encode_targets(self, y):
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if self.domain_loss is not None:
            return self._encode_with_target_rows(y)
        return self._encode_labelled(y)

    def _encode_with_target_rows(self, y):
        """Labels for the labelled rows; -1 marks unlabelled target rows."""
        target = is_unlabelled(y)
        if not target.any():
            raise ValueError(
                f"domain_loss={self.domain_loss!r} needs unlabelled target-domain rows: "
                "stack them with the source rows in X and give them the label -1 "
                "in y (sktl.domain.UNLABELLED).")
        targets, n_classes, attrs = self._encode_labelled(y[~target])
        full = np.full(len(y), -1, dtype=np.int64)
        full[~target] = targets
        return full, n_classes, attrs

    def _encode_labelled(self, y):
        encoder = LabelEncoder().fit(y)
        if len(encoder.classes_) < 2:
            raise ValueError(
                f"y contains only one class ({encoder.classes_[0]!r}); a "
                "classifier needs samples of at least two classes."
            )
        targets = encoder.transform(y).astype(np.int64)
        return targets, len(encoder.classes_), {"classes_": encoder.classes_}

    def _stratify(self, targets):
        # Soft targets (distillation) carry the hard label in column 0.
        return targets if targets.ndim == 1 else targets[:, 0]

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
