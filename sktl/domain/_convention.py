"""How rows are marked as target domain: masked labels.

Source and target rows are stacked in one ``X``. ``y`` holds the source
labels and :data:`UNLABELLED` (``-1``) for every unlabelled target row, the
convention of scikit-learn's semi-supervised estimators
(``SelfTrainingClassifier``). Why this rather than a separate domain array
routed as metadata (skada's ``sample_domain``): ``y`` already travels with
``X`` through every stock tool (``Pipeline``, ``GridSearchCV``,
``cross_validate``, CV splitters index both together), so nothing needs
``sklearn.set_config(enable_metadata_routing=True)`` and nothing can get out
of step with the rows. The few cases it cannot express (labelled target rows)
take an optional ``sample_domain`` fit parameter: ``1`` source, ``0`` target.

The one thing the convention asks of a pipeline is that its final classifier
never learns ``-1`` as a class: :class:`SkipUnlabelled` wraps any estimator
so that it fits on labelled rows only, and :func:`make_da_pipeline` adds it.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.pipeline import make_pipeline
from sklearn.utils import _safe_indexing
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

__all__ = ["UNLABELLED", "SkipUnlabelled", "domain_masks", "is_unlabelled", "make_da_pipeline"]

#: Label of an unlabelled target-domain row.
UNLABELLED = -1


def domain_masks(y, sample_domain=None, *, n_samples=None):
    """Boolean masks ``(source, target)`` for the rows of a fit.

    Parameters
    ----------
    y : array-like of shape (n_samples,) or None
        Labels, :data:`UNLABELLED` for unlabelled target rows.
    sample_domain : array-like of shape (n_samples,), optional
        ``1`` (or any positive value) for source rows, ``0`` or negative for
        target rows; overrides ``y`` (use it for labelled target rows).
    n_samples : int, optional
        Number of rows, when ``y`` is None (then every row is target).

    Returns
    -------
    source, target : ndarray of bool
    """
    if sample_domain is not None:
        domain = np.asarray(sample_domain)
        if domain.dtype.kind == "O":  # numbers in an object array (a mixed DataFrame)
            try:
                domain = domain.astype(float)
            except (TypeError, ValueError):
                pass
        if domain.dtype.kind not in "biuf":
            raise TypeError(
                f"sample_domain must be numeric or boolean (1 or True for source rows, "
                f"0 or False for target rows); got dtype {domain.dtype}.")
        source = domain.reshape(-1) > 0
    elif y is None:
        source = np.zeros(n_samples, dtype=bool)
    else:
        source = ~is_unlabelled(y)
    return source, ~source


def is_unlabelled(y):
    """Rows of ``y`` marked :data:`UNLABELLED` (works for str or numeric y)."""
    y = np.asarray(y)
    if y.dtype.kind in "iuf":
        return y == UNLABELLED
    return np.array([v == UNLABELLED or v == str(UNLABELLED) for v in y], dtype=bool)


def _has(name):
    return lambda self: hasattr(self.estimator, name)


class SkipUnlabelled(MetaEstimatorMixin, BaseEstimator):
    """Fit ``estimator`` on the labelled rows only (``y != -1``).

    The last step of a domain-adaptation pipeline: the transformers before it
    use the unlabelled target rows, the classifier must not learn ``-1`` as a
    class.

    Parameters
    ----------
    estimator : estimator
        Any scikit-learn estimator; cloned in :meth:`fit`.

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone.
    classes_ : ndarray
        Its classes (never ``-1``).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sktl.domain import SkipUnlabelled
    >>> X = np.array([[0.0], [1.0], [5.0], [6.0]])
    >>> clf = SkipUnlabelled(LogisticRegression()).fit(X, [0, 1, -1, -1])
    >>> clf.classes_
    array([0, 1])
    """

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y, **fit_params):
        """Fit the clone on rows whose label is not ``-1``."""
        labelled = ~is_unlabelled(y)
        if not labelled.any():
            raise ValueError("Every row of y is -1 (unlabelled target): the classifier "
                             "needs labelled source rows to learn from.")
        rows = np.flatnonzero(labelled)
        X_l, y_l = _safe_indexing(X, rows), np.asarray(y)[rows]
        params = {k: (np.asarray(v)[rows] if _is_per_row(v, len(labelled)) else v)
                  for k, v in fit_params.items()}
        self.estimator_ = clone(self.estimator).fit(X_l, y_l, **params)
        if hasattr(self.estimator_, "classes_"):
            self.classes_ = self.estimator_.classes_
        if hasattr(self.estimator_, "n_features_in_"):
            self.n_features_in_ = self.estimator_.n_features_in_
        return self

    @available_if(_has("predict"))
    def predict(self, X):
        check_is_fitted(self)
        return self.estimator_.predict(X)

    @available_if(_has("predict_proba"))
    def predict_proba(self, X):
        check_is_fitted(self)
        return self.estimator_.predict_proba(X)

    @available_if(_has("predict_log_proba"))
    def predict_log_proba(self, X):
        check_is_fitted(self)
        return self.estimator_.predict_log_proba(X)

    @available_if(_has("decision_function"))
    def decision_function(self, X):
        check_is_fitted(self)
        return self.estimator_.decision_function(X)

    @available_if(_has("score"))
    def score(self, X, y, sample_weight=None):
        """Score on labelled rows only (unlabelled rows have no truth)."""
        check_is_fitted(self)
        labelled = ~is_unlabelled(y)
        rows = np.flatnonzero(labelled)
        X = _safe_indexing(X, rows)
        sw = None if sample_weight is None else np.asarray(sample_weight)[rows]
        return self.estimator_.score(X, np.asarray(y)[rows], sample_weight=sw)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = self.estimator.__sklearn_tags__()
        tags.estimator_type = inner.estimator_type
        tags.classifier_tags = inner.classifier_tags
        tags.regressor_tags = inner.regressor_tags
        return tags


def _is_per_row(value, n):
    return hasattr(value, "__len__") and not isinstance(value, str) and len(value) == n


def make_da_pipeline(*steps, **kwargs):
    """``make_pipeline`` whose final estimator skips unlabelled rows.

    Examples
    --------
    >>> from sklearn.svm import SVC
    >>> from sktl.domain import DomainAdaptTransformer, make_da_pipeline
    >>> pipe = make_da_pipeline(DomainAdaptTransformer("coral"), SVC(kernel="linear"))
    >>> [name for name, _ in pipe.steps]
    ['domainadapttransformer', 'skipunlabelled']
    """
    *head, last = steps
    # A predictor that also transforms (LinearDiscriminantAnalysis) is still
    # the final learner: unwrapped, it would learn UNLABELLED as a class.
    if not isinstance(last, SkipUnlabelled) and hasattr(last, "fit") and \
            (hasattr(last, "predict") or not hasattr(last, "transform")):
        last = SkipUnlabelled(last)
    return make_pipeline(*head, last, **kwargs)
