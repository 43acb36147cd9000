"""sktl on a real dask cluster: two worker processes on this machine.

Results must equal the single-process run: the grid search (best
parameters and every split's score), cross_validate, and the features of a
``FeatureExtractor`` mapped over dask array, bag and dataframe partitions.
"""

import logging
import os

import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.pipeline import make_pipeline
from torch import nn

from sktl import FeatureExtractor, TransferClassifier
from sktl.dask import apply

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


class CountingExtractor(FeatureExtractor):
    """Counts how many times this process unpickled one (a model shipped)."""

    unpickled = 0

    def __setstate__(self, state):
        super().__setstate__(state)
        type(self).unpickled += 1


def _unpickled():
    return CountingExtractor.unpickled


@pytest.fixture(scope="module")
def client():
    # LocalCluster exports OMP_NUM_THREADS=1 (and MKL/OpenBLAS caps) into this
    # process's environment for its workers and never takes them back; sktl
    # reads OMP_NUM_THREADS, so every later test would train on one thread.
    environ = dict(os.environ)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()
    os.environ.clear()
    os.environ.update(environ)


def _mlp():
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU())


def test_extractor_over_dask_array_partitions(client, blobs):
    X, _ = blobs
    fe = CountingExtractor(_mlp(), random_state=0, batch_size=8).fit(X)
    expected = fe.transform(X)
    lazy = fe.transform(da.from_array(X, chunks=15))  # 8 partitions
    assert isinstance(lazy, da.Array)
    assert lazy.shape == expected.shape and lazy.chunks[0] == (15,) * 8
    assert_allclose(lazy.compute(), expected, rtol=1e-6, atol=1e-6)
    # The model went to each worker at most once, not once per partition.
    counts = client.run(_unpickled)
    assert 1 <= sum(counts.values()) <= 2, counts


def test_extractor_over_bag_and_dataframe_of_texts(client, minilm_dir):
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    db = pytest.importorskip("dask.bag")
    texts = [f"review {i}: {'good' if i % 2 else 'bad'} movie, {'great' * (i % 3)}"
             for i in range(24)]
    fe = FeatureExtractor(minilm_dir, batch_size=8, cache=False).fit(texts[:1])
    expected = fe.transform(texts)
    bag = db.from_sequence(texts, npartitions=3)
    frame = dd.from_pandas(pd.DataFrame({"text": texts}), npartitions=2)
    results = dask.compute(fe.transform(bag), apply(fe, frame["text"]),
                           apply(fe, frame))  # a one-column frame is its column
    for result in results:
        assert_allclose(result, expected, atol=1e-5)


def test_apply_predict_proba(client, blobs):
    X, y = blobs
    clf = TransferClassifier(_mlp(), unfreeze="all", max_epochs=3, random_state=0).fit(X, y)
    lazy = apply(clf, da.from_array(X, chunks=40), method="predict_proba")
    assert_allclose(lazy.compute(), clf.predict_proba(X), rtol=1e-6, atol=1e-7)
    labels = apply(clf, da.from_array(X, chunks=40), method="predict").compute()
    np.testing.assert_array_equal(labels, clf.predict(X))


def test_apply_rejects_in_memory_input(blobs):
    X, _ = blobs
    fe = FeatureExtractor(_mlp(), random_state=0).fit(X)
    with pytest.raises(TypeError, match="dask array"):
        apply(fe, X)


def _searches(X, y):
    clf = TransferClassifier(_mlp(), unfreeze="all", max_epochs=4, batch_size=16,
                             random_state=0)
    grid = {"lr": [0.003, 0.03], "head": ["linear", "mlp"]}
    sequential = GridSearchCV(clf, grid, cv=3, n_jobs=1).fit(X, y)
    with joblib.parallel_backend("dask"):
        on_dask = GridSearchCV(clf, grid, cv=3, n_jobs=-1).fit(X, y)
    return sequential, on_dask


def test_grid_search_on_dask_equals_single_process(client, blobs):
    X, y = blobs
    y = (y == 0).astype(int)  # harder: scores differ between candidates
    sequential, on_dask = _searches(X, y)
    assert on_dask.best_params_ == sequential.best_params_
    for key in sequential.cv_results_:
        if key.startswith(("split", "mean_test", "std_test", "rank")):
            assert_allclose(on_dask.cv_results_[key], sequential.cv_results_[key],
                            err_msg=key)
    assert_allclose(on_dask.predict_proba(X), sequential.predict_proba(X), rtol=1e-5,
                    atol=1e-6)


def test_cross_validate_with_disk_cache_on_dask(client, blobs, tmp_path):
    X, y = blobs
    pipe = make_pipeline(FeatureExtractor(_mlp(), random_state=0, cache=str(tmp_path)),
                         LogisticRegression(max_iter=500))
    sequential = cross_validate(pipe, X, y, cv=4)
    with joblib.parallel_backend("dask"):
        on_dask = cross_validate(pipe, X, y, cv=4, n_jobs=-1)
    assert_allclose(on_dask["test_score"], sequential["test_score"])
    assert any(tmp_path.rglob("*.npz")) or any(p.is_file() for p in tmp_path.rglob("*"))
