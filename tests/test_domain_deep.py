"""Deep domain adaptation inside TransferClassifier (criterion=DomainAwareLoss(...))."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from torch import nn

from sktl import FeatureExtractor, TransferClassifier
from sktl.losses import DomainAwareLoss


@pytest.fixture(scope="module")
def shift():
    """Source and a scaled, shifted target; target rows stacked with y = -1."""
    rng = np.random.RandomState(0)
    Xs = rng.normal(size=(200, 5)).astype("float32")
    Xt = (rng.normal(size=(200, 5)) * 2 + 1).astype("float32")
    X = np.vstack([Xs, Xt])
    y = np.r_[(Xs[:, 0] > 0).astype(int), -np.ones(len(Xt), int)]
    return X, y, Xs, Xt


def body():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())


def fit(X, y, domain_loss, weight=1.0, **kwargs):
    params = {"unfreeze": "all", "lr": 0.01, "max_epochs": 15, "batch_size": 64,
              "random_state": 0, **kwargs}
    criterion = None if domain_loss is None else DomainAwareLoss(domain_loss, weight)
    return TransferClassifier(body(), criterion=criterion, **params).fit(X, y)


def coral_distance(a, b):
    return float(np.sum((np.cov(a, rowvar=False) - np.cov(b, rowvar=False)) ** 2))


def domain_separability(a, b):
    X = np.vstack([a, b])
    d = np.r_[np.zeros(len(a)), np.ones(len(b))]
    return cross_val_score(LogisticRegression(max_iter=1000), X, d, cv=3).mean()


def features(clf, X):
    return FeatureExtractor(clf).fit(X).transform(X)


@pytest.mark.parametrize("loss", ["coral", "mmd", "dann"])
def test_domain_loss_trains_on_labelled_rows_and_aligns_features(shift, loss):
    X, y, Xs, Xt = shift
    # Same rows and batches; only the weight of the alignment differs.
    plain = fit(X, y, loss, weight=0.0)
    adapted = fit(X, y, loss, weight=100.0 if loss == "coral" else 1.0)
    assert list(adapted.classes_) == [0, 1]  # -1 is never a class
    fs_plain, ft_plain = features(plain, Xs), features(plain, Xt)
    fs, ft = features(adapted, Xs), features(adapted, Xt)
    if loss == "coral":
        assert coral_distance(fs, ft) < 0.2 * coral_distance(fs_plain, ft_plain)
    else:  # MMD and the adversary make the domains harder to tell apart
        assert domain_separability(fs, ft) < domain_separability(fs_plain, ft_plain) - 0.1
    # The domain module is training-only: the fitted model is backbone + head.
    assert not any(k.startswith("domain") for k in adapted.module_.state_dict())
    again = pickle.loads(pickle.dumps(adapted))
    np.testing.assert_allclose(again.predict_proba(Xt), adapted.predict_proba(Xt), atol=1e-6)


def test_domain_loss_is_reproducible(shift):
    X, y, _, Xt = shift
    a, b = fit(X, y, "dann"), fit(X, y, "dann")
    np.testing.assert_array_equal(a.predict_proba(Xt), b.predict_proba(Xt))


def test_domain_loss_errors(shift):
    X, y, _, _ = shift
    labelled = y != -1
    with pytest.raises(ValueError, match="label -1"):
        fit(X[labelled], y[labelled], "coral")
    with pytest.raises(ValueError, match="unfreeze=0"):
        fit(X, y, "mmd", unfreeze=0)
    with pytest.raises(ValueError, match="two classes"):
        fit(X, np.where(y == 1, 0, y), "coral")
    with pytest.raises(ValueError, match="domain='wasserstein'"):
        fit(X, y, "wasserstein")


def test_without_domain_loss_minus_one_is_an_ordinary_label(shift):
    _, _, Xs, _ = shift
    y = np.where(Xs[:, 0] > 0, 1, -1)  # binary labels {-1, 1}
    clf = fit(Xs, y, None)
    assert list(clf.classes_) == [-1, 1]


def test_early_stopping_with_target_rows(shift):
    X, y, _, Xt = shift
    clf = fit(X, y, "coral", early_stopping=2, max_epochs=5)
    assert np.isfinite([h["valid_loss"] for h in clf.history_]).all()
    assert clf.predict(Xt).shape == (len(Xt),)
