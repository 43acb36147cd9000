"""Model selection without target labels, for domain adaptation.

In unsupervised domain adaptation the target rows have no labels (they are
stacked under the source rows with ``y = -1``, see
:mod:`sktl.domain._convention`), so the usual recipe -- cross-validate, keep
the hyperparameters with the best held-out accuracy -- would measure accuracy
on the *source* domain, the one the model is not meant for. This module
provides the two pieces ``GridSearchCV`` needs to choose honestly:

* splitters that fold the labelled **source** rows and put **every target
  row in every training and every test set**: :class:`DomainKFold`,
  :class:`SourceTargetSplit`;
* scorers ``scorer(estimator, X, y)`` that read the domains from ``y``
  (``-1``: target) and never a target label:

  - :func:`prediction_entropy_scorer` -- confidence of the predictions on the
    target rows (minimum entropy, Morerio et al. 2018), optionally with a
    diversity term (information maximisation);
  - :func:`importance_weighted_scorer` -- accuracy (or log-loss) on the
    held-out source rows, weighted by ``p_target(x) / p_source(x)``
    (importance-weighted validation, Sugiyama et al. 2007; the DEV variant of
    You et al. 2019);
  - :func:`reverse_validation_scorer` -- train a copy of the model on the
    target rows with their predicted labels, test it on the source labels
    (reverse validation, Zhong et al. 2010).

:func:`target_oracle_score` measures the true target accuracy when the
target labels are known (a benchmark): it is for **reporting** only and must
never choose a model.

No unsupervised score is reliable on its own (Musgrave et al., "Benchmarking
validation methods for unsupervised domain adaptation", 2022): each one has
a known way to fail, given in its docstring. Compare several, and check them
against :func:`target_oracle_score` on a benchmark shift close to yours.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
from scipy.special import entr
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import (
    BaseCrossValidator,
    KFold,
    ShuffleSplit,
    StratifiedKFold,
    StratifiedShuffleSplit,
    cross_val_predict,
)
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import _safe_indexing
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import _num_samples

from ..domain import UNLABELLED, is_unlabelled

__all__ = [
    "DomainKFold",
    "SourceTargetSplit",
    "importance_weighted_scorer",
    "prediction_entropy_scorer",
    "reverse_validation_scorer",
    "target_oracle_score",
]

_EPS = 1e-12

_NO_TARGET = (
    "{who}: none of the rows it was given is a target row (y == -1). Unsupervised "
    "domain-adaptation scores are computed on the unlabelled target rows: stack them "
    "under the source rows in X with y = -1 (sktl.domain.UNLABELLED), and "
    "cross-validate with sktl.model_selection.DomainKFold (or SourceTargetSplit), which "
    "puts every target row in every test fold; a plain KFold/StratifiedKFold does not."
)
_NO_SOURCE = (
    "{who}: none of the rows it was given is a labelled source row (y != -1), and "
    "this score is measured against source labels. Cross-validate with "
    "sktl.model_selection.DomainKFold, whose test folds hold labelled source rows."
)


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------


def _domains(X, y, who):
    """``(y, source_mask, target_mask)`` from the ``-1`` marks of ``y``."""
    if y is None:
        raise ValueError(f"{who} needs y: its -1 entries mark the target rows, the other "
                         "entries are the source labels.")
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{who} needs a 1-D y (class labels, -1 for target rows); "
                         f"got shape {y.shape}.")
    if X is not None and _num_samples(X) != y.shape[0]:
        raise ValueError(f"{who}: X has {_num_samples(X)} rows but y has {y.shape[0]}.")
    target = is_unlabelled(y)
    return y, ~target, target


def _rows(X, mask):
    return _safe_indexing(X, np.flatnonzero(mask))


def _check_no_unlabelled_class(estimator, who):
    classes = getattr(estimator, "classes_", None)
    if classes is not None and np.any(is_unlabelled(np.asarray(classes))):
        raise ValueError(
            f"{who}: the estimator learnt -1 (the mark of an unlabelled target row) as a "
            "class. Wrap its final classifier in sktl.domain.SkipUnlabelled, or build the "
            "pipeline with sktl.domain.make_da_pipeline, which does."
        )


def _call_on_source_rows(estimator, X_source, method):
    """``estimator.<method>`` on source rows, mapped as source rows where possible.

    A domain-adaptation transformer maps a row according to its domain (CORAL
    re-colours source rows and leaves target rows as they are; subspace
    alignment projects each domain on its own subspace), and its
    ``transform`` treats every row as a target row -- what ``predict`` on
    target data needs. On source rows, that would show the final classifier
    inputs unlike the ones it was trained on. So the steps of a pipeline that
    have ``transform_source`` (as :class:`sktl.domain.DomainAdaptTransformer`
    does) map the rows with it; other steps (scalers, feature extractors)
    with ``transform``; nested pipelines step by step, by the same rule.
    Anything but a pipeline is called as it is.
    """
    if not isinstance(estimator, Pipeline):
        return getattr(estimator, method)(X_source)
    Xt = X_source
    for _, step in estimator.steps[:-1]:
        Xt = _transform_source_rows(step, Xt)
    return _call_on_source_rows(estimator.steps[-1][1], Xt, method)


def _transform_source_rows(step, X):
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return X
    if isinstance(step, Pipeline):
        for _, inner in step.steps:
            X = _transform_source_rows(inner, X)
        return X
    return step.transform_source(X) if hasattr(step, "transform_source") else step.transform(X)


def _require(estimator, method, who, hint=""):
    if not hasattr(estimator, method):
        raise TypeError(f"{who} needs an estimator with {method}(); "
                        f"{type(estimator).__name__} has none.{hint}")


# ----------------------------------------------------------------------------
# Splitters
# ----------------------------------------------------------------------------


def _source_and_target(X, y, who):
    y, source, target = _domains(X, y, who)
    if not source.any():
        raise ValueError(f"{who}: every row of y is -1 (target); there are no labelled "
                         "source rows to fold.")
    if not target.any():
        raise ValueError(
            f"{who}: no row of y is -1, so there are no target rows. Stack the unlabelled "
            "target rows under the source rows with y = -1 (sktl.domain.UNLABELLED); "
            "without target rows use an ordinary KFold/StratifiedKFold."
        )
    return y, np.flatnonzero(source), np.flatnonzero(target)


def _is_classification(y):
    return type_of_target(y) in ("binary", "multiclass")


class DomainKFold(BaseCrossValidator):
    """K-fold over the source rows; every target row in every train and test set.

    The labelled source rows (``y != -1``) are split into ``n_splits`` folds,
    stratified by class when the labels are classes and at least one class
    has ``n_splits`` rows (classes with fewer rows get scikit-learn's usual
    warning); otherwise plain folds. Split ``k``:

    * **train** = the source rows outside fold ``k`` + **all** target rows;
    * **test** = the source rows of fold ``k`` + **all** target rows.

    Why all target rows on both sides:

    * **train** -- unsupervised domain adaptation is transductive: the
      unlabelled target rows are there at training time, and an adaptation
      step (CORAL, subspace alignment, a domain loss ...) needs them in
      ``fit``. They carry ``-1``, never a label, so nothing leaks.
    * **test** -- the unsupervised scorers of this module measure the model
      *on the target rows* (prediction entropy, reverse validation) or need
      them beside the held-out source rows to estimate how target-like each
      source row is (importance-weighted validation). The held-out source rows
      are the only labelled rows the fitted model has not seen, so the scores
      that use labels use those.

    A plain ``StratifiedKFold`` would treat ``-1`` as a class: each model
    would adapt to only part of the target rows and be scored on another part.

    Indices are returned sorted, so the target rows keep their order within
    every test set (see :func:`target_oracle_score` for why that matters).

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds of the source rows, at least 2.
    shuffle : bool, default=False
        Shuffle the source rows before folding.
    random_state : int, RandomState instance or None, default=None
        Seed of the shuffle; only with ``shuffle=True``.

    See Also
    --------
    SourceTargetSplit : one train/test split of the source rows.

    Examples
    --------
    >>> import numpy as np
    >>> from sktl.model_selection import DomainKFold
    >>> y = np.array([0, 0, 1, 1, -1, -1])  # 4 source rows, 2 target rows
    >>> for train, test in DomainKFold(n_splits=2).split(np.zeros((6, 1)), y):
    ...     print(train, test)
    [1 3 4 5] [0 2 4 5]
    [0 2 4 5] [1 3 4 5]
    """

    def __init__(self, n_splits=5, *, shuffle=False, random_state=None):
        if not isinstance(n_splits, Integral) or isinstance(n_splits, bool) or n_splits < 2:
            raise ValueError(f"n_splits must be an int of at least 2; got {n_splits!r}.")
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle must be True or False; got {shuffle!r}.")
        if not shuffle and random_state is not None:
            raise ValueError("Setting a random_state has no effect since shuffle is False. "
                             "Leave random_state at None, or set shuffle=True.")
        self.n_splits = int(n_splits)
        self.shuffle = shuffle
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits, ``n_splits``."""
        return self.n_splits

    def split(self, X, y, groups=None):
        """Yield ``(train, test)`` row indices.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Source and target rows, stacked.
        y : array-like of shape (n_samples,)
            Source labels, ``-1`` for the target rows.
        groups : ignored
            Accepted for compatibility with the splitter API.

        Yields
        ------
        train, test : ndarray of int
            Sorted row indices.
        """
        y, src, tgt = _source_and_target(X, y, type(self).__name__)
        if self.n_splits > src.size:
            raise ValueError(f"Cannot have n_splits={self.n_splits} greater than the "
                             f"number of source rows ({src.size}).")
        y_src = y[src]
        kwargs = {"shuffle": self.shuffle, "random_state": self.random_state}
        if _is_classification(y_src) and np.unique(y_src, return_counts=True)[1].max() \
                >= self.n_splits:
            inner = StratifiedKFold(self.n_splits, **kwargs)
        else:
            if _is_classification(y_src):
                warnings.warn(f"Every class has fewer than n_splits={self.n_splits} source "
                              "rows: the folds are not stratified.", UserWarning,
                              stacklevel=2)
            inner = KFold(self.n_splits, **kwargs)
        for train, test in inner.split(np.zeros((src.size, 1)), y_src):
            yield np.sort(np.r_[src[train], tgt]), np.sort(np.r_[src[test], tgt])


class SourceTargetSplit(BaseCrossValidator):
    """One split: hold out part of the source rows; all target rows on both sides.

    The single-split version of :class:`DomainKFold`, for models too slow to
    fit ``n_splits`` times: ``test_size`` of the source rows (stratified by
    class where possible) plus all target rows form the test set, the rest
    of the source rows plus all target rows the training set. See
    :class:`DomainKFold` for why the target rows are on both sides.

    Parameters
    ----------
    test_size : float or int, default=0.25
        Fraction (float in (0, 1)) or number (int) of source rows held out.
    random_state : int, RandomState instance or None, default=None
        Seed of the draw.

    Examples
    --------
    >>> import numpy as np
    >>> from sktl.model_selection import SourceTargetSplit
    >>> y = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1, -1])
    >>> train, test = next(SourceTargetSplit(0.5, random_state=0).split(y[:, None], y))
    >>> np.sort(y[train]), np.sort(y[test])
    (array([-1, -1,  0,  0,  1,  1]), array([-1, -1,  0,  0,  1,  1]))
    """

    def __init__(self, test_size=0.25, *, random_state=None):
        if isinstance(test_size, bool) or not isinstance(test_size, (Integral, Real)):
            raise TypeError(f"test_size must be a float or an int; got {test_size!r}.")
        self.test_size = test_size
        self.random_state = random_state

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits: 1."""
        return 1

    def split(self, X, y, groups=None):
        """Yield one ``(train, test)`` pair of sorted row indices (see
        :meth:`DomainKFold.split`)."""
        y, src, tgt = _source_and_target(X, y, type(self).__name__)
        y_src = y[src]
        dummy = np.zeros((src.size, 1))
        splitter = ShuffleSplit(1, test_size=self.test_size, random_state=self.random_state)
        if _is_classification(y_src):
            try:  # needs >= 2 rows a class and room for every class on each side
                stratified = StratifiedShuffleSplit(1, test_size=self.test_size,
                                                    random_state=self.random_state)
                train, test = next(stratified.split(dummy, y_src))
            except ValueError:
                train, test = next(splitter.split(dummy))
        else:
            train, test = next(splitter.split(dummy))
        yield np.sort(np.r_[src[train], tgt]), np.sort(np.r_[src[test], tgt])


# ----------------------------------------------------------------------------
# Scorers
# ----------------------------------------------------------------------------


def prediction_entropy_scorer(estimator, X, y, *, diversity=False):
    """Minus the mean entropy of the predicted class probabilities on the target rows.

    The minimum-entropy criterion of Morerio et al. (ICLR 2018): of two models
    the one that is more confident on the target domain is preferred, in the
    hope that confidence follows correctness. Only ``predict_proba`` of the
    target rows (``y == -1``) is used; no label is read.

    **Known failure.** Confidence is not correctness: a model that predicts
    one class for every target row with probability near 1 -- exactly what an
    unadapted model does when the target is shifted far across its decision
    boundary -- has entropy near 0 and wins. ``diversity=True`` adds the
    entropy of the *mean* prediction, which is largest when the classes are
    predicted in equal shares (the information-maximisation score, the mutual
    information between a row and its predicted class: Krause et al. 2010,
    Shi & Sha 2012); it defeats that collapse but assumes roughly balanced
    target classes. Use this scorer together with
    :func:`reverse_validation_scorer` and :func:`importance_weighted_scorer`,
    not alone. It also compares probabilities, so the candidates should be
    calibrated alike (an ``SVC(probability=True)`` and a
    ``LogisticRegression`` are not).

    Parameters
    ----------
    estimator : fitted classifier with ``predict_proba``
        For example a pipeline from :func:`sktl.domain.make_da_pipeline`.
    X : array-like
        Rows of both domains; those with ``y == -1`` are scored.
    y : array-like of shape (n_samples,)
        Labels, ``-1`` for target rows; only the ``-1`` marks are read.
    diversity : bool, default=False
        Add the entropy of the mean predicted distribution (see above).

    Returns
    -------
    score : float
        ``-mean_i H(p_i)`` in nats (``0`` is the maximum), plus ``H(mean_i p_i)``
        with ``diversity=True``. Higher is better.

    Raises
    ------
    ValueError
        No target row (``y == -1``) among the rows, or a classifier that learnt
        ``-1`` as a class.
    TypeError
        The estimator has no ``predict_proba``.

    Examples
    --------
    >>> import numpy as np
    >>> from functools import partial
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sktl.domain import make_da_pipeline
    >>> from sktl.model_selection import prediction_entropy_scorer
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.randn(40, 2), rng.randn(40, 2) + 1]  # 40 source, 40 target rows
    >>> y = np.r_[(X[:40, 0] > 0).astype(int), -np.ones(40, dtype=int)]
    >>> model = make_da_pipeline(LogisticRegression()).fit(X, y)
    >>> bool(prediction_entropy_scorer(model, X, y) <= 0)
    True
    >>> im_scorer = partial(prediction_entropy_scorer, diversity=True)  # for scoring=
    """
    who = "prediction_entropy_scorer"
    _, _, target = _domains(X, y, who)
    if not target.any():
        raise ValueError(_NO_TARGET.format(who=who))
    _check_no_unlabelled_class(estimator, who)
    _require(estimator, "predict_proba", who,
             " For an SVC set probability=True; for other models see "
             "sklearn.calibration.CalibratedClassifierCV.")
    proba = np.asarray(estimator.predict_proba(_rows(X, target)), dtype=np.float64)
    score = -float(entr(proba).sum(axis=1).mean())
    if diversity:
        score += float(entr(proba.mean(axis=0)).sum())
    return score


def _importance_weights(X, source, target, *, domain_classifier, cv, max_weight,
                        random_state):
    """``p_target(x) / p_source(x)`` for the source rows, mean 1 then clipped."""
    n_s, n_t = int(source.sum()), int(target.sum())
    is_target = target.astype(np.int64)
    if domain_classifier is None:
        domain_classifier = make_pipeline(StandardScaler(),
                                          LogisticRegression(C=0.1, max_iter=1000))
    n_folds = min(int(cv), n_s, n_t)
    if n_folds >= 2:
        folds = StratifiedKFold(n_folds, shuffle=True, random_state=random_state)
        p = cross_val_predict(clone(domain_classifier), X, is_target, cv=folds,
                              method="predict_proba")[:, 1]
    else:  # too few rows to cross-fit
        p = clone(domain_classifier).fit(X, is_target).predict_proba(X)[:, 1]
    p = np.clip(p[source], 1e-6, 1 - 1e-6)
    ratio = p / (1 - p) * (n_s / n_t)
    weights = ratio / ratio.mean()
    return np.minimum(weights, max_weight)


def importance_weighted_scorer(estimator, X, y, *, metric="accuracy", variant="iwv",
                               domain_classifier=None, cv=5, max_weight=10.0,
                               random_state=0):
    """Importance-weighted accuracy (or log-loss) on the held-out source rows.

    Importance-weighted validation (IWV, Sugiyama, Krauledat & Müller, JMLR
    2007): the expected loss on the target domain equals the expected loss on
    the source domain with each source row weighted by
    ``w(x) = p_target(x) / p_source(x)``. The scorer estimates ``w`` with a
    domain classifier (source vs target rows of the test fold), then averages
    the model's 0-1 loss (or log-loss) over the **labelled source rows of the
    test fold** -- rows the model has not been trained on when the split is
    :class:`DomainKFold` -- with those weights. Target labels are never read.

    How the weights are estimated:

    * the domain classifier (default: standardise, then
      ``LogisticRegression(C=0.1)``) is trained to tell the test fold's target
      rows from its source rows; ``w = P(t|x) / P(s|x) * n_s / n_t``
      (Bickel et al., ICML 2007). A logistic regression models the log of the
      density ratio as linear in ``x``: pass another ``domain_classifier``
      where that is far off;
    * **cross-fitted**: each row's probability comes from a classifier that
      did not see that row (``cv`` folds), since in-sample probabilities of
      a well separated pair of domains are near 0 and 1 and give absurd
      weights;
    * the weights are scaled to mean 1 and **clipped** at ``max_weight``, and
      the estimate is self-normalised (``sum(w * loss) / sum(w)``): a handful
      of source rows that look like target rows cannot decide the score.

    **Which X the domain classifier sees: the raw input**, as given to the
    scorer, not ``estimator[:-1].transform(X)``. The importance weights are
    properties of the data, not of the candidate: computed on the raw input
    they are the same for every candidate on a fold, so the candidates are
    compared on one weighted sample. Computed on each candidate's own features
    they would reward a candidate for making the domains indistinguishable
    (all weights 1: plain source accuracy) rather than for being right; and
    ``transform`` maps every row as a target row, so the source rows' features
    would be wrong for a domain-specific transformer anyway. It also works for
    any estimator, not only pipelines. Pass ``domain_classifier`` for inputs a
    logistic regression cannot read (text, images: e.g. a pipeline of a
    feature extractor and a classifier).

    **How the model predicts the source rows.** ``transform`` of a
    domain-adaptation transformer maps rows as *target* rows; the classifier
    at the end of the pipeline was trained on the *source* rows as the
    transformer mapped them in ``fit``. So in a pipeline, every step with a
    ``transform_source`` method (:class:`~sktl.domain.DomainAdaptTransformer`
    has one) maps the source rows with it, the other steps with
    ``transform``, and the final step predicts; the 0-1 loss is then the
    classifier's error on rows like those it learnt from, weighted towards
    the target. A domain-specific transformer without ``transform_source``
    gets its source rows mapped as target rows, and is misjudged.

    **Known limits.** IWV assumes covariate shift -- ``p(y | x)`` is the same
    in both domains -- and overlapping supports. When the target is translated
    away from the source, no labelled source row lies where the target rows
    are: the weights concentrate on a few rows and the score cannot tell
    whether an alignment helps (it scores "align" and "do nothing" alike
    there). What it does detect is a candidate that loses the class
    information (too few components, too much regularisation): that shows on
    the source rows. Combine it with :func:`reverse_validation_scorer`.

    Parameters
    ----------
    estimator : fitted classifier
    X : array-like
        Rows of both domains (the test fold).
    y : array-like of shape (n_samples,)
        Source labels, ``-1`` for target rows.
    metric : {"accuracy", "log_loss"}, default="accuracy"
        Weighted accuracy, or minus the weighted log-loss (needs
        ``predict_proba``).
    variant : {"iwv", "dev"}, default="iwv"
        ``"iwv"``: the self-normalised weighted mean. ``"dev"``: deep embedded
        validation (You et al., ICML 2019), the weighted mean with the weights
        as a control variate, ``mean(w l) + eta (mean(w) - 1)`` with
        ``eta = -cov(w l, w) / var(w)``, which lowers the variance when the
        weights vary a lot.
    domain_classifier : classifier with predict_proba, default=None
        Tells target rows (class 1) from source rows (class 0) of the raw X.
    cv : int, default=5
        Folds of the cross-fitting of the domain classifier.
    max_weight : float, default=10.0
        Largest weight, as a multiple of the mean weight.
    random_state : int, default=0
        Seed of the cross-fitting folds (fixed, so every candidate of a grid
        gets the same weights).

    Returns
    -------
    score : float
        Weighted accuracy (``metric="accuracy"``) or minus the weighted mean
        log-loss (``"log_loss"``). Higher is better.

    Raises
    ------
    ValueError
        No target row, or no labelled source row among the rows; a classifier
        that learnt ``-1`` as a class; an unknown ``metric`` or ``variant``.

    Examples
    --------
    >>> import numpy as np
    >>> from functools import partial
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import GridSearchCV
    >>> from sktl.domain import make_da_pipeline
    >>> from sktl.model_selection import DomainKFold, importance_weighted_scorer
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.randn(60, 2), rng.randn(60, 2) + 0.5]
    >>> y = np.r_[(X[:60, 0] > 0).astype(int), -np.ones(60, dtype=int)]
    >>> search = GridSearchCV(make_da_pipeline(LogisticRegression()),
    ...                       {"skipunlabelled__estimator__C": [1e-3, 1.0]},
    ...                       cv=DomainKFold(3), scoring=importance_weighted_scorer)
    >>> search.fit(X, y).best_params_
    {'skipunlabelled__estimator__C': 1.0}
    >>> dev_log_loss = partial(importance_weighted_scorer, metric="log_loss", variant="dev")
    """
    who = "importance_weighted_scorer"
    if metric not in ("accuracy", "log_loss"):
        raise ValueError(f"metric must be 'accuracy' or 'log_loss'; got {metric!r}.")
    if variant not in ("iwv", "dev"):
        raise ValueError(f"variant must be 'iwv' or 'dev'; got {variant!r}.")
    if isinstance(max_weight, bool) or not isinstance(max_weight, Real) or max_weight < 1:
        raise ValueError(f"max_weight must be a number >= 1; got {max_weight!r}.")
    y, source, target = _domains(X, y, who)
    if not target.any():
        raise ValueError(_NO_TARGET.format(who=who))
    if not source.any():
        raise ValueError(_NO_SOURCE.format(who=who))
    _check_no_unlabelled_class(estimator, who)
    weights = _importance_weights(X, source, target, domain_classifier=domain_classifier,
                                  cv=cv, max_weight=max_weight, random_state=random_state)
    X_s, y_s = _rows(X, source), y[source]
    if metric == "accuracy":
        _require(estimator, "predict", who)
        losses = (np.asarray(_call_on_source_rows(estimator, X_s, "predict")) != y_s)
        losses = losses.astype(np.float64)
    else:
        _require(estimator, "predict_proba", who)
        proba = np.asarray(_call_on_source_rows(estimator, X_s, "predict_proba"),
                           dtype=np.float64)
        classes = np.asarray(estimator.classes_)
        column = {c: j for j, c in enumerate(classes.tolist())}
        p_true = np.array([proba[i, column[c]] if c in column else 0.0
                           for i, c in enumerate(y_s.tolist())])
        losses = -np.log(np.clip(p_true, _EPS, 1.0))
    if variant == "iwv":
        risk = float(np.sum(weights * losses) / np.sum(weights))
    else:
        weighted = weights * losses
        var = float(np.var(weights, ddof=1)) if weights.size > 1 else 0.0
        eta = -float(np.cov(weighted, weights)[0, 1]) / var if var > _EPS else 0.0
        risk = float(weighted.mean() + eta * weights.mean() - eta)
    return 1.0 - risk if metric == "accuracy" else -risk


def reverse_validation_scorer(estimator, X, y):
    """Reverse (circular) validation: learn back from the target predictions.

    Reverse validation (Zhong et al., ECML-PKDD 2010):

    1. the fitted ``estimator`` labels the target rows (``y == -1``) of the
       test fold;
    2. a ``clone`` of it -- same hyperparameters, untrained -- is fitted with
       the **domains' roles swapped**: the target rows carry those predicted
       labels, the source rows are marked ``-1``. With the ``y = -1``
       convention this is an ordinary ``fit``: a domain-adaptation pipeline
       now adapts from the target to the source domain;
    3. the score is that reverse model's accuracy on the source rows, against
       their true labels.

    If the forward model labels the target well, the reverse model learns the
    right classes and gets the source rows right; pseudo-labels that the
    model cannot learn back, or an alignment that scrambles the classes, come
    back as source errors. Only the source labels are read. Used with
    :class:`DomainKFold`, the source rows scored are ones the forward model
    was not trained on.

    A forward model that gives every target row the same class (a collapse,
    e.g. an unadapted model and a target shifted across its boundary) cannot
    train a reverse classifier: the score is then ``0.0``, the worst
    accuracy, not an error.

    **Known limits.** It costs one more ``fit`` per candidate and fold (on
    the test fold's rows). It measures self-consistency, not accuracy: an
    unadapted model that labels the target rows by the rule it learnt on the
    source, without collapsing to one class, is learnt back by the reverse
    model and passes with about its source accuracy, whether or not that rule
    is right on the target. It catches a candidate whose target predictions
    collapse, or whose adaptation scrambles the classes; to compare
    candidates that all predict every class on the target, add
    :func:`prediction_entropy_scorer` with ``diversity=True``.

    Parameters
    ----------
    estimator : fitted classifier
        Must accept ``fit(X, y)`` with ``-1`` rows, i.e. its final classifier
        wrapped in :class:`~sktl.domain.SkipUnlabelled` (as
        :func:`~sktl.domain.make_da_pipeline` does).
    X : array-like
        Rows of both domains (the test fold).
    y : array-like of shape (n_samples,)
        Source labels, ``-1`` for target rows.

    Returns
    -------
    score : float
        Accuracy of the reverse model on the source rows, in [0, 1]. Higher
        is better.

    Raises
    ------
    ValueError
        No target row or no labelled source row among the rows, or a
        classifier that learns ``-1`` as a class (wrap it in
        ``SkipUnlabelled``).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sktl.domain import make_da_pipeline
    >>> from sktl.model_selection import reverse_validation_scorer
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.randn(50, 2), rng.randn(50, 2) + [0, 1]]
    >>> y = np.r_[(X[:50, 0] > 0).astype(int), -np.ones(50, dtype=int)]
    >>> model = make_da_pipeline(LogisticRegression()).fit(X, y)
    >>> bool(reverse_validation_scorer(model, X, y) > 0.9)
    True
    """
    who = "reverse_validation_scorer"
    y, source, target = _domains(X, y, who)
    if not target.any():
        raise ValueError(_NO_TARGET.format(who=who))
    if not source.any():
        raise ValueError(_NO_SOURCE.format(who=who))
    _check_no_unlabelled_class(estimator, who)
    _require(estimator, "predict", who)
    pseudo = np.asarray(estimator.predict(_rows(X, target)))
    if np.unique(pseudo).size < 2:
        return 0.0
    y_rev = np.array(y, dtype=None if y.dtype.kind in "iuf" else object, copy=True)
    if y_rev.dtype.kind in "iuf":
        y_rev = y_rev.astype(np.result_type(y_rev.dtype, pseudo.dtype))
    y_rev[target] = pseudo
    y_rev[source] = UNLABELLED
    reverse = clone(estimator).fit(X, y_rev)
    _check_no_unlabelled_class(reverse, who)
    return float(accuracy_score(y[source], reverse.predict(_rows(X, source))))


def target_oracle_score(estimator, X, y, y_target_true):
    """True accuracy on the target rows -- for **reporting** only.

    The supervised oracle: what the unsupervised scorers try to estimate. Use
    it on a benchmark where the target labels are known, to report how good
    the chosen model really is or how well an unsupervised scorer ranks the
    candidates. **Never choose hyperparameters with it** in a study claiming
    unsupervised adaptation: that would be using the target labels the
    method is supposed not to have.

    With :class:`DomainKFold` or :class:`SourceTargetSplit` every test fold
    holds all target rows in their original order, so
    ``functools.partial(target_oracle_score, y_target_true=y_t)`` can sit in
    the ``scoring`` dict of ``cross_validate`` or ``GridSearchCV`` as a
    reporting column -- with ``refit`` naming an *unsupervised* scorer.

    Parameters
    ----------
    estimator : fitted classifier
    X : array-like
        Rows of both domains; those with ``y == -1`` are predicted.
    y : array-like of shape (n_samples,)
        Labels, ``-1`` for target rows.
    y_target_true : array-like
        True labels of the target rows: one per target row in their order
        in ``X``, or one per row of ``X`` (the target rows' entries are used).

    Returns
    -------
    accuracy : float

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sktl.domain import make_da_pipeline
    >>> from sktl.model_selection import target_oracle_score
    >>> X = np.array([[0.0], [1.0], [0.2], [0.9]])
    >>> y = np.array([0, 1, -1, -1])
    >>> model = make_da_pipeline(LogisticRegression()).fit(X, y)
    >>> target_oracle_score(model, X, y, y_target_true=[0, 1])
    1.0
    """
    who = "target_oracle_score"
    y, _, target = _domains(X, y, who)
    if not target.any():
        raise ValueError(_NO_TARGET.format(who=who))
    y_true = np.asarray(y_target_true)
    if y_true.ndim != 1:
        raise ValueError(f"y_target_true must be 1-D; got shape {y_true.shape}.")
    if y_true.shape[0] == y.shape[0]:
        y_true = y_true[target]
    elif y_true.shape[0] != int(target.sum()):
        raise ValueError(f"y_target_true has {y_true.shape[0]} labels; expected one per "
                         f"target row ({int(target.sum())}) or one per row ({y.shape[0]}).")
    return float(accuracy_score(y_true, estimator.predict(_rows(X, target))))
