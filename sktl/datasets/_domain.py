"""Visual domain-adaptation benchmarks: Office-Caltech10 (SURF) and
MNIST vs USPS (JDA protocol)."""

from __future__ import annotations

import numpy as np

from ._base import _fetch_file

__all__ = ["load_mnist_usps", "load_office_caltech"]

_OFFICE_FILES = {
    "amazon": "office_caltech10_surf/amazon_SURF_L10.mat",
    "caltech": "office_caltech10_surf/Caltech10_SURF_L10.mat",
    "dslr": "office_caltech10_surf/dslr_SURF_L10.mat",
    "webcam": "office_caltech10_surf/webcam_SURF_L10.mat",
}
_OFFICE_ALIASES = {
    "a": "amazon",
    "amazon": "amazon",
    "c": "caltech",
    "caltech": "caltech",
    "caltech10": "caltech",
    "d": "dslr",
    "dslr": "dslr",
    "w": "webcam",
    "webcam": "webcam",
}
_MNIST_USPS_FILE = "digits/MNIST_vs_USPS.mat"


def _loadmat(path, keys):
    from scipy.io import loadmat

    mat = loadmat(path)
    missing = [k for k in keys if k not in mat]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks the variable(s) {missing}; found "
            f"{sorted(k for k in mat if not k.startswith('__'))}."
        )
    return mat


def _labels_1_to_10(labels, path) -> np.ndarray:
    y = np.asarray(labels).ravel().astype(np.int64)
    if y.size and (y.min() < 1 or y.max() > 10):
        raise ValueError(
            f"{str(path)!r}: expected labels in 1..10, got {y.min()}..{y.max()}."
        )
    return y - 1


def load_office_caltech(
    domain, *, data_home=None, preprocess=True, download_if_missing=False
):
    """Load one domain of Office-Caltech10 with SURF bag-of-words features.

    Office-Caltech10 (Saenko et al. 2010; Gong et al. 2012) has 10 classes
    shared by 4 domains: amazon (958 images), caltech (1123), dslr (157) and
    webcam (295).  Each image is an 800-bin histogram of SURF visual words.
    The file's SHA-256 is checked.

    Parameters
    ----------
    domain : {"amazon", "caltech", "dslr", "webcam"}
        Domain; ``"A"``, ``"C"``, ``"D"``, ``"W"`` (and ``"caltech10"``) are
        accepted too, case-insensitively.
    data_home : str or path-like, default=None
        Data folder, see :func:`get_data_home`.  The file is read from
        ``data_home/office_caltech10_surf/``.
    preprocess : bool, default=True
        Apply the standard preprocessing of the GFK and CORAL code: divide
        each row by its sum (L1 normalisation), then z-score each feature
        within the domain (population standard deviation; constant features
        become 0).  If False, return the raw counts.
    download_if_missing : bool, default=False
        Download the file from its public source if it is missing.

    Returns
    -------
    X : ndarray of shape (n_samples, 800), dtype float64
        Features.
    y : ndarray of shape (n_samples,), dtype int64
        Labels 0 .. 9 (the file's 1 .. 10 minus one).

    Raises
    ------
    ValueError
        Unknown ``domain``.
    FileNotFoundError
        The file is missing and ``download_if_missing`` is False.
    ChecksumError
        The file does not have its expected SHA-256.

    Examples
    --------
    >>> from sktl.datasets import load_office_caltech
    >>> Xs, ys = load_office_caltech("amazon")  # doctest: +SKIP
    >>> Xt, yt = load_office_caltech("W")  # doctest: +SKIP
    >>> Xs.shape, Xt.shape  # doctest: +SKIP
    ((958, 800), (295, 800))
    """
    key = domain.lower() if isinstance(domain, str) else domain
    if key not in _OFFICE_ALIASES:
        raise ValueError(
            f"Unknown Office-Caltech10 domain {domain!r}; valid values are: "
            "'amazon', 'caltech', 'dslr', 'webcam' (or 'A', 'C', 'D', 'W')."
        )
    relpath = _OFFICE_FILES[_OFFICE_ALIASES[key]]
    path = _fetch_file(relpath, data_home, download_if_missing)
    mat = _loadmat(path, ("fts", "labels"))
    X = np.asarray(mat["fts"], dtype=np.float64)
    y = _labels_1_to_10(mat["labels"], path)
    if preprocess:
        row_sums = np.abs(X).sum(axis=1, keepdims=True)
        row_sums[row_sums == 0] = 1.0
        X = X / row_sums
        mean = X.mean(axis=0)
        std = X.std(axis=0)
        std[std == 0] = 1.0
        X = (X - mean) / std
    return X, y


def load_mnist_usps(*, data_home=None, normalize=True, download_if_missing=False):
    """Load the MNIST vs USPS digits benchmark (JDA protocol).

    2000 MNIST images (source) and 1800 USPS images (target), both resized
    to 16x16 grey levels in [0, 1] and flattened to 256 features, as used by
    Long et al. (ICCV 2013).  The file's SHA-256 is checked.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Data folder, see :func:`get_data_home`.  The file is read from
        ``data_home/digits/MNIST_vs_USPS.mat``.
    normalize : bool, default=True
        Scale each sample to unit L2 norm (as the JDA scripts do; all-zero
        samples stay zero).  If False, return the raw pixel values.
    download_if_missing : bool, default=False
        Download the file from its public source if it is missing.

    Returns
    -------
    Xs : ndarray of shape (2000, 256), dtype float64
        MNIST (source) samples.
    ys : ndarray of shape (2000,), dtype int64
        Source labels 0 .. 9.
    Xt : ndarray of shape (1800, 256), dtype float64
        USPS (target) samples.
    yt : ndarray of shape (1800,), dtype int64
        Target labels 0 .. 9.

    Raises
    ------
    FileNotFoundError
        The file is missing and ``download_if_missing`` is False.
    ChecksumError
        The file does not have its expected SHA-256.

    Examples
    --------
    >>> from sktl.datasets import load_mnist_usps
    >>> Xs, ys, Xt, yt = load_mnist_usps()  # doctest: +SKIP
    >>> Xs.shape, Xt.shape  # doctest: +SKIP
    ((2000, 256), (1800, 256))
    """
    path = _fetch_file(_MNIST_USPS_FILE, data_home, download_if_missing)
    mat = _loadmat(path, ("X_src", "Y_src", "X_tar", "Y_tar"))
    out = []
    for xk, yk in (("X_src", "Y_src"), ("X_tar", "Y_tar")):
        X = np.ascontiguousarray(np.asarray(mat[xk], dtype=np.float64).T)
        y = _labels_1_to_10(mat[yk], path)
        if X.shape[0] != y.shape[0]:
            raise ValueError(
                f"{str(path)!r}: {xk} has {X.shape[0]} samples but {yk} has "
                f"{y.shape[0]} labels."
            )
        if normalize:
            norms = np.linalg.norm(X, axis=1, keepdims=True)
            norms[norms == 0] = 1.0
            X = X / norms
        out.extend((X, y))
    return tuple(out)
