"""Frozen-prefix caching: training the unfrozen top on stored frozen outputs."""

import numpy as np
import pytest
import torch
from conftest import ReadsInputAgain, SharedAcrossTheCut, TinyCNN
from sklearn.model_selection import GridSearchCV
from torch import nn

from sktl import FeatureCache, TransferClassifier
from sktl.backbones import resolve_backbone
from sktl.callbacks import EarlyStopping


@pytest.fixture
def images():
    rng = np.random.RandomState(0)
    X = rng.randint(0, 255, size=(48, 1, 12, 12)).astype(np.float32) / 255
    y = (X[:, 0, :6].mean(axis=(1, 2)) > X[:, 0, 6:].mean(axis=(1, 2))).astype(int)
    return X, y


def counting(module_cls):
    """An instance of ``module_cls`` whose first block counts the samples it sees."""
    torch.manual_seed(0)
    module = module_cls()
    seen = []
    first = next(iter(module.children()))
    first.register_forward_hook(lambda m, i, o: seen.append(len(o)))
    return module, seen


@pytest.mark.parametrize("extra", [{}, {"head": "mlp", "early_stopping": 2}])
def test_prefix_caching_equals_training_through_frozen_blocks(images, extra):
    X, y = images
    params = {"unfreeze": 1, "max_epochs": 4, "lr": 0.05, "batch_size": 8,
              "random_state": 0, "cache": False, **extra}
    module, seen = counting(TinyCNN)
    fast = TransferClassifier(module, **params).fit(X, y)
    fast_runs = sum(seen)
    seen.clear()
    slow = TransferClassifier(module, **{**params, "cache": FeatureCache(prefix=False)}).fit(X, y)
    # The frozen block ran over the data once instead of once per epoch.
    assert fast_runs < 2 * len(X) <= 4 * len(X) <= sum(seen)
    np.testing.assert_allclose(fast.predict_proba(X), slow.predict_proba(X), atol=1e-5)
    for (name, a), (_, b) in zip(fast.backbone_.module.state_dict().items(),
                                 slow.backbone_.module.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    # Frozen weights and BatchNorm statistics are untouched.
    for name, value in module.conv1.state_dict().items():
        torch.testing.assert_close(fast.backbone_.module.conv1.state_dict()[name].cpu(), value)


def test_torchvision_cnn_splits_at_every_depth():
    bb = resolve_backbone("resnet18", weights=None)
    X = np.random.RandomState(0).randint(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    for n_frozen in range(1, len(bb.blocks)):
        split = bb.split(n_frozen, X, "cpu")
        assert split is not None and split.block_name == bb.block_names[n_frozen - 1]
    # The top shares the backbone's modules: training it trains the backbone.
    split = bb.split(4, X, "cpu")
    assert split.top.layer4 is bb.module.layer4


def test_unsplittable_backbone_trains_through_its_frozen_blocks(images):
    X, y = images
    module, seen = counting(ReadsInputAgain)
    clf = TransferClassifier(module, unfreeze=1, max_epochs=3, random_state=0,
                             cache=False).fit(X, y)
    assert sum(seen) >= 3 * len(X)  # ran every epoch: no prefix was cached
    assert clf.predict(X).shape == (len(X),)


def test_frozen_outputs_beyond_the_memory_bound_are_not_held(images, monkeypatch):
    from sktl._engine import frozen

    X, y = images
    module, seen = counting(TinyCNN)
    monkeypatch.setattr(frozen, "PREFIX_MAX_BYTES", 100)  # not one image's outputs
    cache = FeatureCache()
    TransferClassifier(module, unfreeze=1, max_epochs=3, random_state=0,
                       cache=cache).fit(X, y)
    assert sum(seen) >= 3 * len(X) and cache.nbytes == 0  # ran every epoch, nothing kept


def test_frozen_outputs_beyond_half_the_cache_are_held_but_not_stored(images):
    X, y = images
    module, seen = counting(TinyCNN)
    cache = FeatureCache(max_bytes=1000)  # far less than twice the outputs
    TransferClassifier(module, unfreeze=1, max_epochs=3, random_state=0,
                       cache=cache).fit(X, y)
    assert sum(seen) < 2 * len(X) and cache.nbytes == 0  # ran once, not stored


def test_grid_search_computes_frozen_outputs_once(images):
    X, y = images
    cache = FeatureCache()
    module, seen = counting(TinyCNN)
    search = GridSearchCV(
        TransferClassifier(module, unfreeze=1, max_epochs=3, random_state=0, cache=cache),
        {"lr": [0.01, 0.1]}, cv=3).fit(X, y)
    # 6 fits on 2/3 of the data, their scoring on the other 1/3 and the refit
    # read the same rows: each sample ran through the frozen block once
    # (plus a few probe samples per fit that check the split).
    n_train, n_test = 2 * len(X) // 3, len(X) // 3
    assert cache.misses == len(X)
    assert cache.hits + cache.misses == 6 * (n_train + n_test) + len(X)
    assert sum(seen) <= len(X) + 7 * 5
    assert search.best_estimator_.predict(X).shape == (len(X),)


def test_predictions_through_the_cache_equal_the_full_forward_pass(images):
    X, y = images
    for unfreeze in (0, 1):
        clf = TransferClassifier(TinyCNN, unfreeze=unfreeze, max_epochs=2, random_state=0,
                                 cache=FeatureCache()).fit(X, y)
        cached = clf.predict_proba(X)
        assert clf.cache.hits >= len(X)  # the frozen part was read, not run
        full = TransferClassifier(TinyCNN, unfreeze=unfreeze, max_epochs=2, random_state=0,
                                  cache=False).fit(X, y).predict_proba(X)
        np.testing.assert_allclose(cached, full, atol=1e-5)
        # Frozen weights changed by hand after the fit: the rows are not used.
        with torch.no_grad():
            clf.backbone_.module.conv1[0].weight.mul_(0)
        hits = clf.cache.hits
        changed = clf.predict_proba(X)
        assert clf.cache.hits == hits
        assert not np.allclose(changed, cached)


@pytest.mark.parametrize("prefix", [False, True])
def test_validation_loss_is_measured_on_the_held_out_rows(images, prefix):
    X, y = images
    stopping = EarlyStopping(validation_fraction=0.25)
    clf = TransferClassifier(TinyCNN, unfreeze=1, max_epochs=1, early_stopping=stopping,
                             random_state=0, cache=FeatureCache(prefix=prefix)).fit(X, y)
    _, valid_idx = clf._split(len(X), y, stopping)
    proba = clf.predict_proba(X[valid_idx])
    expected = -np.mean(np.log(proba[np.arange(len(valid_idx)), y[valid_idx]]))
    assert clf.history_[-1]["valid_loss"] == pytest.approx(expected, rel=1e-4)


def test_weights_used_on_both_sides_of_the_cut_are_not_split():
    from sktl.backbones import Backbone
    from sktl.backbones._inputs import ArrayPreprocessor

    module = SharedAcrossTheCut()
    bb = Backbone(module=module, blocks=[("a", [module.a]), ("shared", [module.shared])],
                  preprocess=ArrayPreprocessor(), input_kind="array", spec={})
    X = np.random.RandomState(0).randn(3, 4).astype(np.float32)
    # The prefix's output would use the weights the top trains: no split.
    assert bb.split(1, X, "cpu") is None
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    bb = Backbone(module=tied, blocks=[("0", [tied[0]]), ("1", [tied[1]])],
                  preprocess=ArrayPreprocessor(), input_kind="array", spec={})
    assert bb.split(1, X, "cpu") is None
    untied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    bb = Backbone(module=untied, blocks=[("0", [untied[0]]), ("1", [untied[1]])],
                  preprocess=ArrayPreprocessor(), input_kind="array", spec={})
    assert bb.split(1, X, "cpu") is not None
