"""The feature cache: hits and misses, keys, equality with uncached runs."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyNet
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from sktl import FeatureCache, FeatureExtractor, TransferClassifier


@pytest.fixture
def cache():
    return FeatureCache()


def test_second_transform_is_served_from_the_cache(blobs, cache):
    X, _ = blobs
    fe = FeatureExtractor(TinyNet, random_state=0, cache=cache).fit(X)
    first = fe.transform(X)
    assert (cache.hits, cache.misses) == (0, len(X))
    second = fe.transform(X)
    assert (cache.hits, cache.misses) == (len(X), len(X))
    np.testing.assert_array_equal(first, second)
    # A clone (same weights: same random_state) reads the same rows; a subset too.
    clone(fe).fit(X).transform(X[:10])
    assert cache.hits == len(X) + 10


def test_cached_and_uncached_results_agree(blobs, cache):
    X, _ = blobs
    cached = FeatureExtractor(TinyNet, random_state=0, cache=cache).fit(X)
    cached.transform(X[::2])  # fill part of the cache in another batch layout
    plain = FeatureExtractor(TinyNet, random_state=0, cache=False).fit(X)
    np.testing.assert_allclose(cached.transform(X), plain.transform(X), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("before, after", [
    ({}, {"random_state": 1}),                                # other weights
    ({}, {"layer": "block1"}),                                # other layer
    ({"layer": "block1"}, {"layer": "block1", "pooling": "max"}),
])
def test_any_change_of_key_misses(blobs, cache, before, after):
    X, _ = blobs
    FeatureExtractor(TinyNet, random_state=0, cache=cache, **before).fit(X).transform(X)
    misses = cache.misses
    params = {"random_state": 0, **after}
    FeatureExtractor(TinyNet, cache=cache, **params).fit(X).transform(X)
    assert cache.misses == misses + len(X)


def test_same_weights_in_another_architecture_miss(blobs, cache):
    import copy

    X, _ = blobs
    relu = TinyNet()
    relu(torch.as_tensor(X[:1]))  # materialise the lazy layer
    tanh = copy.deepcopy(relu)
    tanh.block1[1] = torch.nn.Tanh()  # same weights, another function
    cached = FeatureExtractor(relu, cache=cache).fit(X)
    cached.transform(X)
    other = FeatureExtractor(tanh, cache=cache).fit(X).transform(X)
    np.testing.assert_allclose(other, FeatureExtractor(tanh, cache=False).fit(X).transform(X),
                               rtol=1e-6, atol=1e-7)
    assert cache.hits == 0


def test_precision_is_fixed_at_fit_with_its_cache_key(blobs, cache):
    X, _ = blobs
    fe = FeatureExtractor(TinyNet, random_state=0, cache=cache).fit(X)
    # set_params after fit takes effect at the next fit, as in sklearn: the
    # rows stay float32, under the float32 key.
    fe.set_params(precision="bf16")
    plain = FeatureExtractor(TinyNet, random_state=0, cache=False).fit(X).transform(X)
    np.testing.assert_allclose(fe.transform(X), plain, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(FeatureExtractor(TinyNet, random_state=0, cache=cache)
                               .fit(X).transform(X), plain, rtol=1e-6, atol=1e-7)


def test_changed_sample_content_misses(blobs, cache):
    X, _ = blobs
    fe = FeatureExtractor(TinyNet, random_state=0, cache=cache).fit(X)
    fe.transform(X)
    X2 = X.copy()
    X2[0, 0] += 1.0
    fe.transform(X2)
    assert cache.misses == len(X) + 1
    texts_cache = FeatureCache()
    from sktl._cache import sample_hashes

    assert sample_hashes(["a", "b"])[0] != sample_hashes(["b", "a"])[0]
    assert len(texts_cache) == 0


@pytest.mark.parametrize("as_given", [str, Path])
def test_rewritten_image_file_misses(tmp_path, cache, as_given):
    from PIL import Image

    path = tmp_path / "image.png"
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    fe = FeatureExtractor("resnet18", weights=None, random_state=0, cache=cache)
    first = fe.fit([as_given(path)]).transform([as_given(path)])
    Image.fromarray(rng.randint(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    os.utime(path, ns=(0, 1))  # a new modification time, whatever the clock's step
    second = fe.transform([as_given(path)])
    assert cache.misses == 2
    assert not np.allclose(first, second)


def test_fine_tuned_weights_never_read_stale_rows(blobs, cache):
    X, y = blobs
    pretrained = TinyNet()
    pretrained(torch.zeros(1, 5))
    FeatureExtractor(pretrained, cache=cache).fit(X).transform(X)
    tuned = TransferClassifier(pretrained, unfreeze="all", max_epochs=3, lr=0.05,
                               random_state=0, cache=cache).fit(X, y)
    hits = cache.hits
    from_tuned = FeatureExtractor(tuned, cache=cache).fit(X)
    feats = from_tuned.transform(X)
    assert cache.hits == hits  # new fingerprint: nothing reused
    expected = FeatureExtractor(tuned, cache=False).fit(X).transform(X)
    np.testing.assert_allclose(feats, expected, rtol=1e-6)


def test_frozen_classifier_and_grid_search_share_rows(blobs, cache):
    X, y = blobs
    pretrained = TinyNet()
    pretrained(torch.zeros(1, 5))
    search = GridSearchCV(TransferClassifier(pretrained, max_epochs=2, cache=cache,
                                             random_state=0),
                          {"lr": [0.01, 0.05, 0.1]}, cv=3).fit(X, y)
    # every sample's features were computed once; every later fit hit the cache
    assert cache.misses == len(X)
    assert cache.hits > 0
    pipe = GridSearchCV(make_pipeline(FeatureExtractor(pretrained, cache=cache),
                                      LogisticRegression()),
                        {"logisticregression__C": [0.1, 1.0]}, cv=3).fit(X, y)
    assert cache.misses == len(X)  # same backbone, same rows
    assert search.best_score_ > 0.5 and pipe.best_score_ > 0.5


def test_cache_is_shared_by_clones_bounded_and_picklable(blobs):
    X, _ = blobs
    small = FeatureCache(max_bytes=16 * 4 * 10)  # room for 10 rows of 16 float32
    # CPU: a GPU's float rounding depends on the batch a row is computed in,
    # and the rows below are computed in batches of different sizes.
    fe = FeatureExtractor(TinyNet, random_state=0, cache=small, device="cpu")
    assert clone(fe).cache is small
    fe.fit(X).transform(X)
    assert len(small) == 10 and small.nbytes <= small.max_bytes
    restored = pickle.loads(pickle.dumps(fe))
    assert len(restored.cache) == 0
    np.testing.assert_allclose(restored.transform(X), fe.transform(X), rtol=1e-6)


def test_halving_search_randomized_search_and_learning_curve_reuse_rows(blobs, cache):
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV, RandomizedSearchCV, learning_curve

    X, y = blobs
    pretrained = TinyNet()
    pretrained(torch.zeros(1, 5))
    clf = TransferClassifier(pretrained, max_epochs=2, cache=cache, random_state=0)
    HalvingGridSearchCV(clf, {"lr": [0.003, 0.01, 0.03, 0.1]}, cv=2, min_resources=30,
                        random_state=0).fit(X, y)
    assert cache.misses == len(X)
    RandomizedSearchCV(clf, {"lr": [0.003, 0.01, 0.03, 0.1]}, n_iter=3, cv=2,
                       random_state=0).fit(X, y)
    _sizes, _train_scores, test_scores = learning_curve(clf, X, y, cv=3,
                                                      train_sizes=[0.5, 1.0])
    assert cache.misses == len(X)  # every sample ran through the backbone once
    assert np.all(np.isfinite(test_scores))


def test_chained_fine_tuning_never_reads_the_sources_rows(blobs, cache):
    """source (frozen, features cached) -> fine-tuned target -> extractor."""
    X, y = blobs
    pretrained = TinyNet()
    pretrained(torch.zeros(1, 5))
    frozen = TransferClassifier(pretrained, unfreeze=0, max_epochs=1, cache=cache,
                                random_state=0).fit(X, y)
    tuned = TransferClassifier(frozen, unfreeze="all", max_epochs=3, lr=0.05, cache=cache,
                               random_state=0).fit(X, y)
    got = FeatureExtractor(tuned, cache=cache).fit(X).transform(X)
    expected = FeatureExtractor(tuned, cache=False).fit(X).transform(X)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
