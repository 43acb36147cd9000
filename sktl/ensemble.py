"""SubdomainEnsembleClassifier: one transfer model per source subdomain, combined."""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import ClassVar

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    MetaEstimatorMixin,
    _fit_context,
    clone,
)
from sklearn.cluster import KMeans
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _num_samples,
    check_array,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from ._atomic import atomic_fit
from ._constraints import Count
from ._labels import check_label_types
from ._streaming import default_chunk_size, is_stream, map_chunks

__all__ = ["SubdomainEnsembleClassifier"]

_SEED_MAX = np.iinfo(np.int32).max


class SubdomainEnsembleClassifier(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """Multi-level transfer: one expert per source subdomain, combined per sample.

    The source domain is split into subdomains -- given per row as
    ``groups`` in :meth:`fit` (a dataset, a site, a product category...),
    or found by ``KMeans(n_subdomains)`` on the ``featurizer``'s features.
    A clone of ``estimator`` (the expert; typically a
    :class:`~sktl.TransferClassifier` or a pipeline on a shared pretrained
    backbone) is fitted on the rows of each subdomain, and the experts'
    class probabilities are combined according to ``combine``:

    ``"similarity"`` (mixture of experts)
        A multinomial logistic regression (the *gate*, on standardised
        featurizer features) learns ``P(subdomain k | x)`` from the training
        rows. It measures how similar a sample is to each subdomain (by
        default with equal prior weight per subdomain, see
        ``subdomain_prior``); its probabilities, sharpened
        (``temperature < 1``) or flattened (``temperature > 1``) as
        ``w_k ∝ P(k | x) ** (1 / temperature)``, weight the experts:
        ``P(y | x) = sum_k w_k(x) P_k(y | x)``. A target sample that resembles
        subdomain ``k`` is mostly decided by expert ``k``.
    ``"stacking"``
        A ``LogisticRegression`` meta-classifier (``final_estimator_``) is
        trained on the concatenated expert probabilities of every training
        row. Expert ``k``'s probabilities on the rows of its own subdomain
        are out-of-fold (``cv`` folds within subdomain ``k``, each fold
        predicted by a clone fitted on the other folds), so the
        meta-classifier never sees an expert judged on its own training rows;
        on the other subdomains' rows the fully fitted expert is used (it never
        saw them). The meta-classifier learns one *global* weighting of the
        experts: it does not route samples (use ``"similarity"`` for that).
        Costs ``cv`` extra fits per subdomain.
    ``"mean"``
        The uniform average of the experts (a baseline).

    With a ``featurizer``, the experts see ``X`` as given (texts, images...);
    without one, ``X`` must be numeric and the experts get it as a validated
    array (a DataFrame is passed on as is). Only the subdomain clustering and
    the gate use the featurizer's features. With a
    :class:`~sktl.FeatureExtractor` featurizer and experts on the same
    backbone, the feature cache shares the backbone's work between them.

    Parameters
    ----------
    estimator : classifier
        The expert, cloned once per subdomain; must implement
        ``predict_proba``. It is never modified; each clone keeps its own
        parameters (set ``random_state`` on it for reproducible experts).
    featurizer : transformer or None, default=None
        Fitted once on all training rows (``featurizer_``); its output is what
        the clustering and the gate see. ``None`` uses ``X`` itself, which
        must then be numeric and finite. KMeans and the gate are not scale
        invariant in the same way: pass a ``StandardScaler`` (or a pipeline)
        here if the raw feature scales differ widely.
    n_subdomains : int or None, default=None
        Find this many subdomains with ``KMeans(n_subdomains, n_init=10)`` on
        the features when ``groups`` is not passed to :meth:`fit` (a cluster
        of fewer than 2 rows is an error: lower ``n_subdomains``). ``1`` fits
        a single expert on all rows (the pooled model; a useful grid-search
        candidate). Leave it ``None`` when passing ``groups``: giving both is
        an error.
    combine : {"similarity", "stacking", "mean"}, default="similarity"
        How the experts' probabilities are combined (see above).
    temperature : float > 0, default=1.0
        Gate temperature for ``combine="similarity"``: ``-> 0`` picks the most
        similar subdomain's expert only, ``-> inf`` tends to ``"mean"``.
    subdomain_prior : {"uniform", "empirical"}, default="uniform"
        Prior ``P(k)`` of the gate of ``combine="similarity"``. ``"uniform"``
        trains it with ``class_weight="balanced"``: the weights then say how
        much a sample looks like each subdomain, whatever its size (a target
        sample resembling a small source subdomain is not outvoted by a large
        one). ``"empirical"``: proportional to each subdomain's training rows.
    cv : int >= 2 or cross-validation splitter, default=5
        Folds within each subdomain for the out-of-fold probabilities of
        ``combine="stacking"`` (ignored otherwise). An int uses
        ``StratifiedKFold`` (``KFold`` when a class of the subdomain has
        fewer rows than folds), shuffled with ``random_state``, and never more
        folds than the subdomain has rows. A splitter must partition the rows
        (every row in exactly one test fold) and must not need ``groups``.
    random_state : int, RandomState or None, default=None
        Seeds KMeans and the shuffling of the stacking folds.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.
    subdomains_ : ndarray of shape (n_subdomains,)
        Subdomain labels, sorted: the distinct ``groups`` values, or
        ``0 .. n_subdomains - 1`` for KMeans clusters.
    estimators_ : list of fitted estimators
        One per subdomain, in the order of ``subdomains_``. A subdomain whose
        rows hold a single class gets a
        ``DummyClassifier(strategy="prior")`` (it always predicts that class,
        with a warning) instead of a clone of ``estimator``, which could not
        be fitted on one class.
    subdomain_counts_ : ndarray of shape (n_subdomains,)
        Training rows per subdomain.
    featurizer_ : transformer or None
        The fitted clone of ``featurizer``.
    clusterer_ : KMeans or None
        The fitted clustering (``None`` when ``groups`` were given or
        ``n_subdomains=1``).
    gate_ : Pipeline or None
        ``StandardScaler`` + ``LogisticRegression(class_weight="balanced"`` with
        ``subdomain_prior="uniform"``) predicting the subdomain index
        (``combine="similarity"`` with at least 2 subdomains; else ``None``).
    final_estimator_ : LogisticRegression or None
        The meta-classifier of ``combine="stacking"``; else ``None``.
    n_features_in_ : int
        Number of input features (when ``featurizer`` is None, or when the
        fitted featurizer defines it).
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Defined when ``X`` had string column names and ``featurizer`` is None.

    See Also
    --------
    sklearn.ensemble.StackingClassifier : Stacking of different estimators on
        the same rows.

    Notes
    -----
    The gate is linear in the features: subdomains that differ only beyond
    their means are hard for it to tell apart. In particular, if each
    subdomain was standardised on its own (equal feature means), its optimum
    is a zero weight vector and it returns the prior for every sample:
    ``"similarity"`` then equals ``"mean"`` (uniform prior). Give it features
    computed before such per-domain normalisation (via ``featurizer``).

    ``groups`` is a :meth:`fit` argument. ``GridSearchCV(...).fit(X, y,
    groups=g)`` gives it to the CV splitter only; to send it to this
    estimator too, enable metadata routing
    (``sklearn.set_config(enable_metadata_routing=True)``) and request it with
    ``set_fit_request(groups=True)``. Without routing, search over
    ``n_subdomains`` instead.

    Examples
    --------
    Two subdomains whose classes are separated in opposite directions: one
    linear model cannot fit both, one per subdomain can.

    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sktl import SubdomainEnsembleClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.normal([-3, 0], 1, (100, 2)), rng.normal([3, 0], 1, (100, 2))]
    >>> groups = np.repeat(["left", "right"], 100)
    >>> y = np.r_[X[:100, 1] > 0, X[100:, 1] < 0].astype(int)
    >>> round(LogisticRegression().fit(X, y).score(X, y), 2)
    0.56
    >>> model = SubdomainEnsembleClassifier(LogisticRegression()).fit(X, y, groups=groups)
    >>> model.subdomains_
    array(['left', 'right'], dtype='<U5')
    >>> round(model.score(X, y), 2)
    0.99
    >>> model = SubdomainEnsembleClassifier(LogisticRegression(), n_subdomains=2,
    ...                                     random_state=0).fit(X, y)
    >>> model.subdomain_counts_
    array([100, 100])
    >>> round(model.score(X, y), 2)
    0.99
    >>> model.predict_proba(X[:1]).round(2)
    array([[0.29, 0.71]])
    """

    _parameter_constraints: ClassVar[dict] = {
        "estimator": [HasMethods(["fit"])],
        "featurizer": [HasMethods(["fit", "transform"]), None],
        "n_subdomains": [Count(1), None],
        "combine": [StrOptions({"similarity", "stacking", "mean"})],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "subdomain_prior": [StrOptions({"uniform", "empirical"})],
        "cv": [Count(2), HasMethods(["split"])],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator, *, featurizer=None, n_subdomains=None,
                 combine="similarity", temperature=1.0, subdomain_prior="uniform", cv=5,
                 random_state=None):
        self.estimator = estimator
        self.featurizer = featurizer
        self.n_subdomains = n_subdomains
        self.combine = combine
        self.temperature = temperature
        self.subdomain_prior = subdomain_prior
        self.cv = cv
        self.random_state = random_state

    # -- fit -----------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=False)
    @atomic_fit
    def fit(self, X, y, groups=None):
        """Fit one expert per subdomain, then the combination.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or what the
            experts and ``featurizer`` accept (e.g. a list of texts)
            Training rows of all subdomains.
        y : array-like of shape (n_samples,)
            Class labels.
        groups : array-like of shape (n_samples,), default=None
            Subdomain of each row (any sortable labels). When ``None``,
            ``n_subdomains`` subdomains are found by KMeans.

        Returns
        -------
        self : SubdomainEnsembleClassifier
            The fitted estimator.
        """
        name = type(self).__name__
        if groups is None and self.n_subdomains is None:
            raise ValueError(
                f"{name} needs subdomains: pass groups=<subdomain of each row> to fit, "
                "or set n_subdomains=k to find k subdomains by KMeans.")
        if groups is not None and self.n_subdomains is not None:
            raise ValueError(
                f"groups were passed to fit and n_subdomains={self.n_subdomains} is set: "
                "it is ambiguous which defines the subdomains. Use groups with "
                "n_subdomains=None, or n_subdomains without groups.")
        if not hasattr(self.estimator, "predict_proba"):
            raise ValueError(
                f"estimator {self.estimator!r} has no predict_proba, which {name} needs to "
                "combine its experts; e.g. use SVC(probability=True), or wrap it in "
                "CalibratedClassifierCV.")

        Xv = self._validate_X(X, reset=True)
        n = _num_samples(X if Xv is None else Xv)
        check_label_types(y)
        y = column_or_1d(y, warn=True)
        check_consistent_length(X if Xv is None else Xv, y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y contains only one class ({_py(self.classes_[0])!r}); {name} needs samples "
                "of at least 2 classes.")

        if groups is not None:  # checked before the (possibly costly) featurizer runs
            labels, index = self._check_groups(groups, n)
            self._check_sizes(labels, index, "merge them with another subdomain")
        elif self.n_subdomains > n:
            raise ValueError(
                f"n_subdomains={self.n_subdomains} is more than the {n} training rows; "
                "lower n_subdomains.")

        rng = check_random_state(self.random_state)
        self.featurizer_ = None
        if self.featurizer is not None:
            self.featurizer_ = clone(self.featurizer).fit(X)
            if hasattr(self.featurizer_, "n_features_in_"):
                self.n_features_in_ = self.featurizer_.n_features_in_
        needs_features = groups is None or self.combine == "similarity"
        F = self._features(X, Xv) if needs_features else None

        # Subdomains.
        self.clusterer_ = None
        if groups is None:
            seed = rng.randint(_SEED_MAX)
            labels = np.arange(self.n_subdomains)
            if self.n_subdomains == 1:
                index = np.zeros(n, dtype=np.intp)
            else:
                self.clusterer_ = KMeans(n_clusters=self.n_subdomains, n_init=10,
                                         random_state=seed).fit(F)
                index = self.clusterer_.labels_.astype(np.intp)
                self._check_sizes(labels, index, "lower n_subdomains or pass groups")
        self.subdomains_ = labels
        self.subdomain_counts_ = np.bincount(index, minlength=len(labels))
        rows = [np.flatnonzero(index == k) for k in range(len(labels))]

        # Experts.
        X = self._expert_input(X, Xv)
        self.estimators_ = [self._fit_expert(X, y, r, subdomain=lab)
                            for lab, r in zip(labels, rows)]

        # Combination.
        self.gate_ = None
        self.final_estimator_ = None
        if self.combine == "similarity" and len(labels) > 1:
            balance = "balanced" if self.subdomain_prior == "uniform" else None
            self.gate_ = make_pipeline(
                StandardScaler(), LogisticRegression(max_iter=1000, class_weight=balance))
            self.gate_.fit(F, index)
        elif self.combine == "stacking":
            meta = self._stacking_features(X, y, rows, rng)
            self.final_estimator_ = LogisticRegression(max_iter=1000).fit(meta, y)
        return self

    def _validate_X(self, X, reset):
        """Numeric check of ``X`` when it is the feature matrix itself."""
        if self.featurizer is not None:
            if reset:  # the featurizer describes the input; drop a last fit's
                for name in ("n_features_in_", "feature_names_in_"):
                    self.__dict__.pop(name, None)
            return None
        return validate_data(self, X, reset=reset, dtype=np.float64,
                             ensure_min_samples=2 if reset else 1)

    def _expert_input(self, X, Xv):
        """What the experts see: ``X`` as given with a featurizer, else the validated
        array (a DataFrame stays one, for column-based pipelines)."""
        if Xv is None or hasattr(X, "columns"):
            return X
        return Xv

    def _features(self, X, Xv):
        if self.featurizer_ is None:
            return Xv
        F = self.featurizer_.transform(X)
        return check_array(F, dtype=np.float64, input_name="featurizer output")

    def _check_groups(self, groups, n):
        groups = np.asarray(groups)
        if groups.ndim != 1:
            raise ValueError(
                f"groups must be 1-D, one subdomain label per row; got shape {groups.shape}.")
        if len(groups) != n:
            raise ValueError(
                f"groups has {len(groups)} entries but X has {n} rows: pass one subdomain "
                "label per row.")
        try:
            labels, index = np.unique(groups, return_inverse=True)
        except TypeError as exc:
            raise ValueError(
                "groups must hold labels of one sortable type (all strings or all numbers); "
                f"sorting them failed: {exc}") from None
        return labels, index.ravel().astype(np.intp)

    @staticmethod
    def _check_sizes(labels, index, how):
        counts = np.bincount(index, minlength=len(labels))
        small = [(lab, c) for lab, c in zip(labels, counts) if c < 2]
        if small:
            found = ", ".join(f"{_py(lab)!r} ({c} row{'s' if c != 1 else ''})"
                              for lab, c in small)
            raise ValueError(
                f"Every subdomain needs at least 2 training rows; too small: {found}. "
                f"Add rows or {how}.")

    def _fit_expert(self, X, y, rows, subdomain=None):
        Xk, yk = _safe_indexing(X, rows), y[rows]
        present = np.unique(yk)
        if len(present) < 2:
            if subdomain is not None:
                warnings.warn(
                    f"Subdomain {_py(subdomain)!r} holds only class {_py(present[0])!r}: "
                    "its expert is a constant DummyClassifier predicting that class.", UserWarning,
                    stacklevel=3)
            return DummyClassifier(strategy="prior").fit(Xk, yk)
        return clone(self.estimator).fit(Xk, yk)

    def _stacking_features(self, X, y, rows, rng):
        """Expert probabilities of every training row, out-of-fold on its own subdomain."""
        n_classes = len(self.classes_)
        blocks = [self._aligned_proba(est, X) for est in self.estimators_]
        for k, r in enumerate(rows):
            Xk, yk = _safe_indexing(X, r), y[r]
            oof = np.full((len(r), n_classes), np.nan)
            for train, test in self._splitter(yk, rng).split(Xk, yk):
                fold = self._fit_expert(Xk, yk, train)
                oof[test] = self._aligned_proba(fold, _safe_indexing(Xk, test))
            if np.isnan(oof).any():
                raise ValueError(
                    f"cv={self.cv!r} left some rows of subdomain "
                    f"{_py(self.subdomains_[k])!r} out of every test fold; stacking needs a "
                    "splitter that partitions the rows (KFold-like).")
            blocks[k][r] = oof
        return np.hstack(blocks)

    def _splitter(self, yk, rng):
        if not isinstance(self.cv, Integral):
            return self.cv
        n_splits = min(self.cv, len(yk))
        seed = rng.randint(_SEED_MAX)
        if np.unique(yk, return_counts=True)[1].min() >= n_splits:
            return StratifiedKFold(n_splits, shuffle=True, random_state=seed)
        return KFold(n_splits, shuffle=True, random_state=seed)

    # -- predict -------------------------------------------------------------
    def _aligned_proba(self, expert, X):
        """``expert.predict_proba(X)`` with columns in the order of ``classes_``."""
        proba = expert.predict_proba(X)
        position = {c: i for i, c in enumerate(self.classes_.tolist())}
        cols = [position[c] for c in np.asarray(expert.classes_).tolist()]
        out = np.zeros((proba.shape[0], len(self.classes_)))
        out[:, cols] = proba
        return out

    def _gate_weights(self, F):
        """Subdomain weights ``w_k(x)`` of ``combine="similarity"``, rows sum to 1."""
        if self.gate_ is None:
            return np.ones((F.shape[0], 1))
        logw = self.gate_.predict_log_proba(F) / self.temperature
        logw -= logw.max(axis=1, keepdims=True)
        w = np.exp(logw)
        return w / w.sum(axis=1, keepdims=True)

    def predict_proba(self, X):
        """Class probabilities of the combined experts.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or what the
            experts and ``featurizer`` accept
            Samples.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.
        """
        check_is_fitted(self)
        if is_stream(X):  # a generator, memmap or folder: chunk by chunk
            return map_chunks(self.predict_proba, X, chunk_size=default_chunk_size(X))
        Xv = self._validate_X(X, reset=False)
        Xe = self._expert_input(X, Xv)
        probas = [self._aligned_proba(est, Xe) for est in self.estimators_]
        if self.combine == "stacking":
            return self.final_estimator_.predict_proba(np.hstack(probas))
        if self.combine == "mean" or len(probas) == 1:
            return np.mean(probas, axis=0)
        w = self._gate_weights(self._features(X, Xv))
        return np.einsum("nk,knc->nc", w, np.stack(probas))

    def predict(self, X):
        """Most probable class of each sample.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or what the
            experts and ``featurizer`` accept
            Samples.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            Predicted labels.
        """
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def _py(value):
    """A numpy scalar as the Python scalar it holds (readable in messages)."""
    return value.item() if isinstance(value, np.generic) else value
