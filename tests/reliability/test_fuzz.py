"""Property-based fuzzing of every public estimator with ``hypothesis``.

Random arrays (shapes, dtypes, NaN, infinities, huge and tiny values),
random texts (empty strings, any code point, lone surrogates), random
label vectors (numbers, strings, a mix, NaN, one class, the wrong length)
and random detection targets go into ``fit`` and the prediction methods.
Any input either works, and then every output is finite and of the right
shape, or raises an exception that sktl (or scikit-learn's input
validation) raised on purpose with a message; never a NaN, a raw torch or
numpy error from deep inside, or a crash.

The budget is small in CI (``SKTL_FUZZ_EXAMPLES``, default 50 examples per
test, a fifth of it for whole CNNs and detectors, derandomised so that CI
is reproducible); raise it to hunt:
``SKTL_FUZZ_EXAMPLES=2000 SKTL_FUZZ_SEED=random pytest tests/reliability/test_fuzz.py``.
"""

import functools
import os
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import sklearn
import torch
from conftest import TinyNet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

import sktl
from sktl import (
    ContrastiveClassifier,
    DistillationClassifier,
    DomainAdaptTransformer,
    FeatureExtractor,
    SubdomainEnsembleClassifier,
    TransferClassifier,
    TransferDetector,
    TransferRegressor,
)
from sktl.losses import DomainAwareLoss

EXAMPLES = int(os.environ.get("SKTL_FUZZ_EXAMPLES", "50"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=os.environ.get("SKTL_FUZZ_SEED") != "random",
                suppress_health_check=list(HealthCheck), print_blob=True)
#: Whole CNNs and detectors: a fifth of the examples.
FUZZ_SLOW = settings(FUZZ, max_examples=max(3, EXAMPLES // 5))

#: Where an exception may come from: sktl's own checks, or scikit-learn's
#: (input validation, parameter constraints, encoders), whose messages
#: name the problem. A raise inside torch or numpy means nobody checked.
OWN_CODE = (Path(sktl.__file__).parent, Path(sklearn.__file__).parent)
CLEAR = (ValueError, TypeError, FileNotFoundError, NotFittedError, FloatingPointError)


def _raised_in_own_code(exc):
    frames = traceback.extract_tb(exc.__traceback__)
    origin = Path(frames[-1].filename).resolve()
    return any(root in origin.parents for root in OWN_CODE)


def outcome(call):
    """Run ``call``: its result, or None when it raised a clear exception."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call()
    except CLEAR as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        assert _raised_in_own_code(exc), (
            f"{type(exc).__name__} raised inside {where.filename}:{where.lineno}, not by "
            f"a check of sktl or scikit-learn: {exc}")
        assert len(str(exc)) >= 15, f"a message too short to name the problem: {exc!r}"
        return None


def check_rows(out, n, width=None):
    out = np.asarray(out)
    assert out.shape[0] == n and (width is None or out.shape[1] == width), out.shape
    assert np.isfinite(out.astype(np.float64)).all(), "non-finite output"


# -- strategies -----------------------------------------------------------------
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, 1e-38, -1e30, 3e38, 1e300]))
OBJECTS = st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=3), FLOATS)
DTYPES = st.sampled_from(["float32", "float64", "int64", "uint8", "bool", "complex64",
                          "object", "<U2"])


def _elements(dtype):
    if dtype == "object":
        return OBJECTS
    if dtype == "<U2":
        return st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=2)
    if dtype.startswith("float"):
        return FLOATS.filter(lambda v: dtype == "float64" or abs(v) <= 3e38 or v != v)
    return None


@st.composite
def arrays(draw, max_dims=3):
    """Mostly sane float32 matrices, often broken ones."""
    if draw(st.booleans()):  # a usable matrix, sometimes with a bad value in it
        n, d = draw(st.integers(2, 12)), draw(st.integers(1, 5))
        X = draw(hnp.arrays("float32", (n, d),
                            elements=st.floats(-3, 3, width=32)))
        if draw(st.booleans()):
            X[draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))] = draw(FLOATS)
        return X
    dtype = draw(DTYPES)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=6))
    return draw(hnp.arrays(dtype, shape, elements=_elements(dtype)))


@st.composite
def labels(draw, n):
    """Label vectors for ``n`` rows: mostly of length n, of every kind."""
    if draw(st.integers(0, 9)) == 0:
        n = max(0, n + draw(st.sampled_from([-1, 1])))
    kind = draw(st.sampled_from(["int", "str", "mix", "float", "bool", "2d", "minus1"]))
    if kind == "int":
        return draw(hnp.arrays("int64", n, elements=st.integers(0, 3)))
    if kind == "str":
        return draw(hnp.arrays("<U1", n, elements=st.sampled_from("abc")))
    if kind == "mix":
        return draw(st.lists(st.one_of(st.integers(-1, 2), st.sampled_from(["a", "b"])),
                             min_size=n, max_size=n))
    if kind == "float":
        return draw(hnp.arrays("float64", n, elements=FLOATS))
    if kind == "bool":
        return draw(hnp.arrays("bool", n))
    if kind == "2d":
        return draw(hnp.arrays("int64", (n, 2), elements=st.integers(0, 1)))
    return draw(hnp.arrays("int64", n, elements=st.integers(-1, 1)))


@st.composite
def arrays_and_labels(draw):
    X = draw(arrays())
    n = X.shape[0] if X.ndim else 1
    return X, draw(labels(n))


# -- array estimators ------------------------------------------------------------
def _classifier():
    return TransferClassifier(TinyNet, unfreeze="all", max_epochs=1, batch_size=4,
                              random_state=0, cache=False)


ESTIMATORS = {
    "transfer_classifier": _classifier,
    "transfer_classifier_head": lambda: TransferClassifier(
        TinyNet, unfreeze=0, max_epochs=1, batch_size=4, random_state=0, cache=False),
    "transfer_classifier_prefix": lambda: TransferClassifier(
        TinyNet, unfreeze=1, max_epochs=1, early_stopping=1, random_state=0, cache=False),
    "contrastive": lambda: ContrastiveClassifier(
        TinyNet, batch_size=8, pair_iterations=2, random_state=0, cache=False),
    "domain_loss": lambda: TransferClassifier(
        TinyNet, unfreeze=1, criterion=DomainAwareLoss("coral"), max_epochs=1,
        random_state=0, cache=False),
    "transfer_regressor": lambda: TransferRegressor(
        TinyNet, unfreeze="all", max_epochs=1, batch_size=4, random_state=0, cache=False),
    "feature_extractor": lambda: FeatureExtractor(TinyNet, random_state=0, cache=False),
    "distillation": lambda: DistillationClassifier(LogisticRegression(), _classifier(),
                                                   random_state=0),
    "ensemble": lambda: SubdomainEnsembleClassifier(LogisticRegression(), n_subdomains=2,
                                                    random_state=0),
}
ESTIMATORS.update({f"adapt_{m}": (lambda m=m: DomainAdaptTransformer(m, random_state=0))
                   for m in ("none", "coral", "sa", "tca", "ot", "jda")})


def _check_fitted(est, X):
    """Every prediction method on ``X``: finite, one row per sample."""
    n = len(X) if np.ndim(X) or isinstance(X, list) else -1  # a scalar must be refused
    if hasattr(est, "predict_proba"):
        proba = outcome(lambda: est.predict_proba(X))
        if proba is not None:
            check_rows(proba, n, len(est.classes_))
            assert np.allclose(proba.sum(axis=1), 1.0)
        pred = outcome(lambda: est.predict(X))
        if pred is not None:
            assert np.isin(pred, est.classes_).all()
    elif hasattr(est, "transform"):
        out = outcome(lambda: est.transform(X))
        if out is not None:
            check_rows(out, n, getattr(est, "n_features_out_", None))
    else:
        out = outcome(lambda: est.predict(X))
        if out is not None:
            check_rows(out, n)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@FUZZ
@given(data=arrays_and_labels())
def test_array_inputs_work_or_raise_a_clear_error(name, data):
    X, y = data
    est = ESTIMATORS[name]()
    unsupervised = name == "feature_extractor"
    fitted = outcome(lambda: est.fit(X) if unsupervised else est.fit(X, y))
    if fitted is not None:
        _check_fitted(est, X)


@functools.cache
def fitted_model(name):
    """A model of each kind, fitted once on sane data."""
    rng = np.random.RandomState(0)
    X = rng.normal(size=(24, 4)).astype("float32")
    y = np.arange(24) % 3
    model = ESTIMATORS[name]()
    if name == "feature_extractor":
        return model.fit(X)
    if name.startswith("adapt_") or name == "domain_loss":
        return model.fit(X, np.where(np.arange(24) < 16, y, -1))
    return model.fit(X, y)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@FUZZ
@given(X=arrays())
def test_prediction_inputs_work_or_raise_a_clear_error(name, X):
    _check_fitted(fitted_model(name), X)


# -- texts -------------------------------------------------------------------------
TEXTS = st.lists(st.one_of(st.text(max_size=30),
                           st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
                           st.sampled_from(["", " ", "\x00", "\ud800", "a" * 2000]),
                           st.none(), st.integers()),
                 min_size=0, max_size=8)


@pytest.fixture(scope="module")
def small_encoder(minilm_dir):
    from sktl.backbones import truncate_sentence_encoder

    return truncate_sentence_encoder(minilm_dir, 1)


@pytest.mark.parametrize("kind", ["extractor", "classifier", "contrastive"])
@FUZZ
@given(texts=TEXTS, data=st.data())
def test_text_inputs_work_or_raise_a_clear_error(kind, texts, data, small_encoder):
    y = data.draw(labels(len(texts)))
    if kind == "extractor":
        est = FeatureExtractor(small_encoder, cache=False, batch_size=4)
        if outcome(lambda: est.fit(texts)) is not None:
            _check_fitted(est, texts)
        return
    if kind == "contrastive":
        est = ContrastiveClassifier(small_encoder, unfreeze=1, batch_size=8,
                                    pair_iterations=1, random_state=0, cache=False)
    else:
        est = TransferClassifier(small_encoder, unfreeze=1, max_epochs=1, batch_size=8,
                                 random_state=0, cache=False)
    if outcome(lambda: est.fit(texts, y)) is not None:
        _check_fitted(est, texts)


# -- images ------------------------------------------------------------------------
@st.composite
def images(draw):
    dtype = draw(st.sampled_from(["uint8", "float32", "float64", "uint16", "int64", "bool"]))
    shape = draw(st.sampled_from([(3, 16, 16), (3, 16, 16, 3), (3, 3, 16, 16), (2, 16, 16, 1),
                                  (2, 16, 16, 4), (2, 5, 16, 16), (16, 16), (2, 1, 1, 3),
                                  (0, 16, 16, 3), (2, 16, 16, 2), (1, 2, 3, 4, 5)]))
    elements = FLOATS if dtype.startswith("float") else None
    X = draw(hnp.arrays(dtype, shape, elements=elements))
    if draw(st.booleans()):
        return list(X)  # a list of images
    return X


@pytest.mark.parametrize("kind", ["extractor", "classifier"])
@FUZZ_SLOW
@given(X=images(), data=st.data())
def test_image_inputs_work_or_raise_a_clear_error(kind, X, data):
    n = len(X) if np.ndim(X) or isinstance(X, list) else 1
    y = data.draw(labels(n))
    if kind == "extractor":
        est = FeatureExtractor("resnet18", weights=None, cache=False, random_state=0)
        if outcome(lambda: est.fit(X)) is not None:
            _check_fitted(est, X)
        return
    est = TransferClassifier("resnet18", weights=None, unfreeze=1, max_epochs=1,
                             batch_size=4, random_state=0, cache=False)
    if outcome(lambda: est.fit(X, y)) is not None:
        _check_fitted(est, X)


# -- detection ---------------------------------------------------------------------
@st.composite
def sane_box(draw):
    x1, y1 = draw(st.floats(0, 20)), draw(st.floats(0, 20))
    return [x1, y1, x1 + draw(st.floats(1, 12)), y1 + draw(st.floats(1, 12))]


@st.composite
def detection_data(draw):
    """Half the time a usable data set, else anything goes."""
    if draw(st.booleans()):
        n = draw(st.integers(2, 3))
        images = [draw(hnp.arrays("uint8", (32, 32, 3))) for _ in range(n)]
        label = st.sampled_from(["cat", "dog"]) if draw(st.booleans()) else st.integers(0, 2)
        targets = [{"boxes": draw(st.lists(sane_box(), min_size=k, max_size=k)),
                    "labels": draw(st.lists(label, min_size=k, max_size=k))}
                   for k in draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))]
        return images, targets
    n = draw(st.integers(0, 3))
    images = [draw(hnp.arrays("uint8", draw(st.sampled_from([(32, 32, 3), (32, 32), (3, 32, 32),
                                                              (32, 32, 5), (0, 32, 3)]))))
              for _ in range(n)]
    coordinate = st.one_of(st.floats(-5, 40), st.sampled_from([float("nan"), float("inf")]))
    box = st.one_of(sane_box(), st.lists(coordinate, min_size=4, max_size=4))
    label = st.one_of(st.integers(0, 2), st.sampled_from(["cat", "dog"]), st.none(),
                      st.just(float("nan")))
    targets = []
    for _ in range(n + (1 if draw(st.integers(0, 9)) == 0 else 0)):
        k = draw(st.integers(0, 2))
        target = {"boxes": draw(st.lists(box, min_size=k, max_size=k)),
                  "labels": draw(st.lists(label, min_size=k, max_size=k))}
        if draw(st.integers(0, 9)) == 0:
            target.pop(draw(st.sampled_from(["boxes", "labels"])))
        targets.append(target)
    return images, targets


@FUZZ_SLOW
@given(data=detection_data())
def test_detection_inputs_work_or_raise_a_clear_error(data):
    images, targets = data
    det = TransferDetector(weights=None, max_epochs=1, min_size=32, batch_size=2,
                           random_state=0)
    if outcome(lambda: det.fit(images, targets)) is not None:
        detections = outcome(lambda: det.predict(images))
        if detections is not None:
            assert len(detections) == len(images)
            for d in detections:
                assert all(torch.isfinite(torch.as_tensor(d[k])).all()
                           for k in ("boxes", "scores"))
