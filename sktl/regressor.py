"""TransferRegressor: a pretrained backbone with a new regression head."""

from __future__ import annotations

import numpy as np
from sklearn.base import RegressorMixin

from ._base import TransferEstimator
from ._engine import check_finite
from .losses import MSELoss

__all__ = ["TransferRegressor"]


class TransferRegressor(RegressorMixin, TransferEstimator):
    """Regressor that transfers a pretrained backbone to a new target.

    Same backbone handling, freezing and training as
    :class:`~sktl.TransferClassifier`; the head outputs one value per target
    and is trained with the mean squared error on standardised targets.

    Parameters
    ----------
    backbone, weights, unfreeze, head
        As in :class:`~sktl.TransferClassifier`.
    criterion : sktl.losses.Loss, torch loss or None, default=None
        What training minimises (see :mod:`sktl.losses`), on the
        standardised targets: ``None`` is :class:`~sktl.losses.MSELoss`; a
        plain torch loss (``nn.HuberLoss()``) gets ``(outputs, y)``.
    lr, backbone_lr, lr_schedule, max_epochs, batch_size, optimizer, early_stopping, augment, callbacks, device, random_state, cache, verbose, precision
        As in :class:`~sktl.TransferClassifier`.

    Attributes
    ----------
    n_features_in_ : int
        Number of features, for array inputs only.
    backbone_ : sktl.backbones.Backbone
        The fine-tuned backbone.
    module_ : torch.nn.Module
        Backbone plus head.
    history_ : skorch.History
        Per-epoch training log.
    n_blocks_ : int
        Number of blocks ``unfreeze`` counts from.
    device_ : str
        Device the model lives on.

    See Also
    --------
    TransferClassifier : The same for class labels.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktl import TransferRegressor
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(80, 3)).astype("float32")
    >>> y = X @ np.array([1.0, -2.0, 0.5])
    >>> reg = TransferRegressor(nn.Sequential(nn.Linear(3, 16), nn.Tanh()),
    ...                         unfreeze="all", lr=0.02, max_epochs=40,
    ...                         random_state=0).fit(X, y)
    >>> reg.score(X, y) > 0.9
    True
    """

    _default_criterion = MSELoss
    _saved_attributes = (*TransferEstimator._saved_attributes, "_y_mean", "_y_scale",
                         "_y_1d")

    def _safe_n_outputs(self):
        return len(self._y_mean)

    def _check_criterion(self, criterion):
        super()._check_criterion(criterion)
        if criterion.uses_unlabelled or criterion.uses_soft_targets:
            raise ValueError(
                f"criterion={type(criterion).__name__}(...) learns class labels (unlabelled "
                "rows, a teacher's probabilities); TransferRegressor fits numeric targets: "
                "use MSELoss (the default), a torch regression loss, or TransferClassifier.")
    _y_validation = {"y_numeric": True, "multi_output": True}

    def fit(self, X, y, sample_weight=None):
        """Fit on inputs ``X`` and targets ``y`` of shape (n,) or (n, n_targets).

        Parameters
        ----------
        X : array-like, list of str, list of PIL images or paths
            Inputs of the kind the backbone reads.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Targets; every row is labelled (NaN is refused).
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the rows in the loss, as in
            :meth:`sktl.TransferClassifier.fit`.

        Returns
        -------
        self : TransferRegressor
        """
        return self._fit(X, y, sample_weight=sample_weight)

    def _encode_targets(self, y, criterion):
        y = np.asarray(y, dtype=np.float64)
        one_d = y.ndim == 1
        if one_d:
            y = y[:, None]
        if not np.isfinite(y).all():
            raise ValueError("Input y contains NaN or infinity.")
        with np.errstate(over="ignore", invalid="ignore"):
            mean, scale = y.mean(axis=0), y.std(axis=0)
        if not (np.isfinite(mean).all() and np.isfinite(scale).all()):
            raise ValueError(f"y holds values up to {np.abs(y).max():.3g}, too large for "
                             "their mean and spread in float64; scale the targets (e.g. "
                             "TransformedTargetRegressor with a StandardScaler).")
        scale[scale == 0] = 1.0
        targets = ((y - mean) / scale).astype(np.float32)
        attrs = {"_y_mean": mean, "_y_scale": scale, "_y_1d": one_d}
        return targets, y.shape[1], attrs

    def _stratify(self, targets):
        return None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X):
        """Predicted targets, shaped like the ``y`` seen in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_targets)
        """
        with np.errstate(over="ignore", invalid="ignore"):
            out = self._forward(X).astype(np.float64) * self._y_scale + self._y_mean
        check_finite(out, "The predictions", "the targets' scale makes them overflow "
                     "float64 for these inputs; scale the targets in fit (e.g. "
                     "TransformedTargetRegressor with a StandardScaler)")
        return out[:, 0] if self._y_1d else out
