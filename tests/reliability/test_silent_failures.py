"""No silent wrong results: divergence, NaN outputs and unclear errors.

Each test tries to get a wrong answer out of sktl without a word (a NaN
prediction, a half-trained model, a raw torch or numpy error).
"""

import warnings

import numpy as np
import pytest
from conftest import TinyNet
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

from sktl import (
    ContrastiveClassifier,
    DistillationClassifier,
    DomainAdaptTransformer,
    FeatureExtractor,
    SubdomainEnsembleClassifier,
    TransferClassifier,
    TransferRegressor,
)
from sktl.exceptions import DivergenceError


@pytest.fixture
def data():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(48, 6)).astype("float32")
    return X, np.arange(48) % 3


class NaNNet(nn.Module):
    """A backbone whose outputs are all NaN (a broken checkpoint)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 8)

    def forward(self, x):
        return self.linear(x) * float("nan")


# -- divergence ---------------------------------------------------------------
@pytest.mark.parametrize("Est, target", [(TransferClassifier, "y"), (TransferRegressor, "x0")])
def test_a_huge_learning_rate_stops_with_the_epoch_and_a_hint(Est, target, data):
    X, y = data
    y = y if target == "y" else X[:, 0] * 1e3
    est = Est(TinyNet, unfreeze="all", lr=1e12, optimizer="sgd", max_epochs=30,
              random_state=0)
    with pytest.raises(DivergenceError, match=r"(?s)epoch \d+.*lr"):
        est.fit(X, y)


def test_a_diverged_refit_keeps_the_fitted_model(data):
    X, y = data
    clf = TransferClassifier(TinyNet, unfreeze="all", max_epochs=2, random_state=0).fit(X, y)
    before = clf.predict_proba(X)
    with pytest.raises(DivergenceError):
        clf.set_params(lr=1e12, optimizer="sgd", max_epochs=30).fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X), before)


@pytest.mark.parametrize("unfreeze", [0, "all"])
def test_a_backbone_that_outputs_nan_is_reported_at_fit(unfreeze, data):
    X, y = data
    with pytest.raises((DivergenceError, ValueError), match="(?i)nan"):
        TransferClassifier(NaNNet, unfreeze=unfreeze, max_epochs=2, random_state=0).fit(X, y)


def test_contrastive_tuning_stops_when_it_diverges(data):
    X, y = data
    clf = ContrastiveClassifier(TinyNet, batch_size=8, lr=1e12, criterion="cosine",
                                random_state=0)
    with pytest.raises(DivergenceError, match=r"(?s)epoch \d+.*lr"):
        clf.fit(X, y)


def test_distillation_reports_a_diverged_student(data):
    from sklearn.linear_model import LogisticRegression

    X, y = data
    student = TransferClassifier(TinyNet, unfreeze="all", lr=1e12, optimizer="sgd",
                                 max_epochs=30, random_state=0)
    with pytest.raises(DivergenceError):
        DistillationClassifier(LogisticRegression(), student).fit(X, y)


@pytest.mark.parametrize("Est", [TransferClassifier, TransferRegressor])
def test_predictions_are_never_silently_nan(Est, data):
    X, y = data
    est = Est(TinyNet, unfreeze="all", max_epochs=2, random_state=0)
    est.fit(X, y if Est is TransferClassifier else X[:, 0])
    extreme = X.copy()
    extreme[3] = [3e38, -3e38] * 3  # finite float32 inputs, inf - inf inside the network
    method = est.predict_proba if Est is TransferClassifier else est.predict
    with pytest.raises(ValueError, match=r"(?s)not finite.*\b3\b"):
        method(extreme)
    with pytest.raises(ValueError, match="not finite"):
        est.predict(extreme)


def test_feature_extractor_never_returns_nan_silently(data):
    X, _ = data
    with pytest.raises(ValueError, match="not finite"):
        FeatureExtractor(NaNNet, cache=False).fit(X).transform(X)


@pytest.mark.parametrize("scale", [1e155, 1e200])
def test_ot_on_huge_values_raises_a_clear_error(scale, data):
    X, y = data
    X = X.astype(np.float64) * scale
    y = np.where(np.arange(len(y)) < 24, y, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow on the way
        with pytest.raises(ValueError, match="(?i)scale"):
            DomainAdaptTransformer("ot").fit_transform(X, y)


# -- unclear errors made clear -----------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: TransferClassifier(TinyNet, max_epochs=1),
    lambda: DistillationClassifier(TransferClassifier(TinyNet, max_epochs=1),
                                   TransferClassifier(TinyNet, max_epochs=1)),
    lambda: SubdomainEnsembleClassifier(TransferClassifier(TinyNet, max_epochs=1),
                                        n_subdomains=2),
], ids=["transfer", "distillation", "ensemble"])
@pytest.mark.parametrize("container", ["object", "list", "pandas"])
def test_mixed_string_and_number_labels_are_named(make, container, data):
    X, _ = data
    labels = [1, "cat"] * 24
    if container == "object":
        y = np.array(labels, dtype=object)
    elif container == "pandas":
        pd = pytest.importorskip("pandas")
        y = pd.Series(labels)
    else:
        y = labels
    with pytest.raises((ValueError, TypeError), match="(?s)strings.*numbers|numbers.*strings"):
        make().fit(X, y)


def test_wrong_trailing_shape_at_predict_is_named(data):
    rng = np.random.RandomState(0)
    X3 = rng.normal(size=(48, 5, 4)).astype("float32")
    y = np.arange(48) % 2
    clf = TransferClassifier(nn.Sequential(nn.Flatten(), nn.Linear(20, 8)), unfreeze="all",
                             max_epochs=1, random_state=0).fit(X3, y)
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(5, 4\)|\(5, 4\).*\(5, 3\)"):
        clf.predict(rng.normal(size=(3, 5, 3)).astype("float32"))
    fe = FeatureExtractor(nn.Sequential(nn.Flatten(), nn.Linear(20, 8))).fit(X3)
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        fe.transform(rng.normal(size=(3, 5, 3)).astype("float32"))


def test_a_lone_surrogate_in_a_text_is_named():
    from sktl.backbones._inputs import validate_texts

    with pytest.raises(ValueError, match=r"(?si)text 1\b.*surrogate"):
        validate_texts(["fine", "bad \ud800 text"])


@pytest.mark.parametrize("param", ["unfreeze", "max_epochs", "batch_size"])
def test_booleans_are_not_counts(param, data):
    X, y = data
    with pytest.raises(InvalidParameterError, match=param):
        TransferClassifier(TinyNet, **{param: True}).fit(X, y)


def test_feature_extractor_and_adapter_reject_boolean_counts(data):
    X, y = data
    with pytest.raises(InvalidParameterError, match="batch_size"):
        FeatureExtractor(TinyNet, batch_size=True).fit(X)
    with pytest.raises(InvalidParameterError, match="max_iter"):
        DomainAdaptTransformer("ot", max_iter=True).fit(X, np.r_[y[:24], [-1] * 24])


def test_a_loaded_model_checks_the_sample_shape_too(data, tmp_path):
    import sktl

    rng = np.random.RandomState(0)
    X3 = rng.normal(size=(48, 5, 4)).astype("float32")
    clf = TransferClassifier(nn.Flatten, unfreeze=0, max_epochs=1,
                             random_state=0).fit(X3, np.arange(48) % 2)
    sktl.save(clf, tmp_path / "model")
    loaded = sktl.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict(X3), clf.predict(X3))
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        loaded.predict(rng.normal(size=(3, 5, 3)).astype("float32"))
