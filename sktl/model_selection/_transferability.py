"""Transferability scores: rank pretrained backbones without fine-tuning them.

Each score looks at a backbone's features (or a source model's predictions)
on the *target* data and estimates how well the backbone will transfer:

* :func:`logme_score` -- LogME, the log marginal likelihood (evidence) of a
  Bayesian linear model on the features (You et al., ICML 2021);
* :func:`hscore` -- H-score, ``tr(cov(f)^+ cov(E[f | y]))`` (Bao et al., 2019);
* :func:`leep_score` -- LEEP, from a source classifier's predicted
  probabilities (Nguyen et al., ICML 2020).

:func:`rank_backbones` extracts features once per candidate backbone and
ranks them; :func:`logme_scorer` and :func:`hscore_scorer` plug the scores
into ``scoring=`` of scikit-learn's model-selection tools.
"""

from __future__ import annotations

import functools
import time
import warnings
from numbers import Integral, Real

import numpy as np
from scipy import linalg
from sklearn.base import clone
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_array, check_consistent_length

__all__ = [
    "hscore",
    "hscore_scorer",
    "leep_score",
    "logme_score",
    "logme_scorer",
    "rank_backbones",
]

_TINY = np.finfo(np.float64).tiny


def _check_features(features):
    features = check_array(features, dtype=np.float64, ensure_min_samples=2,
                           input_name="features")
    return features


def _classification_target(y, n_samples, name):
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} needs a 1-D array of class labels; got shape {y.shape}.")
    if y.shape[0] != n_samples:
        raise ValueError(f"features has {n_samples} samples but y has {y.shape[0]}.")
    classes, y_idx = np.unique(y, return_inverse=True)
    return classes, y_idx.ravel()


# ----------------------------------------------------------------------------
# LogME
# ----------------------------------------------------------------------------


def _svd(features):
    """Singular values and left singular vectors, robust to degenerate data."""
    try:
        u, s, _ = linalg.svd(features, full_matrices=False, check_finite=False,
                             lapack_driver="gesdd")
    except linalg.LinAlgError:  # gesdd occasionally fails; gesvd is slower but sure
        u, s, _ = linalg.svd(features, full_matrices=False, check_finite=False,
                             lapack_driver="gesvd")
    return u, s


def _logme_fixed_point(sigma, x2, res_x2, n, max_iter, tol):
    """Fixed-point iteration of You et al. (2021, Algorithm 1) in the SVD basis."""
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        t = alpha / beta
        gamma = float(np.sum(sigma / (sigma + t)))
        m2 = float(np.sum(sigma * x2 / (sigma + t) ** 2))  # ||m||^2
        res2 = float(np.sum(x2 * (t / (sigma + t)) ** 2)) + res_x2  # ||F m - y||^2
        # gamma lies in [0, min(n, d)]: keep alpha and beta positive and finite
        gamma = min(max(gamma, _TINY), n * (1.0 - 1e-9))
        alpha = float(np.clip(gamma / max(m2, _TINY), 1e-300, 1e300))
        beta = float(np.clip((n - gamma) / max(res2, _TINY), 1e-300, 1e300))
        if abs(alpha / beta - t) <= tol * t:
            break
    return alpha, beta


def _logme_evidence(sigma, x2, res_x2, n, d, max_iter, tol):
    """Maximise the evidence of one target column; return evidence / n.

    ``sigma`` are the eigenvalues of ``F^T F`` (the squared singular values,
    ``k = min(n, d)`` of them), ``x2`` the squared projections of the target
    on the left singular vectors and ``res_x2`` the squared norm of the part
    of the target outside their span.
    """
    k = sigma.shape[0]
    with np.errstate(over="ignore", divide="ignore", under="ignore"):
        alpha, beta = _logme_fixed_point(sigma, x2, res_x2, n, max_iter, tol)
        t = alpha / beta
        m2 = float(np.sum(sigma * x2 / (sigma + t) ** 2))
        res2 = float(np.sum(x2 * (t / (sigma + t)) ** 2)) + res_x2
    # log|A| with A = alpha I + beta F^T F: the d - k directions outside the
    # row space have eigenvalue alpha.
    log_det_a = float(np.sum(np.log(alpha + beta * sigma))) + (d - k) * np.log(alpha)
    evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * log_det_a
                - beta / 2.0 * res2 - alpha / 2.0 * m2 - n / 2.0 * np.log(2 * np.pi))
    return evidence / n


def logme_score(features, y, *, task="auto", max_iter=100, tol=1e-5):
    """LogME: average log evidence of a Bayesian linear model on the features.

    For every target column (one per class, one-hot, for classification; the
    target's columns for regression), the evidence ``log p(y | F)`` of
    ``y = F w + noise`` with prior ``w ~ N(0, 1/alpha)`` and noise precision
    ``beta`` is maximised over ``alpha`` and ``beta`` by the fixed-point
    iteration of You et al. (2021), computed once from the SVD of the
    features.  The score is the maximised evidence divided by the number of
    samples and averaged over the columns.  Higher is better; it compares
    backbones on the same target data, its absolute value has no unit.

    Feature dimensions that are (near-)constant zero, as some sentence
    encoders produce, add nothing to the evidence and do not cause NaNs.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Features of the target samples, e.g. ``FeatureExtractor.transform``.
    y : array-like of shape (n_samples,) or (n_samples, n_targets)
        Class labels, or real-valued targets for regression.
    task : {"auto", "classification", "regression"}, default="auto"
        ``"auto"`` treats float targets with non-integer values (and 2-D
        targets) as regression, anything else as class labels.
    max_iter : int, default=100
        Maximum number of fixed-point iterations per target column.
    tol : float, default=1e-5
        Stop when ``alpha / beta`` changes by less than this, relatively.

    Returns
    -------
    score : float
        Average log evidence per sample; higher means more transferable.

    See Also
    --------
    hscore : A cheaper, classification-only score.
    rank_backbones : Rank several backbones with this score.

    References
    ----------
    K. You, Y. Liu, J. Wang, M. Long. "LogME: Practical Assessment of
    Pre-trained Models for Transfer Learning", ICML 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from sktl.model_selection import logme_score
    >>> rng = np.random.RandomState(0)
    >>> y = rng.randint(0, 3, size=200)
    >>> informative = np.eye(3)[y] + 0.3 * rng.randn(200, 3)
    >>> noise = rng.randn(200, 3)
    >>> bool(logme_score(informative, y) > logme_score(noise, y))
    True
    >>> targets = informative @ [1.0, -2.0, 0.5]
    >>> round(float(logme_score(informative, targets, task="regression")), 1) > 0
    True
    """
    if task not in ("auto", "classification", "regression"):
        raise ValueError(f"task must be 'auto', 'classification' or 'regression'; got {task!r}.")
    if not isinstance(max_iter, Integral) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer; got {max_iter!r}.")
    if not isinstance(tol, Real) or tol < 0:
        raise ValueError(f"tol must be a non-negative number; got {tol!r}.")
    f = _check_features(features)
    n, d = f.shape
    y_arr = np.asarray(y)
    if task == "auto":
        target_type = type_of_target(y_arr, input_name="y")
        task = ("regression" if target_type in ("continuous", "continuous-multioutput")
                or y_arr.ndim == 2 else "classification")
    if task == "classification":
        _, y_idx = _classification_target(y_arr, n, "logme_score with task='classification'")
        targets = np.eye(int(y_idx.max()) + 1)[y_idx]
    else:
        targets = check_array(y_arr, dtype=np.float64, ensure_2d=False, input_name="y")
        if targets.ndim == 1:
            targets = targets[:, None]
        check_consistent_length(f, targets)

    u, s = _svd(f)
    sigma = s ** 2
    projections = u.T @ targets  # (k, n_targets)
    evidences = []
    for j in range(targets.shape[1]):
        y_j = targets[:, j]
        x2 = projections[:, j] ** 2
        res_x2 = max(float(y_j @ y_j) - float(x2.sum()), 0.0)
        evidences.append(_logme_evidence(sigma, x2, res_x2, n, d, max_iter, tol))
    return float(np.mean(evidences))


# ----------------------------------------------------------------------------
# H-score
# ----------------------------------------------------------------------------


def hscore(features, y, *, shrinkage=None, rcond=1e-10):
    """H-score: how much of the features' variance the class means explain.

    ``H(f) = tr(cov(f)^+ cov(E[f | y]))`` with population covariances, so
    that ``0 <= H <= min(n_features, n_classes - 1)``.  The inverse is a
    pseudo-inverse (eigenvalues below ``rcond`` times the largest are
    dropped), so constant or near-zero feature dimensions give a finite
    score.  Higher is better.

    Parameters
    ----------
    features : array-like of shape (n_samples, n_features)
        Features of the target samples.
    y : array-like of shape (n_samples,)
        Class labels.
    shrinkage : None, "auto" or float in [0, 1], default=None
        Shrink ``cov(f)`` towards a scaled identity before inverting it:
        ``"auto"`` uses the Ledoit-Wolf estimate (the "regularised H-score"
        of Ibrahim et al., 2022, better with many features and few samples);
        ``None`` uses the sample covariance as in the original H-score.
    rcond : float, default=1e-10
        Relative cut-off of the pseudo-inverse.

    Returns
    -------
    score : float

    References
    ----------
    Y. Bao, Y. Li, S.-L. Huang, L. Zhang, L. Zheng, A. Zamir, L. Guibas.
    "An Information-Theoretic Approach to Transferability in Task Transfer
    Learning", ICIP 2019.

    Examples
    --------
    >>> import numpy as np
    >>> from sktl.model_selection import hscore
    >>> rng = np.random.RandomState(0)
    >>> y = rng.randint(0, 2, size=200)
    >>> informative = np.c_[y + 0.2 * rng.randn(200), rng.randn(200)]
    >>> round(hscore(informative, y), 2)
    0.86
    >>> bool(hscore(informative, y) > hscore(rng.randn(200, 2), y))
    True
    """
    f = _check_features(features)
    n, d = f.shape
    _, y_idx = _classification_target(y, n, "hscore")
    f = f - f.mean(axis=0)
    cov = (f.T @ f) / n
    if shrinkage is not None:
        if isinstance(shrinkage, str):
            if shrinkage != "auto":
                raise ValueError(f"shrinkage must be None, 'auto' or a float; got {shrinkage!r}.")
            from sklearn.covariance import ledoit_wolf_shrinkage

            shrink = float(ledoit_wolf_shrinkage(f, assume_centered=True))
        else:
            shrink = float(shrinkage)
            if not 0.0 <= shrink <= 1.0:
                raise ValueError(f"shrinkage must lie in [0, 1]; got {shrinkage!r}.")
        mu = np.trace(cov) / d
        cov = (1.0 - shrink) * cov + shrink * mu * np.eye(d)
    evals, evecs = linalg.eigh(cov, check_finite=False)
    top = float(evals.max()) if evals.size else 0.0
    keep = evals > max(rcond * top, _TINY)
    if not np.any(keep):
        return 0.0
    counts = np.bincount(y_idx).astype(np.float64)
    class_means = np.zeros((counts.shape[0], d))
    np.add.at(class_means, y_idx, f)
    class_means /= counts[:, None]  # already centred: the global mean is 0
    proj = class_means @ evecs[:, keep]  # (n_classes, k)
    score = np.sum((counts / n)[:, None] * proj ** 2 / evals[keep])
    return float(score)


# ----------------------------------------------------------------------------
# LEEP
# ----------------------------------------------------------------------------


def leep_score(source_probs, y):
    """LEEP: log expected empirical prediction of a source classifier.

    The source model's predicted probabilities ``theta(x)`` over its own
    ``Z`` classes are turned into a target classifier through the empirical
    conditional ``P(y | z)``; LEEP is the average log-likelihood of the
    target labels under ``sum_z P(y | z) theta_z(x)``.  It is at most 0 and
    at least ``log(1 / n_classes)``-ish; higher is better.

    Parameters
    ----------
    source_probs : array-like of shape (n_samples, n_source_classes)
        Predicted probabilities of the source model on the target samples
        (``predict_proba``); every row must sum to 1.
    y : array-like of shape (n_samples,)
        Target class labels.

    Returns
    -------
    score : float

    References
    ----------
    C. V. Nguyen, T. Hassner, M. Seeger, C. Archambeau. "LEEP: A New Measure
    to Evaluate Transferability of Learned Representations", ICML 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from sktl.model_selection import leep_score
    >>> y = np.array([0, 0, 1, 1])
    >>> predictive = np.array([[.9, .1], [.8, .2], [.1, .9], [.2, .8]])
    >>> uninformative = np.full((4, 2), 0.5)
    >>> round(leep_score(predictive, y), 3), round(leep_score(uninformative, y), 3)
    (-0.295, -0.693)
    """
    theta = check_array(source_probs, dtype=np.float64, input_name="source_probs")
    n = theta.shape[0]
    _, y_idx = _classification_target(y, n, "leep_score")
    if np.any(theta < 0):
        raise ValueError("source_probs must be probabilities (non-negative).")
    row_sums = theta.sum(axis=1)
    if not np.allclose(row_sums, 1.0, atol=1e-3):
        raise ValueError("Every row of source_probs must sum to 1 (use predict_proba, "
                         "or a softmax of logits).")
    theta = theta / row_sums[:, None]
    n_classes = int(y_idx.max()) + 1
    joint = np.zeros((n_classes, theta.shape[1]))  # P(y, z)
    np.add.at(joint, y_idx, theta)
    joint /= n
    marginal = joint.sum(axis=0)  # P(z)
    with np.errstate(divide="ignore", invalid="ignore"):
        conditional = np.where(marginal > 0, joint / marginal, 0.0)  # P(y | z)
    eep = np.sum(theta * conditional[y_idx], axis=1)
    return float(np.mean(np.log(np.maximum(eep, _TINY))))


# ----------------------------------------------------------------------------
# Scorers
# ----------------------------------------------------------------------------


def _features_of(estimator, X):
    if not hasattr(estimator, "transform") and hasattr(estimator, "steps"):
        estimator = estimator[:-1]  # Pipeline ending in a predictor: score its features
    if not hasattr(estimator, "transform"):
        raise TypeError(
            f"{type(estimator).__name__} has no transform(); transferability scorers "
            "score features, so pass a FeatureExtractor or a Pipeline of transformers."
        )
    return estimator.transform(X)


def logme_scorer(estimator, X, y):
    """Scorer for ``scoring=``: LogME of ``estimator.transform(X)`` against ``y``.

    This scores the **features** the (fitted) estimator produces, not its
    predictions: use it to choose a backbone or layer of a
    :class:`~sktl.FeatureExtractor` with ``GridSearchCV`` or
    ``cross_validate`` without training a head.  For a
    :class:`~sklearn.pipeline.Pipeline` ending in a predictor, the features
    before its last step are scored.

    Parameters
    ----------
    estimator : fitted transformer or Pipeline
    X : inputs accepted by ``estimator.transform``
    y : array-like of shape (n_samples,) or (n_samples, n_targets)

    Returns
    -------
    score : float
        See :func:`logme_score`; higher is better.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import FunctionTransformer
    >>> from sktl.model_selection import logme_scorer
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.randn(100, 4), rng.randint(0, 2, size=100)
    >>> identity = FunctionTransformer().fit(X)
    >>> bool(np.isfinite(logme_scorer(identity, X, y)))
    True
    """
    return logme_score(_features_of(estimator, X), y)


def hscore_scorer(estimator, X, y):
    """Scorer for ``scoring=``: H-score of ``estimator.transform(X)`` against ``y``.

    Like :func:`logme_scorer`, this scores the **features**, not predictions.

    Parameters
    ----------
    estimator : fitted transformer or Pipeline
    X : inputs accepted by ``estimator.transform``
    y : array-like of shape (n_samples,)

    Returns
    -------
    score : float
        See :func:`hscore`; higher is better.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import FunctionTransformer
    >>> from sktl.model_selection import hscore_scorer
    >>> rng = np.random.RandomState(0)
    >>> y = rng.randint(0, 2, size=100)
    >>> X = np.c_[y + 0.1 * rng.randn(100), rng.randn(100)]
    >>> round(hscore_scorer(FunctionTransformer().fit(X), X, y), 2)
    0.96
    """
    return hscore(_features_of(estimator, X), y)


# ----------------------------------------------------------------------------
# Ranking
# ----------------------------------------------------------------------------

_SCORES = {"logme": logme_score, "hscore": hscore}


def rank_backbones(X, y, candidates, *, score="logme", task="auto", batch_size=32,
                   device="auto", verbose=0):
    """Rank candidate backbones for a target task by a transferability score.

    Each candidate's features of ``X`` are extracted once with a
    :class:`~sktl.FeatureExtractor` and scored against ``y``; nothing is
    trained.

    Parameters
    ----------
    X : array-like, list of str, list of PIL images or paths
        Target inputs, of the kind every candidate reads.
    y : array-like of shape (n_samples,) or (n_samples, n_targets)
        Target labels (or regression targets with ``score="logme"``).
    candidates : dict
        Name -> backbone. A value is anything ``FeatureExtractor(backbone=...)``
        accepts (name, folder, ``torch.nn.Module``, fitted sktl estimator),
        a dict of ``FeatureExtractor`` parameters (e.g. ``{"backbone": path,
        "layer": "embeddings"}``), or a ``FeatureExtractor``: a fitted one is
        used as it is, an unfitted one is cloned and fitted with its own
        parameters.
    score : {"logme", "hscore"} or callable, default="logme"
        Transferability score; a callable is called as ``score(features, y)``
        and must return a float, higher meaning better.
    task : {"auto", "classification", "regression"}, default="auto"
        How ``score="logme"`` reads ``y`` (see :func:`logme_score`): say
        ``"regression"`` for whole-number targets (counts, ages), which
        ``"auto"`` takes for class labels. ``score="hscore"`` is for
        classification only.
    batch_size : int, default=32
        Batch size of the extractors built here.
    device : str, default="auto"
        Device of the extractors built here.
    verbose : int, default=0
        ``1`` prints one line per candidate; ``2`` also shows progress bars.

    Returns
    -------
    ranking : pandas.DataFrame or list of dict
        One row per candidate, best first, with columns ``backbone`` (the
        name), ``score`` and ``seconds`` (feature extraction plus scoring).
        A list of dicts with those keys when pandas is not installed.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktl.model_selection import rank_backbones
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(100, 4).astype(np.float32)
    >>> y = (X[:, 0] > 0.5).astype(int)
    >>> constant = nn.Linear(4, 4)
    >>> _ = nn.init.zeros_(constant.weight)
    >>> ranking = rank_backbones(X, y, {"constant": constant, "identity": nn.Identity()})
    >>> list(ranking["backbone"])
    ['identity', 'constant']
    """
    from ..features import FeatureExtractor

    if task not in ("auto", "classification", "regression"):
        raise ValueError("task must be 'auto', 'classification' or 'regression'; "
                         f"got {task!r}.")
    if isinstance(score, str):
        if score not in _SCORES:
            raise ValueError(f"score must be one of {sorted(_SCORES)} or a callable; "
                             f"got {score!r}.")
        score_func = _SCORES[score]
        if score == "logme":
            score_func = functools.partial(logme_score, task=task)
        elif task == "regression":
            raise ValueError(f"score={score!r} scores class labels; use score='logme' "
                             "for regression targets.")
    elif callable(score):
        score_func = score
    else:
        raise TypeError(f"score must be a string or a callable; got {type(score).__name__}.")
    if not isinstance(candidates, dict) or not candidates:
        raise TypeError("candidates must be a non-empty dict: name -> backbone.")
    if hasattr(X, "__len__") and not isinstance(X, (str, bytes)):
        check_consistent_length(X, y)  # before any candidate's features are extracted

    rows = []
    for name, candidate in candidates.items():
        start = time.perf_counter()
        if isinstance(candidate, FeatureExtractor):
            extractor = candidate
            if not hasattr(candidate, "backbone_"):
                extractor = clone(candidate).fit(X)
        else:
            params = dict(candidate) if isinstance(candidate, dict) else {"backbone": candidate}
            params.setdefault("batch_size", batch_size)
            params.setdefault("device", device)
            params.setdefault("verbose", int(verbose >= 2))
            extractor = FeatureExtractor(**params).fit(X)
        features = extractor.transform(X)
        value = float(score_func(features, y))
        seconds = time.perf_counter() - start
        if not np.isfinite(value):
            warnings.warn(f"The {score} score of backbone {name!r} is not finite.",
                          RuntimeWarning, stacklevel=2)
        if verbose:
            print(f"[rank_backbones] {name}: score={value:.4f} "
                  f"({features.shape[1]} features, {seconds:.1f}s)")
        rows.append({"backbone": name, "score": value, "seconds": seconds})

    # best first; NaN scores last; ties keep the order of `candidates`
    order = sorted(range(len(rows)),
                   key=lambda i: (np.isnan(rows[i]["score"]), -np.nan_to_num(rows[i]["score"])))
    rows = [rows[i] for i in order]
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame(rows, columns=["backbone", "score", "seconds"])
