"""Transferability scores (LogME, H-score, LEEP) and backbone ranking."""

import os

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from torch import nn

from sktl import FeatureExtractor
from sktl.model_selection import (
    hscore,
    hscore_scorer,
    leep_score,
    logme_score,
    logme_scorer,
    rank_backbones,
)


@pytest.fixture
def informative_and_noise():
    X, y = make_classification(n_samples=300, n_features=10, n_informative=6, n_redundant=0,
                               n_classes=3, random_state=0)
    noise = np.random.RandomState(1).randn(*X.shape)
    return X, noise, y


def _reference_logme(F, y):
    """Evidence of y ~ N(0, I/beta + F F^T/alpha), maximised numerically."""
    n = F.shape[0]

    def neg(log_ab):
        alpha, beta = np.exp(log_ab)
        cov = np.eye(n) / beta + F @ F.T / alpha
        return -stats.multivariate_normal(np.zeros(n), cov).logpdf(y)

    best = min((optimize.minimize(neg, x0, method="Nelder-Mead",
                                  options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
                for x0 in ([0.0, 0.0], [-3.0, 3.0], [3.0, -1.0])), key=lambda r: r.fun)
    return -best.fun / n


# ---------------------------------------------------------------- LogME


def test_logme_informative_beats_noise(informative_and_noise):
    X, noise, y = informative_and_noise
    assert logme_score(X, y) > logme_score(noise, y)


@pytest.mark.parametrize("shape", [(30, 3), (12, 20)])  # n > d and n < d
def test_logme_matches_reference_evidence(shape):
    rng = np.random.RandomState(0)
    F = rng.randn(*shape)
    y_reg = F[:, 0] - 0.5 * F[:, 1] + 0.3 * rng.randn(shape[0])
    assert logme_score(F, y_reg, task="regression") == pytest.approx(
        _reference_logme(F, y_reg), abs=1e-4)
    y_cls = rng.randint(0, 2, size=shape[0])
    onehot = np.eye(2)[y_cls]
    expected = np.mean([_reference_logme(F, onehot[:, j]) for j in range(2)])
    assert logme_score(F, y_cls) == pytest.approx(expected, abs=1e-4)


def test_logme_row_order_invariant_and_finite_with_degenerate_columns(informative_and_noise):
    X, _, y = informative_and_noise
    X = X.astype(np.float32)
    perm = np.random.RandomState(0).permutation(len(y))
    assert logme_score(X[perm], y[perm]) == pytest.approx(logme_score(X, y), rel=1e-8)
    degenerate = np.c_[X, np.full(len(y), 1e-33, np.float32),
                       np.float32(1e-33) * np.random.RandomState(2).randn(len(y), 5),
                       np.zeros(len(y), np.float32)].astype(np.float32)
    value = logme_score(degenerate, y)
    assert np.isfinite(value)
    # near-zero dimensions add nothing to the evidence
    assert value == pytest.approx(logme_score(X, y), abs=1e-6)
    for F in (np.zeros((50, 4)), np.ones((50, 4)), np.full((50, 4), 1e-33)):
        assert np.isfinite(logme_score(F, y[:50]))


def test_logme_regression_and_task_detection():
    rng = np.random.RandomState(0)
    F = rng.randn(200, 5)
    y = F @ rng.randn(5) + 0.1 * rng.randn(200)
    good = logme_score(F, y)  # auto: continuous -> regression
    assert good == logme_score(F, y, task="regression")
    assert good > logme_score(rng.randn(200, 5), y)
    Y2 = np.c_[y, -y]
    assert np.isfinite(logme_score(F, Y2))
    labels = np.array(["a", "b"] * 100)
    assert np.isfinite(logme_score(F, labels))
    with pytest.raises(ValueError):
        logme_score(F, y, task="bogus")


# ---------------------------------------------------------------- H-score


def test_hscore_informative_beats_noise_and_bounds(informative_and_noise):
    X, noise, y = informative_and_noise
    h_good, h_noise = hscore(X, y), hscore(noise, y)
    assert h_good > h_noise
    assert 0 <= h_noise < h_good <= 2 + 1e-9  # at most n_classes - 1
    assert hscore(X, y, shrinkage="auto") > hscore(noise, y, shrinkage="auto")
    assert hscore(X, y, shrinkage=0.0) == pytest.approx(h_good)


def test_hscore_matches_definition_and_degenerate_columns(informative_and_noise):
    X, _, y = informative_and_noise
    cov = np.cov(X, rowvar=False, bias=True)
    mu = X.mean(0)
    cond = np.array([X[y == c].mean(0) for c in y]) - mu
    cov_cond = cond.T @ cond / len(y)
    assert hscore(X, y) == pytest.approx(np.trace(np.linalg.inv(cov) @ cov_cond), rel=1e-8)
    perm = np.random.RandomState(0).permutation(len(y))
    assert hscore(X[perm], y[perm]) == pytest.approx(hscore(X, y), rel=1e-8)
    degenerate = np.c_[X, np.full(len(y), 1e-33), 1e-33 * np.random.RandomState(2).randn(len(y), 3)]
    for shrinkage in (None, "auto"):
        assert np.isfinite(hscore(degenerate.astype(np.float32), y, shrinkage=shrinkage))
    assert hscore(degenerate, y) == pytest.approx(hscore(X, y), rel=1e-6)
    assert hscore(np.zeros((20, 3)), y[:20]) == 0.0


# ---------------------------------------------------------------- LEEP


def test_leep_predictive_source_scores_higher():
    rng = np.random.RandomState(0)
    y = rng.randint(0, 3, size=300)
    logits = 3.0 * np.eye(5)[y] + rng.randn(300, 5)  # source classes 0..2 track y
    predictive = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    random = rng.dirichlet(np.ones(5), size=300)
    good, bad = leep_score(predictive, y), leep_score(random, y)
    assert bad < good <= 0
    assert leep_score(np.full((300, 5), 0.2), y) == pytest.approx(
        np.mean(np.log(np.bincount(y)[y] / 300)))
    with pytest.raises(ValueError):
        leep_score(logits, y)


# ---------------------------------------------------------------- scorers


class PassThrough(nn.Module):
    """Keeps the first ``k`` input columns: informative features."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return x[:, : self.k]


class Noise(nn.Module):
    """Features unrelated to the input (seeded, same width)."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        gen = torch.Generator().manual_seed(x.shape[0])
        return torch.randn(x.shape[0], self.k, generator=gen)


def test_scorers_on_fitted_feature_extractor(blobs):
    X, y = blobs
    torch.manual_seed(0)
    fe = FeatureExtractor(nn.Sequential(nn.Linear(5, 16), nn.ReLU()), device="cpu").fit(X)
    features = fe.transform(X)
    assert logme_scorer(fe, X, y) == pytest.approx(logme_score(features, y))
    assert hscore_scorer(fe, X, y) == pytest.approx(hscore(features, y))
    # a Pipeline ending in a classifier: its features are scored
    pipe = make_pipeline(fe, LogisticRegression()).fit(X, y)
    assert logme_scorer(pipe, X, y) == pytest.approx(logme_score(features, y))
    with pytest.raises(TypeError):
        logme_scorer(LogisticRegression().fit(X, y), X, y)


def test_scorer_in_grid_search(blobs):
    X, y = blobs
    search = GridSearchCV(FeatureExtractor(PassThrough(5), device="cpu"),
                          {"backbone": [PassThrough(5), Noise(5)]},
                          scoring={"logme": logme_scorer, "hscore": hscore_scorer},
                          refit="logme", cv=3).fit(X, y)
    assert isinstance(search.best_params_["backbone"], PassThrough)
    results = search.cv_results_
    assert results["mean_test_hscore"][0] > results["mean_test_hscore"][1]


# ---------------------------------------------------------------- ranking


@pytest.mark.parametrize("score", ["logme", "hscore", lambda f, y: -logme_score(f, y)])
def test_rank_backbones(score):
    X, y = make_classification(n_samples=200, n_features=8, n_informative=4,
                               n_redundant=0, shuffle=False, random_state=0)
    X = X.astype(np.float32)
    fitted = FeatureExtractor(Noise(4), device="cpu").fit(X)
    ranking = rank_backbones(X, y, {"noise": Noise(4),
                                    "informative": PassThrough(4),
                                    "unfitted": FeatureExtractor(PassThrough(3)),
                                    "fitted": fitted,
                                    "params": {"backbone": Noise(4)}},
                             score=score, device="cpu")
    names = list(ranking["backbone"])
    assert list(ranking.columns) == ["backbone", "score", "seconds"]
    assert ranking["score"].is_monotonic_decreasing
    assert (ranking["seconds"] >= 0).all()
    if callable(score):  # reversed score: noise first
        assert names.index("informative") > names.index("noise")
    else:
        assert set(names[:2]) == {"informative", "unfitted"}
    with pytest.raises(ValueError):
        rank_backbones(X, y, {"a": Noise(4)}, score="bogus")


def test_rank_backbones_task_for_whole_number_regression_targets():
    rng = np.random.RandomState(0)
    X = rng.rand(200, 4).astype(np.float32)
    y = np.round(20 * X[:, 0])  # a count-like target: whole numbers, 21 values
    candidates = {"noise": Noise(4), "informative": PassThrough(4)}
    ranking = rank_backbones(X, y, candidates, task="regression", device="cpu")
    expected = logme_score(X, y, task="regression")
    assert ranking["backbone"].iloc[0] == "informative"
    assert ranking["score"].iloc[0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="use score='logme'"):
        rank_backbones(X, y, candidates, score="hscore", task="regression")
    with pytest.raises(ValueError, match="task must be"):
        rank_backbones(X, y, candidates, task="counts")
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        rank_backbones(X, y[:-1], candidates)


def test_rank_backbones_without_pandas(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    X, y = make_classification(n_samples=100, n_features=6, shuffle=False, random_state=0)
    rows = rank_backbones(X.astype(np.float32), y,
                          {"noise": Noise(3), "informative": PassThrough(3)}, device="cpu")
    assert [r["backbone"] for r in rows] == ["informative", "noise"]
    assert set(rows[0]) == {"backbone", "score", "seconds"}


# ---------------------------------------------------------------- real data


@pytest.mark.integration
def test_logme_ranks_minilm_layers_like_linear_probe(minilm_dir):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sktl.datasets import load_sentiment

    texts, y = load_sentiment("sst2", "train")
    texts, y = list(texts[:1000]), np.asarray(y[:1000])
    results = {}
    for name, layer in (("final", None), ("embeddings", "embeddings")):
        features = FeatureExtractor(minilm_dir, layer=layer, batch_size=64,
                                    device="cpu").fit(texts).transform(texts)
        assert np.all(np.isfinite(features))
        logme = logme_score(features, y)
        accuracy = cross_val_score(LogisticRegression(max_iter=2000), features, y, cv=5).mean()
        results[name] = (logme, accuracy)
        print(f"MiniLM {name}: LogME={logme:.4f} LR 5-fold accuracy={accuracy:.4f}")
    assert all(np.isfinite(v) for pair in results.values() for v in pair)
    assert results["final"][0] > results["embeddings"][0]
    assert results["final"][1] > results["embeddings"][1]
