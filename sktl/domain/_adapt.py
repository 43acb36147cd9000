"""DomainAdaptTransformer: shallow (feature-level) domain adaptation.

One transformer, one ``method`` parameter, so that "which adaptation, if
any" is a grid-search candidate like any other hyperparameter. Each method
is a few private functions below; the estimator only splits the rows into
source and target (:func:`~sktl.domain.domain_masks`) and dispatches.
"""

from __future__ import annotations

import warnings
from numbers import Real

import numpy as np
from scipy import linalg
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import pairwise_distances_argmin
from sklearn.metrics.pairwise import euclidean_distances, linear_kernel, rbf_kernel
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils._set_output import _wrap_data_with_container
from sklearn.utils.extmath import svd_flip
from sklearn.utils.validation import (
    _check_feature_names_in,
    _generate_get_feature_names_out,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from .._atomic import atomic_fit
from .._constraints import Count
from .._labels import check_label_types
from ._convention import domain_masks, is_unlabelled

__all__ = ["DomainAdaptTransformer"]

#: Valid values of ``DomainAdaptTransformer(method=...)``.
METHODS = ("none", "coral", "sa", "tca", "ot", "jda")
# Methods whose output has the input's width (and feature names).
_SAME_WIDTH = frozenset({"none", "coral", "ot"})
# Default cap on n_components (SA, TCA).
_DEFAULT_COMPONENTS = 100
# Sinkhorn stops when the plan's source marginal (total mass 1) is this close, in L1,
# to uniform: 0.01% of the mass. The barycentric images divide by the actual row
# sums, so the remaining error only reweights a row's targets very slightly.
_SINKHORN_TOL = 1e-4


# --------------------------------------------------------------------------- linear algebra
def _sym_power(C, power):
    """``C ** power`` for a symmetric positive semi-definite matrix, via ``eigh``.

    Eigenvalues at or below ``max_eigenvalue * n * eps`` (and negative
    round-off) count as zero: they map to 0, so a negative power is the
    pseudo-inverse's and the result is always finite.
    """
    # "evd": the default "evr" driver is ~4x slower on rank-deficient
    # covariances and raised LinAlgError on one 384x384 text covariance.
    w, V = linalg.eigh(C, driver="evd")
    tol = max(w[-1], 0.0) * len(w) * np.finfo(np.float64).eps
    kept = w > tol
    wp = np.zeros_like(w)
    wp[kept] = w[kept] ** power
    return (V * wp) @ V.T


def _covariance(X, mean):
    """Covariance with ``ddof=1`` (zero for a single row)."""
    Xc = X - mean
    return Xc.T @ Xc / max(len(X) - 1, 1)


# --------------------------------------------------------------------------- CORAL
def _regularised_covariance(X, mean, reg):
    """The covariance CORAL aligns: plus ``reg * I``, or Ledoit-Wolf shrunk.

    ``reg="auto"`` shrinks the covariance of the standardised features
    towards the identity by the Ledoit-Wolf amount and scales it back (the
    estimate skada's ``CORALAdapter`` uses by default): no ridge to choose,
    and it is positive definite whenever no feature is constant.
    """
    if reg != "auto":
        return _covariance(X, mean) + reg * np.eye(X.shape[1])
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    shrunk = _ledoit_wolf((X - mean) / scale)
    return scale[:, None] * shrunk * scale[None, :]


def _ledoit_wolf(Z):
    """Ledoit-Wolf (2004) shrunk covariance of centred rows ``Z`` (``ddof=0``).

    ``(1 - s) S + s m I`` with ``S = Z'Z / n``, ``m = tr(S) / p`` and
    ``s = min(b, d) / d``, ``d = |S - m I|^2 / p``,
    ``b = (sum_i |z_i|^4 - n |S|^2) / (n^2 p)`` (Frobenius norms). Equal to
    ``sklearn.covariance.ledoit_wolf(Z, assume_centered=True)``, from one
    Gram matrix instead of two.
    """
    n, p = Z.shape
    S = Z.T @ Z / n
    m = np.trace(S) / p
    frob = float(np.sum(S * S))
    d = (frob - 2.0 * m * np.trace(S) + p * m * m) / p
    if d <= 0:  # S is already a multiple of the identity
        return S
    row_norms = np.einsum("ij,ij->i", Z, Z)
    b = (float(np.sum(row_norms**2)) - n * frob) / (n * n * p)
    shrinkage = min(max(b, 0.0), d) / d
    out = (1.0 - shrinkage) * S
    out.flat[:: p + 1] += shrinkage * m
    return out


def _coral_matrix(Xs, Xt, source_mean, target_mean, reg):
    """``A = (Cs + reg I)^-1/2 (Ct + reg I)^1/2`` (Sun, Feng, Saenko 2016)."""
    whiten = _sym_power(_regularised_covariance(Xs, source_mean, reg), -0.5)
    recolour = _sym_power(_regularised_covariance(Xt, target_mean, reg), 0.5)
    return whiten @ recolour


# --------------------------------------------------------------------------- SA
def _pca_basis(X, mean, n_components):
    """Top principal directions of ``X``, as the columns of a (n_features, k) matrix."""
    U, S, Vt = linalg.svd(X - mean, full_matrices=False)
    _, Vt = svd_flip(U, Vt, u_based_decision=False)
    return Vt[:n_components].T


# --------------------------------------------------------------------------- TCA
def _kernel(X, Y, kernel, gamma):
    if kernel == "linear":
        return linear_kernel(X, Y)
    return rbf_kernel(X, Y, gamma=gamma)


def _tca_eigen(K, source, mu, n_components):
    """Leading solutions of TCA's ``K H K w = lambda (K L K + mu I) w``.

    Pan et al. (2011) maximise ``tr((W' K L K W + mu I)^-1 W' K H K W)``,
    whose solutions are the leading eigenvectors of the non-symmetric
    ``(K L K + mu I)^-1 K H K``; equivalently (and what is solved here) the
    symmetric-definite generalised problem above. ``L = e e'`` with
    ``e_i = 1/n_s`` on source rows and ``-1/n_t`` on target rows, so
    ``K L K = v v'`` (``v = K e``) is rank one and
    ``B = K L K + mu I`` has the closed-form inverse square root
    ``mu^-1/2 (I + c u u')``, ``u = v / |v|``, ``c = sqrt(mu / (mu + |v|^2)) - 1``.
    The problem becomes the ordinary symmetric one
    ``B^-1/2 (K H K) B^-1/2 y = lambda y``, ``w = B^-1/2 y``, without a
    Cholesky factorisation of the (badly conditioned) ``B``.

    Returns
    -------
    eigenvalues : ndarray of shape (n_components,)
        Descending, real, non-negative.
    W : ndarray of shape (n_rows, n_components)
        Normalised so that ``W' B W = I``; the largest entry of each
        column is positive.
    """
    n = len(K)
    e = np.where(source, 1.0 / source.sum(), -1.0 / (~source).sum())
    v = K @ e
    s = float(v @ v)
    u = v / np.sqrt(s) if s > 0 else np.zeros(n)
    c = np.sqrt(mu / (mu + s)) - 1.0
    HK = K - K.mean(axis=0)  # H K: centred columns
    A = HK.T @ HK  # K H K = (H K)' (H K), symmetric PSD
    Au = A @ u
    C = A + c * (np.outer(u, Au) + np.outer(Au, u)) + c * c * float(u @ Au) * np.outer(u, u)
    C = (C + C.T) / (2.0 * mu)
    values, Y = linalg.eigh(C, subset_by_index=[n - n_components, n - 1])
    values, Y = values[::-1], Y[:, ::-1]
    W = (Y + c * np.outer(u, u @ Y)) / np.sqrt(mu)
    # Deterministic signs: the largest entry of each eigenvector is positive.
    signs = np.sign(W[np.abs(W).argmax(axis=0), np.arange(W.shape[1])])
    signs[signs == 0] = 1.0
    return np.clip(values, 0.0, None), W * signs


def _kernel_variance(K):
    """Total variance of the rows in the kernel's feature space, ``tr(H K H) / n``
    (1 when it is 0)."""
    value = float(np.mean(np.diag(K)) - K.mean())
    return value if value > 0 else 1.0


def _unit_rkhs_norm(W, K):
    """Scale each column ``w`` of ``W`` so that the feature-space direction
    ``sum_i w_i phi(x_i)`` has unit norm (``w' K w = 1``), as kernel PCA does:
    then ``k(x, X) w`` is the projection of ``phi(x)`` on a unit direction, in
    the units of the data whatever ``mu``. Null directions are left as they are."""
    norms = np.sqrt(np.clip(np.einsum("ij,ij->j", W, K @ W), 0.0, None))
    norms[norms <= 1e-12 * max(norms.max(), 1e-300)] = 1.0
    return W / norms


# --------------------------------------------------------------------------- OT
def _logsumexp(Z, axis):
    top = Z.max(axis=axis, keepdims=True)
    top[~np.isfinite(top)] = 0.0
    return (top + np.log(np.exp(Z - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def _sinkhorn(M, eps, max_iter):
    """Entropic OT plan between uniform weights, log-domain Sinkhorn.

    Minimises ``<P, M> - eps H(P)`` subject to ``P 1 = 1/n_s``,
    ``P' 1 = 1/n_t``. Potentials are kept in log space, so no kernel
    ``exp(-M / eps)`` underflows whatever ``eps``.

    Returns
    -------
    P : ndarray of shape (n_s, n_t)
    n_iter : int
    converged : bool
    """
    ns, nt = M.shape
    log_a, log_b = -np.log(ns), -np.log(nt)
    G = -M / eps
    f, g = np.zeros(ns), np.zeros(nt)
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        f = log_a - _logsumexp(G + g, axis=1)
        g = log_b - _logsumexp(G + f[:, None], axis=0)
        if n_iter % 10 == 0 or n_iter == max_iter:
            # g was just updated, so the target marginal is exact; check the source one.
            row_mass = np.exp(f + _logsumexp(G + g, axis=1))
            if np.abs(row_mass - 1.0 / ns).sum() < _SINKHORN_TOL:
                converged = True
                break
    return np.exp(G + f[:, None] + g), n_iter, converged


_SCALE_HINT = ("{what}: X's values are too large for the squared distances and "
               "covariances of method={method!r} in float64. Scale the features first, "
               "e.g. make_pipeline(StandardScaler(), DomainAdaptTransformer(...)).")


def _check_magnitude(X, method):
    """Refuse values whose squared distances or covariances overflow float64:
    they would turn into NaN (OT) or a linear-algebra error deep inside."""
    top = float(np.abs(X).max()) if X.size else 0.0
    with np.errstate(over="ignore"):
        # The largest sum of squares a distance or covariance entry can reach.
        bound = np.float64(top) ** 2 * 4.0 * max(X.shape)
    if not np.isfinite(bound):
        raise ValueError(_SCALE_HINT.format(what=f"X holds values up to {top:.3g}",
                                            method=method))


def _median_positive(D):
    """Median squared distance, falling back to the mean, then 1, when it is 0."""
    for value in (np.median(D), D.mean()):
        if value > 0:
            return float(value)
    return 1.0


# --------------------------------------------------------------------------- JDA
def _mmd_vectors(n_source, n_target, y_source, y_target, classes):
    """Columns ``e`` whose outer products sum to JDA's MMD matrix ``M``.

    The marginal term has ``e_i = 1/n_s`` on source rows and ``-1/n_t`` on
    target rows; each class ``c`` present in both domains adds the same
    with the rows of class ``c`` only (target rows by their pseudo-labels).
    ``M = E E'`` has rank at most ``n_classes + 1``, so ``X' M X = V V'``
    with ``V = X' E`` is cheap.
    """
    columns = [np.r_[np.full(n_source, 1.0 / n_source), np.full(n_target, -1.0 / n_target)]]
    if y_target is not None:
        for c in classes:
            in_s, in_t = y_source == c, y_target == c
            if in_s.any() and in_t.any():
                columns.append(np.r_[in_s / in_s.sum(), in_t / -in_t.sum()])
    return np.column_stack(columns)


def _jda_projection(X, scatter, E, mu, n_components):
    """Leading ``k`` solutions of ``X' H X a = lambda (X' M X + mu I) a``.

    Long et al. (ICCV 2013) minimise ``tr(A' X' M X A) + mu |A|^2`` subject
    to ``A' X' H X A = I``: the same generalised eigenproblem, written here
    as symmetric-definite (the right-hand matrix is positive definite).
    """
    V = X.T @ E
    B = V @ V.T + mu * np.eye(X.shape[1])
    d = X.shape[1]
    _, A = linalg.eigh(scatter, B, subset_by_index=[d - n_components, d - 1])
    signs = np.sign(A[np.abs(A).argmax(axis=0), np.arange(A.shape[1])])
    signs[signs == 0] = 1.0
    return A[:, ::-1] * signs[::-1]


def _unit_rows(Z):
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / np.where(norms > 0, norms, 1.0)


# --------------------------------------------------------------------------- helpers
def _subsample(source, max_samples, rng):
    """Row indices (sorted) of at most ``max_samples`` rows, each domain in
    proportion and keeping at least one row."""
    n = len(source)
    if n <= max_samples:
        return np.arange(n)
    src, tgt = np.flatnonzero(source), np.flatnonzero(~source)
    n_src = int(round(max_samples * len(src) / n))
    n_src = min(max(n_src, 1), max_samples - 1)
    n_tgt = max_samples - n_src
    rows = np.r_[rng.choice(src, n_src, replace=False), rng.choice(tgt, n_tgt, replace=False)]
    return np.sort(rows)


def _clip_components(n_components, limit, what):
    limit = max(int(limit), 1)
    if n_components is None:
        return min(_DEFAULT_COMPONENTS, limit)
    if n_components > limit:
        warnings.warn(
            f"n_components={n_components} is more than the data allows ({what} = {limit}); "
            f"using n_components={limit}.", UserWarning, stacklevel=3)
        return limit
    return int(n_components)


# Fitted attributes that only some methods set.
_METHOD_ATTRIBUTES = ("X_fit_", "alignment_matrix_", "components_", "coral_matrix_",
                      "coupling_", "eigenvalues_", "gamma_", "n_components_", "n_iter_",
                      "projection_", "source_components_", "source_fit_", "source_mapped_",
                      "target_components_", "target_pseudo_labels_")


class DomainAdaptTransformer(TransformerMixin, BaseEstimator):
    """Map source-domain rows onto the target domain (shallow domain adaptation).

    Source and target rows are stacked in one ``X``; ``y`` holds the source
    labels and ``-1`` for the unlabelled target rows (see
    :mod:`sktl.domain`), or ``sample_domain`` marks them (``1`` source,
    ``0`` target). :meth:`fit` learns a mapping from both domains;
    :meth:`fit_transform` returns the training rows adapted, in their
    original order; :meth:`transform` treats **every row it is given as a
    target-domain row**: that is what a pipeline's ``predict`` on new target
    data needs (for CORAL and OT it is the identity). Use
    :meth:`transform_source` to map new source rows.

    Put it before a classifier with :func:`~sktl.domain.make_da_pipeline`,
    whose final step skips the ``-1`` rows.

    Methods:

    * ``"none"``: identity; the no-adaptation baseline, as a grid candidate.
    * ``"coral"``: CORrelation ALignment (Sun, Feng and Saenko, AAAI 2016).
      ``A = (Cs + reg I)^-1/2 (Ct + reg I)^1/2`` with ``Cs``, ``Ct`` the
      domain covariances (``ddof=1``); source rows become
      ``(xs - mean_s) A + mean_t``, target rows are unchanged. On data
      standardised within each domain (the paper's setting, means zero) this
      is the paper's ``Xs A``; elsewhere the mean shift is corrected too.
    * ``"sa"``: Subspace Alignment (Fernando et al., ICCV 2013). ``Ps``,
      ``Pt``: the ``n_components`` leading principal directions of each
      domain, each centred on its own mean; source rows become
      ``(xs - mean_s) Ps Ps' Pt``, target rows ``(xt - mean_t) Pt``.
    * ``"tca"``: Transfer Component Analysis (Pan et al., IEEE TNN 2011).
      With the kernel matrix ``K`` of the training rows, finds the
      ``n_components`` leading solutions of
      ``K H K w = lambda (K L K + mu I) w`` (``H`` centring, ``L`` the MMD
      matrix between the domains), a symmetric-definite generalised
      eigenproblem, solved exactly. Every row (source or target, training or
      new) becomes ``k(x, X_fit) W``, each ``w`` scaled to a unit-norm
      direction in the kernel's feature space (``w' K w = 1``, as in kernel
      PCA), so the output has the data's units (with the linear kernel,
      scaling ``X`` scales the output alike). Memory and time grow as the
      square and cube of the training rows: beyond ``max_samples`` rows, the
      components are learnt from a random subset of ``max_samples`` rows
      (each domain in proportion, drawn with ``random_state``).
    * ``"ot"``: entropic optimal transport (Courty et al., IEEE TPAMI 2017).
      The Sinkhorn plan ``P`` between the source and target rows (uniform
      weights, squared Euclidean cost, entropic regularisation
      ``ot_reg * median cost``) moves each source row to its barycentric
      image ``sum_j P_ij xt_j / sum_j P_ij``; target rows are unchanged. New
      source rows (:meth:`transform_source`, or training rows left out by
      ``max_samples``) move by the displacement of their nearest fitted
      source row (Ferradans et al. 2014).
    * ``"jda"``: Joint Distribution Adaptation (Long et al., ICCV 2013).
      Like linear TCA, a projection ``A`` (``n_features x n_components``)
      that keeps the variance of the rows while shrinking the MMD between
      the domains, but the MMD is also taken within each class, the target
      rows' classes being pseudo-labels that are refined
      ``pseudo_label_iter`` times (1-NN from the projected source rows, as
      in the paper). Needs the source labels. Every row becomes ``x A``
      scaled to unit length (as in the authors' code). The class terms
      align what a classifier needs (the class-conditional distributions),
      which the marginal methods above cannot see.

    Parameters
    ----------
    method : {"none", "coral", "sa", "tca", "ot", "jda"}, default="coral"
        The adaptation.
    reg : float or "auto", default=1.0
        CORAL: ridge added to both covariances (``1`` in the paper). It
        makes the whitening well defined when a covariance is singular
        (constant features, fewer rows than features); with ``reg=0``
        singular directions are left out (pseudo-inverse), never NaN.
        ``"auto"``: no ridge; each covariance is shrunk instead, by the
        Ledoit-Wolf amount, on standardised features (skada's default), so
        nothing needs tuning.
    n_components : int or None, default=None
        SA, TCA and JDA: output width. ``None`` uses
        ``min(100, n_features, n_source - 1, n_target - 1)`` (SA),
        ``min(100, rank)`` with rank ``n_fit - 1``, and at most
        ``n_features`` for the linear kernel (TCA), ``min(100, n_features)``
        (JDA). A larger value is clipped to that limit with a warning.
    kernel : {"linear", "rbf"}, default="linear"
        TCA: kernel.
    gamma : float or None, default=None
        TCA: RBF width; ``None`` uses ``1 / (n_features * X.var())``.
    mu : float, default=1.0
        TCA and JDA: weight of the complexity ``tr(W'W)`` against the MMD between
        the domains ``tr(W' K L K W)``; larger values care less about the
        MMD (towards kernel PCA). Relative to the kernel's scale: the
        problem is solved for ``K / s``, ``s = tr(H K H) / n`` the variance
        of the rows in feature space, so ``mu`` means the same whatever the
        units of ``X``. As ``L`` has rank one, ``mu`` matters only when it
        is not small against ``|K L K|`` (often large: strong shifts).
        JDA: the paper's ``lambda``, on ``X`` as it is (linear, no
        rescaling): ``0.1`` to ``1`` in the paper for unit-length or
        standardised rows.
    ot_reg : float, default=0.1
        OT: entropic regularisation, relative to the median squared distance
        between source and target rows. Smaller is closer to exact OT (and
        slower); larger blurs every source row towards the target mean.
    max_iter : int, default=1000
        OT: most Sinkhorn iterations (a ``ConvergenceWarning`` if reached).
    max_samples : int, default=5000
        TCA and OT: most training rows the components or the transport plan
        are learnt from; more are subsampled as described above.
    pseudo_label_iter : int, default=10
        JDA: rounds of target pseudo-labelling (``0``: marginal MMD only).
    random_state : int, RandomState instance or None, default=None
        Draws that subsample.

    Attributes
    ----------
    n_features_in_ : int
        Number of input features.
    feature_names_in_ : ndarray of str
        Input feature names, when ``X`` has them.
    n_features_out_ : int
        Output width.
    source_mean_, target_mean_ : ndarray of shape (n_features,)
        Mean of the source and target training rows.
    coral_matrix_ : ndarray of shape (n_features, n_features)
        CORAL: ``A``.
    source_components_, target_components_ : ndarray of shape (n_components, n_features)
        SA: ``Ps'`` and ``Pt'``.
    alignment_matrix_ : ndarray of shape (n_components, n_components)
        SA: ``M = Ps' Pt``.
    X_fit_ : ndarray of shape (n_fit, n_features)
        TCA: rows the components were learnt from (original order).
    components_ : ndarray of shape (n_components, n_fit)
        TCA: ``W'`` (rows scaled to ``w' K w = 1``); the output is
        ``k(X, X_fit_) @ components_.T``.
    eigenvalues_ : ndarray of shape (n_components,)
        TCA: the generalised eigenvalues (for ``K / s``), descending.
    gamma_ : float
        TCA with ``kernel="rbf"``: the RBF width used.
    n_components_ : int
        SA, TCA, JDA: the number of components used.
    coupling_ : ndarray of shape (n_source_fit, n_target_fit)
        OT: the transport plan.
    source_fit_, source_mapped_ : ndarray of shape (n_source_fit, n_features)
        OT: the source rows of the plan and their barycentric images.
    n_iter_ : int
        OT: Sinkhorn iterations run.
    projection_ : ndarray of shape (n_features, n_components)
        JDA: ``A``; the output is ``X @ projection_``, rows scaled to unit length.
    target_pseudo_labels_ : ndarray of shape (n_target,)
        JDA: the last pseudo-labels of the target training rows (their own
        label for labelled target rows).

    See Also
    --------
    sktl.domain.make_da_pipeline : Pipeline whose classifier skips ``-1`` rows.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sktl.domain import DomainAdaptTransformer, make_da_pipeline
    >>> rng = np.random.RandomState(0)
    >>> Xs = rng.normal(size=(200, 2))
    >>> ys = (Xs[:, 0] + Xs[:, 1] > 0).astype(int)
    >>> Xt = rng.normal(size=(200, 2)) * [0.5, 2.0] + [0.0, 4.0]  # rescaled, shifted
    >>> yt = (Xt[:, 0] + (Xt[:, 1] - 4.0) / 4.0 > 0).astype(int)  # unknown at fit time
    >>> X, y = np.vstack([Xs, Xt]), np.r_[ys, [-1] * 200]  # -1: unlabelled target rows
    >>> for method in ["none", "coral"]:
    ...     pipe = make_da_pipeline(DomainAdaptTransformer(method), LogisticRegression())
    ...     accuracy = (pipe.fit(X, y).predict(Xt) == yt).mean()  # Xt as target rows
    ...     print(method, accuracy > 0.9)
    none False
    coral True
    >>> DomainAdaptTransformer("sa", n_components=1).fit_transform(X, y).shape
    (400, 1)
    """

    _parameter_constraints = {
        "method": [StrOptions(set(METHODS))],
        "reg": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "n_components": [Count(1), None],
        "kernel": [StrOptions({"linear", "rbf"})],
        "gamma": [Interval(Real, 0, None, closed="neither"), None],
        "mu": [Interval(Real, 0, None, closed="neither")],
        "ot_reg": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Count(1)],
        "max_samples": [Count(2)],
        "pseudo_label_iter": [Count(0)],
        "random_state": ["random_state"],
    }

    def __init__(self, method="coral", *, reg=1.0, n_components=None, kernel="linear",
                 gamma=None, mu=1.0, ot_reg=0.1, max_iter=1000, max_samples=5000,
                 pseudo_label_iter=10, random_state=None):
        self.method = method
        self.reg = reg
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.mu = mu
        self.ot_reg = ot_reg
        self.max_iter = max_iter
        self.max_samples = max_samples
        self.pseudo_label_iter = pseudo_label_iter
        self.random_state = random_state

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, sample_domain=None):
        """Learn the mapping from the source and the target rows of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Source and target rows, stacked.
        y : array-like of shape (n_samples,) or None
            Source labels, ``-1`` for unlabelled target rows. Used to tell
            the domains apart, and by ``"jda"`` (which needs them) for its
            class-conditional terms.
        sample_domain : array-like of shape (n_samples,), optional
            ``1`` (positive) for source rows, ``0`` (or negative) for target
            rows; overrides ``y`` (for labelled target rows).

        Returns
        -------
        self : DomainAdaptTransformer

        Raises
        ------
        ValueError
            If there is no source row or no target row.
        """
        self._fit(X, y, sample_domain)
        return self

    def fit_transform(self, X, y=None, sample_domain=None):
        """Fit, then return the training rows adapted, in their original order.

        Source rows are mapped as by :meth:`transform_source`, target rows as
        by :meth:`transform` (so, unlike ``fit(X).transform(X)``, the source
        rows are moved).

        Parameters
        ----------
        X, y, sample_domain
            As in :meth:`fit`.

        Returns
        -------
        X_new : ndarray of shape (n_samples, ``n_features_out_``)
        """
        X, source, ot_rows = self._fit(X, y, sample_domain)
        out = np.empty((len(X), self.n_features_out_))
        mapped = self._map_source(X[source])
        if ot_rows is not None:  # rows of the plan: their exact barycentric images
            mapped[ot_rows] = self.source_mapped_
        out[source] = mapped
        out[~source] = self._map_target(X[~source])
        return out

    @atomic_fit
    def _fit(self, X, y, sample_domain):
        self._validate_params()
        # A refit with another method must not keep the last method's state.
        for name in _METHOD_ATTRIBUTES:
            self.__dict__.pop(name, None)
        X = validate_data(self, X, reset=True, dtype=np.float64, ensure_min_samples=2)
        if self.method != "none":
            _check_magnitude(X, self.method)
        if y is not None:
            check_label_types(y)
            y = column_or_1d(y, warn=True)
        source, target = self._domains(X, y, sample_domain)
        Xs, Xt = X[source], X[target]
        self.source_mean_ = Xs.mean(axis=0)
        self.target_mean_ = Xt.mean(axis=0)
        self._method = self.method
        if self.method == "jda":
            self._fit_jda(X, source, y)
            return X, source, None
        ot_rows = getattr(self, f"_fit_{self.method}")(X, source)
        return X, source, ot_rows

    def _domains(self, X, y, sample_domain):
        n = len(X)
        if y is not None:
            check_consistent_length(X, y)
        if sample_domain is not None:
            sample_domain = np.asarray(sample_domain)
            if sample_domain.ndim != 1 or len(sample_domain) != n:
                raise ValueError(f"sample_domain must be 1-D with one value per row of X "
                                 f"({n}); got shape {sample_domain.shape}.")
        source, target = domain_masks(y, sample_domain, n_samples=n)
        name = type(self).__name__
        if not target.any():
            raise ValueError(
                f"{name} found no target-domain rows: mark the unlabelled target rows "
                "with y = -1 (sktl.domain.UNLABELLED), or pass sample_domain "
                "(1 for source rows, 0 for target rows).")
        if not source.any():
            raise ValueError(
                f"{name} found no source-domain rows: every row is marked as target "
                "(y = -1 everywhere, y=None without sample_domain, or no positive "
                "sample_domain); fit needs the labelled source rows too.")
        return source, target

    def _fit_none(self, X, source):
        self.n_features_out_ = X.shape[1]

    def _fit_coral(self, X, source):
        self.coral_matrix_ = _coral_matrix(X[source], X[~source], self.source_mean_,
                                           self.target_mean_, self.reg)
        self.n_features_out_ = X.shape[1]

    def _fit_sa(self, X, source):
        ns, nt = source.sum(), (~source).sum()
        k = _clip_components(self.n_components, min(X.shape[1], ns - 1, nt - 1),
                             "min(n_features, n_source - 1, n_target - 1)")
        Ps = _pca_basis(X[source], self.source_mean_, k)
        Pt = _pca_basis(X[~source], self.target_mean_, k)
        self.source_components_, self.target_components_ = Ps.T, Pt.T
        self.alignment_matrix_ = Ps.T @ Pt
        self.n_components_ = self.n_features_out_ = k

    def _fit_tca(self, X, source):
        rows = _subsample(source, self.max_samples, check_random_state(self.random_state))
        X_fit, fit_source = X[rows], source[rows]
        rank = len(rows) - 1
        what = "n_fit_rows - 1"
        if self.kernel == "linear" and X.shape[1] < rank:
            rank, what = X.shape[1], "n_features (linear kernel)"
        k = _clip_components(self.n_components, rank, what)
        if self.kernel == "rbf":
            variance = X_fit.var()
            self.gamma_ = (self.gamma if self.gamma is not None
                           else 1.0 / (X.shape[1] * variance) if variance > 0
                           else 1.0 / X.shape[1])
        K = _kernel(X_fit, X_fit, self.kernel, getattr(self, "gamma_", None))
        scale = _kernel_variance(K)
        self.eigenvalues_, W = _tca_eigen(K / scale, fit_source, self.mu, k)
        self.X_fit_ = X_fit
        self.components_ = _unit_rkhs_norm(W, K).T
        self.n_components_ = self.n_features_out_ = k

    def _fit_ot(self, X, source):
        rows = _subsample(source, self.max_samples, check_random_state(self.random_state))
        in_fit = np.zeros(len(X), dtype=bool)
        in_fit[rows] = True
        Xs, Xt = X[source & in_fit], X[~source & in_fit]
        M = euclidean_distances(Xs, Xt, squared=True)
        P, self.n_iter_, converged = _sinkhorn(M, self.ot_reg * _median_positive(M),
                                               self.max_iter)
        if not np.isfinite(P).all():
            raise ValueError(_SCALE_HINT.format(what="The transport plan is not finite",
                                                method="ot"))
        if not converged:
            warnings.warn(f"Sinkhorn did not converge in max_iter={self.max_iter} iterations; "
                          "increase max_iter or ot_reg.", ConvergenceWarning, stacklevel=3)
        self.coupling_ = P
        self.source_fit_ = Xs
        self.source_mapped_ = (P @ Xt) / P.sum(axis=1, keepdims=True)
        self.n_features_out_ = X.shape[1]
        return np.flatnonzero(in_fit[source])  # positions among the source rows

    def _fit_jda(self, X, source, y):
        if y is None:
            raise ValueError("method='jda' needs the source labels: pass y (source labels, "
                             "-1 for unlabelled target rows).")
        if self.kernel != "linear":
            raise ValueError(f"method='jda' is implemented for kernel='linear' only; got "
                             f"kernel={self.kernel!r}.")
        y = np.asarray(y)
        check_consistent_length(X, y)
        y_source, y_target = y[source], y[~source].copy()
        known = ~is_unlabelled(y_target)  # labelled target rows keep their label
        # Source rows marked unlabelled (via sample_domain) count in the
        # marginal term only: they are neither a class nor a neighbour.
        labelled = ~is_unlabelled(y_source)
        if not labelled.any():
            raise ValueError("method='jda' needs labelled source rows; every source row "
                             "of y is -1 (sktl.domain.UNLABELLED).")
        classes = np.unique(y_source[labelled])
        k = _clip_components(self.n_components, X.shape[1], "n_features")
        centred = X - X.mean(axis=0)
        scatter = centred.T @ centred  # X' H X
        Xs, Xt = X[source], X[~source]
        pseudo = None
        for round_ in range(self.pseudo_label_iter + 1):
            E = _mmd_vectors(len(Xs), len(Xt), y_source, pseudo, classes)
            # X' H X does not depend on the row order: the stacked order is fine.
            A = _jda_projection(np.vstack([Xs, Xt]), scatter, E, self.mu, k)
            if round_ == self.pseudo_label_iter:
                break
            labeller = KNeighborsClassifier(1).fit(_unit_rows(Xs[labelled] @ A),
                                                   y_source[labelled])
            pseudo = labeller.predict(_unit_rows(Xt @ A))
            pseudo[known] = y_target[known]
        self.projection_ = A
        self.target_pseudo_labels_ = pseudo if pseudo is not None else y_target
        self.n_components_ = self.n_features_out_ = k

    # ------------------------------------------------------------------ transform
    def transform(self, X):
        """Map rows as **target-domain** rows.

        This is what a pipeline applies at ``predict``/``score`` time, so
        new target data reach the classifier in the space it was trained
        in. Identity for ``"none"``, ``"coral"`` and ``"ot"`` (which move
        the source onto the target); the target projection for ``"sa"`` and
        ``"tca"``; the shared projection, rows scaled to unit length, for
        ``"jda"``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_new : ndarray of shape (n_samples, ``n_features_out_``)
        """
        check_is_fitted(self, "n_features_out_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._map_target(X)

    def transform_source(self, X):
        """Map rows as **source-domain** rows (onto the target domain).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_new : ndarray of shape (n_samples, ``n_features_out_``)
        """
        check_is_fitted(self, "n_features_out_")
        X_valid = validate_data(self, X, reset=False, dtype=np.float64)
        return _wrap_data_with_container("transform", self._map_source(X_valid), X, self)

    def _map_target(self, X):
        method = self._method
        if method == "sa":
            return (X - self.target_mean_) @ self.target_components_.T
        if method == "tca":
            return self._tca_embed(X)
        if method == "jda":
            return _unit_rows(X @ self.projection_)
        return X.copy()

    def _map_source(self, X):
        method = self._method
        if method == "coral":
            return (X - self.source_mean_) @ self.coral_matrix_ + self.target_mean_
        if method == "sa":
            return ((X - self.source_mean_) @ self.source_components_.T
                    @ self.alignment_matrix_)
        if method in ("tca", "jda"):
            return self._map_target(X)
        if method == "ot":
            if len(X) == 0:
                return X.copy()
            nearest = pairwise_distances_argmin(X, self.source_fit_)
            return X + (self.source_mapped_ - self.source_fit_)[nearest]
        return X.copy()

    def _tca_embed(self, X):
        K = _kernel(X, self.X_fit_, self.kernel, getattr(self, "gamma_", None))
        return K @ self.components_.T

    def get_feature_names_out(self, input_features=None):
        """Output feature names.

        The input names for ``"none"``, ``"coral"`` and ``"ot"`` (same
        width); ``domainadapttransformer0``, ``domainadapttransformer1``, ...
        for ``"sa"``, ``"tca"`` and ``"jda"``.

        Returns
        -------
        ndarray of str
        """
        check_is_fitted(self, "n_features_out_")
        if self._method in _SAME_WIDTH:
            return _check_feature_names_in(self, input_features)
        return _generate_get_feature_names_out(self, self.n_features_out_,
                                               input_features=input_features)
