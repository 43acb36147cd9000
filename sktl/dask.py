"""Run fitted sktl estimators over dask collections, partition by partition.

:func:`apply` maps a fitted estimator's ``transform``/``predict_proba``/...
over the partitions of a ``dask.array``, ``dask.dataframe`` or ``dask.bag``
and returns a lazy ``dask.array``. The estimator (with its model) is sent
to the cluster once, as one piece of data every task depends on: with a
``distributed`` client it is scattered, and each worker fetches it once and
keeps it in memory for all the partitions it computes; with the local
schedulers it is one node of the task graph. Nothing is shipped per
partition.

Model selection needs nothing from this module: ``GridSearchCV``,
``cross_validate`` and friends run on a dask cluster through joblib::

    import joblib
    from dask.distributed import Client

    client = Client("tcp://scheduler:8786")  # or Client(LocalCluster(...))
    with joblib.parallel_backend("dask"):
        search = GridSearchCV(TransferClassifier(...), grid, n_jobs=-1).fit(X, y)

See the "Scaling" page of the documentation for multi-machine clusters,
GPUs per worker and shared feature caches.
"""

from __future__ import annotations

import uuid

import numpy as np

from ._streaming import is_dask_collection

__all__ = ["apply"]


def _client():
    """The default ``distributed`` client, if there is one."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _ship(estimator, client):
    """The estimator as a graph dependency, sent once per worker."""
    import dask

    if client is not None:
        # hash=False: no need to pickle the model once more just to name it.
        return client.scatter(estimator, hash=False)
    return dask.delayed(estimator, name=f"sktl-estimator-{uuid.uuid4().hex}",
                        traverse=False)


def _samples(part):
    """A partition as sktl reads it: a one-column frame is its column."""
    if hasattr(part, "columns") and part.shape[1] == 1:
        return part.iloc[:, 0]
    if hasattr(part, "columns"):
        return part.to_numpy()
    return part


def _apply_part(estimator, method, part, row_shape, dtype):
    part = _samples(part)
    n = part.shape[0] if hasattr(part, "shape") else len(part)
    if n == 0:
        return np.empty((0, *row_shape), dtype=dtype)
    return np.asarray(getattr(estimator, method)(part), dtype=dtype)


def _head(X):
    """The first sample of a dask collection, computed."""
    if hasattr(X, "take") and hasattr(X, "map_partitions") and not hasattr(X, "dtype") \
            and not hasattr(X, "columns") and not hasattr(X, "iloc"):  # bag
        return list(X.take(1, npartitions=-1))
    if hasattr(X, "head") and hasattr(X, "divisions"):  # dataframe or series
        return _samples(X.head(1, npartitions=-1))
    return X[:1].compute()


def _output_spec(estimator, method, X):
    """Row shape and dtype of ``estimator.method``'s output."""
    if method == "transform" and hasattr(estimator, "n_features_out_"):
        return (int(estimator.n_features_out_),), np.dtype(np.float32)
    classes = getattr(estimator, "classes_", None)
    if method == "predict_proba" and classes is not None:
        return (len(classes),), np.dtype(np.float64)
    out = np.asarray(getattr(estimator, method)(_head(X)))
    return out.shape[1:], out.dtype


def apply(estimator, X, *, method="transform"):
    """``estimator.method`` over the partitions of a dask collection, lazily.

    Parameters
    ----------
    estimator : fitted estimator
        A fitted :class:`~sktl.FeatureExtractor`, classifier, regressor or
        any fitted scikit-learn estimator or pipeline with ``method``. It
        is sent to the workers once, not once per partition.
    X : dask.array.Array, dask.dataframe.DataFrame or Series, or dask.bag.Bag
        The samples, split in partitions along the first axis: an array of
        images or rows (other axes are merged into one chunk), a 1-D object
        array of texts or paths, a series (or one-column frame) of texts or
        paths, a frame of numeric columns, or a bag of texts, paths or
        images.
    method : str, default="transform"
        The method to apply: ``"transform"``, ``"predict"``,
        ``"predict_proba"``, ``"decision_function"``...

    Returns
    -------
    dask.array.Array
        One row per sample, partitioned like ``X``. For a bag or a frame the
        partition lengths are unknown until computed (``compute()``, or
        ``compute_chunk_sizes()``).

    Raises
    ------
    TypeError
        If ``X`` is not a dask collection.

    See Also
    --------
    sktl.transform_to_memmap : Stream a larger-than-memory input on one machine.

    Examples
    --------
    >>> import dask.array as da
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktl import FeatureExtractor
    >>> from sktl.dask import apply
    >>> X = np.random.RandomState(0).normal(size=(100, 5)).astype("float32")
    >>> fe = FeatureExtractor(nn.Linear(5, 3), random_state=0).fit(X)
    >>> features = apply(fe, da.from_array(X, chunks=25))
    >>> features
    dask.array<concatenate, shape=(100, 3), dtype=float32, chunksize=(25, 3), chunktype=numpy.ndarray>
    >>> np.allclose(features.compute(), fe.transform(X), atol=1e-6)
    True
    """
    if not is_dask_collection(X):
        raise TypeError(f"X must be a dask array, dataframe or bag; got "
                        f"{type(X).__name__}. Call the estimator's {method} directly.")
    import dask
    import dask.array as da

    row_shape, dtype = _output_spec(estimator, method, X)
    if hasattr(X, "chunks") and hasattr(X, "ndim"):  # dask array
        if X.ndim > 1:
            X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
        parts = list(X.to_delayed().reshape(-1))
        lengths = list(X.chunks[0])
    else:  # bag, dataframe or series
        parts = list(X.to_delayed())
        lengths = [np.nan] * len(parts)
    shipped = _ship(estimator, _client())
    task = dask.delayed(_apply_part, pure=True)
    blocks = [da.from_delayed(task(shipped, method, part, row_shape, dtype),
                              shape=(n, *row_shape), dtype=dtype)
              for part, n in zip(parts, lengths)]
    return da.concatenate(blocks, axis=0)
