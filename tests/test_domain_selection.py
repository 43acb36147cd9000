"""Model selection without target labels: DomainKFold and the unsupervised scorers."""

import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from sktl.domain import is_unlabelled, make_da_pipeline
from sktl.model_selection import (
    DomainKFold,
    SourceTargetSplit,
    importance_weighted_scorer,
    prediction_entropy_scorer,
    reverse_validation_scorer,
    target_oracle_score,
)

DATA_HOME = Path(
    os.environ.get("SKTL_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
).resolve()


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    # Small problems: BLAS threads only contend (badly so on a busy machine).
    with threadpool_limits(limits=1, user_api="blas"):
        yield


SCORERS = {
    "entropy": prediction_entropy_scorer,
    "information": partial(prediction_entropy_scorer, diversity=True),
    "iwv": importance_weighted_scorer,
    "dev": partial(importance_weighted_scorer, variant="dev", metric="log_loss"),
    "reverse": reverse_validation_scorer,
}


# --------------------------------------------------------------------------
# A tiny domain-adaptation transformer (independent of DomainAdaptTransformer)
# --------------------------------------------------------------------------


class MeanAligner(TransformerMixin, BaseEstimator):
    """Subtract each domain's mean (``y == -1`` rows are target at fit time),
    then keep the ``n_components`` leading principal directions if given.

    Like sktl's DomainAdaptTransformer: ``fit_transform`` maps each training
    row by its own domain, ``transform`` maps rows as target rows,
    ``transform_source`` as source rows.
    """

    def __init__(self, align=True, n_components=None):
        self.align = align
        self.n_components = n_components

    def _fit(self, X, y):
        X = np.asarray(X, dtype=float)
        target = is_unlabelled(y)
        zero = np.zeros(X.shape[1])
        self.source_mean_ = X[~target].mean(0) if self.align and (~target).any() else zero
        self.target_mean_ = X[target].mean(0) if self.align and target.any() else zero
        centred = X - np.where(target[:, None], self.target_mean_, self.source_mean_)
        self.pca_ = PCA(self.n_components).fit(centred) if self.n_components else None
        return centred

    def _project(self, Z):
        return Z if self.pca_ is None else self.pca_.transform(Z)

    def fit(self, X, y):
        self._fit(X, y)
        return self

    def fit_transform(self, X, y):
        return self._project(self._fit(X, y))

    def transform(self, X):
        return self._project(np.asarray(X, dtype=float) - self.target_mean_)

    def transform_source(self, X):
        return self._project(np.asarray(X, dtype=float) - self.source_mean_)


def aligner_pipeline(**params):
    return make_da_pipeline(MeanAligner(**params), LogisticRegression())


CANDIDATES = [
    {"meanaligner__align": [False]},  # do nothing: harmful on a shifted target
    {"meanaligner__align": [True], "meanaligner__n_components": [None]},  # helpful
    {"meanaligner__align": [True], "meanaligner__n_components": [1]},  # drops the class axis
]
NONE, ALIGN, LOSSY = 0, 1, 2


def shifted_problem(shift=(6.0, 3.0), n=150, seed=0):
    """Two classes along x0 (at -1.5 / +1.5), a noisier uninformative x1 (sd 4);
    the target is the same distribution translated by ``shift``."""
    rng = np.random.RandomState(seed)

    def draw():
        labels = rng.randint(0, 2, n)
        return np.c_[np.where(labels, 1.5, -1.5) + rng.randn(n), 4 * rng.randn(n)], labels

    Xs, ys = draw()
    Xt, yt = draw()
    X = np.r_[Xs, Xt + np.asarray(shift)]
    y = np.r_[ys, -np.ones(n, dtype=int)]
    return X, y, yt


@pytest.fixture(scope="module")
def problem():
    return shifted_problem()


@pytest.fixture(scope="module")
def grid_results(problem):
    """Every scorer and the oracle on the three candidates, one grid search."""
    X, y, yt = problem
    scoring = {**SCORERS, "oracle": partial(target_oracle_score, y_target_true=yt)}
    search = GridSearchCV(aligner_pipeline(), CANDIDATES, cv=DomainKFold(3), scoring=scoring,
                          refit=False, error_score="raise").fit(X, y)
    return {name: search.cv_results_[f"mean_test_{name}"] for name in scoring}


# --------------------------------------------------------------------------
# Splitters
# --------------------------------------------------------------------------


def test_domain_kfold_folds_source_keeps_all_target_rows():
    rng = np.random.RandomState(0)
    y = np.r_[np.repeat([0, 1, 2], [30, 20, 10]), -np.ones(25, dtype=int)]
    perm = rng.permutation(y.size)  # domains interleaved
    y = y[perm]
    X = rng.randn(y.size, 3)
    source, target = np.flatnonzero(y != -1), np.flatnonzero(y == -1)
    cv = DomainKFold(5, shuffle=True, random_state=0)
    splits = list(cv.split(X, y))
    assert len(splits) == cv.get_n_splits() == 5
    tested = np.concatenate([np.intersect1d(test, source) for _, test in splits])
    assert np.array_equal(np.sort(tested), source)  # every source row tested exactly once
    for train, test in splits:
        assert set(target) <= set(train) and set(target) <= set(test)
        assert not set(train) & set(test) - set(target)  # source rows not on both sides
        assert set(train) | set(test) == set(range(y.size))
        assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)  # sorted
        counts = np.bincount(y[np.intersect1d(test, source)], minlength=3)
        assert list(counts) == [6, 4, 2]  # stratified
    again = [test for _, test in DomainKFold(5, shuffle=True, random_state=0).split(X, y)]
    assert all(np.array_equal(a, b) for a, (_, b) in zip(again, splits))
    assert "DomainKFold(n_splits=5" in repr(cv)


def test_domain_kfold_string_labels_and_unstratifiable_classes():
    y = np.array(["cat", "dog", "cat", "dog", "-1", "-1"], dtype=object)
    splits = list(DomainKFold(2).split(np.zeros((6, 1)), y))
    for _, test in splits:
        assert {4, 5} <= set(test) and sorted(y[test][:2]) == ["cat", "dog"]
    with pytest.warns(UserWarning, match="not stratified"):
        list(DomainKFold(3).split(np.zeros((5, 1)), [0, 1, 2, -1, -1]))
    # continuous source targets: plain folds, no warning
    folds = list(DomainKFold(2).split(np.zeros((5, 1)), [0.5, 1.5, 2.5, 3.5, -1]))
    assert all(4 in test for _, test in folds)


def test_domain_kfold_errors():
    X = np.zeros((4, 1))
    with pytest.raises(ValueError, match="no target rows"):
        next(DomainKFold(2).split(X, [0, 1, 0, 1]))
    with pytest.raises(ValueError, match="no labelled"):
        next(DomainKFold(2).split(X, [-1, -1, -1, -1]))
    with pytest.raises(ValueError, match="needs y"):
        next(DomainKFold(2).split(X, None))
    with pytest.raises(ValueError, match="greater than the number of source rows"):
        next(DomainKFold(3).split(X, [0, 1, -1, -1]))
    with pytest.raises(ValueError, match="random_state"):
        DomainKFold(3, random_state=0)
    with pytest.raises(ValueError, match="n_splits"):
        DomainKFold(1)


def test_source_target_split():
    y = np.r_[np.repeat([0, 1], 20), -np.ones(10, dtype=int)]
    X = np.zeros((y.size, 1))
    cv = SourceTargetSplit(0.25, random_state=0)
    assert cv.get_n_splits() == 1
    (train, test), = list(cv.split(X, y))
    assert set(range(40, 50)) <= set(train) & set(test)
    assert np.bincount(y[test][y[test] >= 0]).tolist() == [5, 5]
    assert len(set(train) & set(test)) == 10
    # a class with a single row cannot be stratified: plain shuffle split
    (train, test), = list(SourceTargetSplit(2, random_state=0).split(
        np.zeros((7, 1)), [0, 0, 0, 0, 1, -1, -1]))
    assert {5, 6} <= set(test) and len(test) == 4


# --------------------------------------------------------------------------
# Scorers in GridSearchCV / cross_validate
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["entropy", "iwv", "reverse"])
def test_scorers_drive_grid_search(problem, name):
    X, y, _ = problem
    search = GridSearchCV(aligner_pipeline(), {"meanaligner__n_components": [None, 1]},
                          cv=DomainKFold(3), scoring=SCORERS[name], error_score="raise")
    search.fit(X, y)
    assert search.best_params_ == {"meanaligner__n_components": None}
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert list(search.best_estimator_.classes_) == [0, 1]  # refit on all rows, no -1 class


def test_scorers_in_cross_validate(problem):
    X, y, yt = problem
    scoring = {**SCORERS, "oracle": partial(target_oracle_score, y_target_true=yt)}
    result = cross_validate(aligner_pipeline(), X, y, cv=DomainKFold(3), scoring=scoring,
                            error_score="raise", return_estimator=True)
    for name in scoring:
        assert np.all(np.isfinite(result[f"test_{name}"])), name
    Xt = X[y == -1]
    for model, oracle in zip(result["estimator"], result["test_oracle"]):
        assert oracle == pytest.approx(np.mean(model.predict(Xt) == yt))


@pytest.mark.parametrize("name", ["iwv", "reverse"])
def test_scorers_map_source_rows_inside_a_nested_pipeline(problem, name):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y, _ = problem
    flat = make_da_pipeline(StandardScaler(), MeanAligner(), LogisticRegression()).fit(X, y)
    nested = make_da_pipeline(make_pipeline(StandardScaler(), MeanAligner()),
                              LogisticRegression()).fit(X, y)
    np.testing.assert_array_equal(nested.predict(X), flat.predict(X))
    # The same model, nested or not: the same score (the aligner's
    # transform_source is found inside the inner pipeline).
    assert SCORERS[name](nested, X, y) == pytest.approx(SCORERS[name](flat, X, y))


def test_scorers_with_string_labels(problem):
    X, y, yt = problem
    names = np.array(["cat", "dog"], dtype=object)
    y_str = np.where(y == -1, -1, names[np.clip(y, 0, 1)]).astype(object)
    scoring = {**SCORERS,
               "oracle": partial(target_oracle_score, y_target_true=names[yt])}
    result = cross_validate(aligner_pipeline(), X, y_str, cv=DomainKFold(3), scoring=scoring,
                            error_score="raise")
    scoring["oracle"] = partial(target_oracle_score, y_target_true=yt)
    numeric = cross_validate(aligner_pipeline(), X, y, cv=DomainKFold(3), scoring=scoring,
                             error_score="raise")
    for name in scoring:
        np.testing.assert_allclose(result[f"test_{name}"], numeric[f"test_{name}"])


# --------------------------------------------------------------------------
# Rankings on a shifted problem: align means (helpful) vs do nothing / lossy
# --------------------------------------------------------------------------


def test_the_problem_rewards_alignment(grid_results):
    oracle = grid_results["oracle"]
    assert oracle[ALIGN] > 0.8 and oracle[NONE] < 0.6 and oracle[LOSSY] < 0.6


@pytest.mark.parametrize("name", list(SCORERS))
def test_every_scorer_ranks_alignment_above_the_lossy_candidate(grid_results, name):
    scores = grid_results[name]
    assert scores[ALIGN] > scores[LOSSY] + 0.05


@pytest.mark.parametrize("name", ["reverse", "information"])
def test_reverse_validation_and_information_rank_alignment_above_no_adaptation(
        grid_results, name):
    scores = grid_results[name]
    assert scores[ALIGN] > scores[NONE] + 0.3
    assert int(np.argmax(scores)) == ALIGN


def test_known_failures_documented(grid_results):
    # The unadapted model predicts one class, confidently, on the far target:
    # minimum entropy prefers it (the documented collapse) ...
    assert grid_results["entropy"][NONE] > grid_results["entropy"][ALIGN]
    # ... reverse validation gives that collapse the worst score ...
    assert grid_results["reverse"][NONE] == 0.0
    # ... and importance weighting, on source rows mapped as source rows, cannot
    # tell aligning the means from doing nothing (no source row lies where the
    # target is): it scores them alike.
    assert grid_results["iwv"][NONE] == pytest.approx(grid_results["iwv"][ALIGN], abs=0.02)


def test_importance_weighting_tracks_target_accuracy_under_covariate_shift():
    # p(y | x) shared, input shifted: a linear model of a band-shaped class is
    # worse on the target than on the source; IWV sees it, source accuracy not.
    rng = np.random.RandomState(0)
    n = 300
    xs, xt = rng.normal(0, 1, (n, 1)), rng.normal(1.5, 1, (n, 1))

    def label(x):
        band = (np.abs(x[:, 0] - 1.0) < 1.0).astype(int)
        return np.where(rng.rand(len(x)) < 0.9, band, 1 - band)

    ys, yt = label(xs), label(xt)
    X, y = np.r_[xs, xt], np.r_[ys, -np.ones(n, dtype=int)]
    scoring = {"iwv": importance_weighted_scorer,
               "source": lambda est, X, y: est.score(X, y),  # labelled (source) rows only
               "oracle": partial(target_oracle_score, y_target_true=yt)}
    result = cross_validate(make_da_pipeline(LogisticRegression()), X, y, cv=DomainKFold(3),
                            scoring=scoring, error_score="raise")
    iwv, source, oracle = (result[f"test_{k}"].mean() for k in ("iwv", "source", "oracle"))
    assert abs(iwv - oracle) < 0.5 * abs(source - oracle)


# --------------------------------------------------------------------------
# Target labels are never read
# --------------------------------------------------------------------------


def test_target_labels_cannot_change_the_scores(problem):
    X, y, yt = problem
    target = y == -1
    scores = []
    for labels in (yt, np.random.RandomState(1).permutation(yt)):
        y_full = y.copy()
        y_full[target] = labels  # what a careless user has at hand ...
        y_masked = np.where(target, -1, y_full)  # ... and what the scorers get
        assert np.array_equal(y_masked, y)
        result = cross_validate(aligner_pipeline(), X, y_masked, cv=DomainKFold(3),
                                scoring=SCORERS, error_score="raise")
        scores.append([result[f"test_{name}"] for name in SCORERS])
    np.testing.assert_array_equal(scores[0], scores[1])


@pytest.mark.parametrize("name", list(SCORERS))
def test_scorers_refuse_target_rows_that_carry_labels(problem, name):
    # With the target labels filled in there are no -1 rows: the scorers do not
    # guess which rows are target, they raise and say how to mark them.
    X, y, yt = problem
    model = aligner_pipeline().fit(X, y)
    y_full = np.where(y == -1, np.r_[np.zeros(np.sum(y != -1), int), yt], y)
    with pytest.raises(ValueError, match=r"y == -1.*DomainKFold"):
        SCORERS[name](model, X, y_full)


def test_reverse_model_learns_from_predictions_not_labels(problem):
    X, y, _ = problem
    seen = []

    class Recording(LogisticRegression):
        def fit(self, X, y, sample_weight=None):
            seen.append(np.asarray(y).copy())
            return super().fit(X, y, sample_weight)

    model = make_da_pipeline(MeanAligner(), Recording()).fit(X, y)
    seen.clear()
    reverse_validation_scorer(model, X, y)
    (reverse_y,) = seen  # SkipUnlabelled passed only the labelled rows: the target's
    np.testing.assert_array_equal(reverse_y, model.predict(X[y == -1]))


# --------------------------------------------------------------------------
# Individual scorers and errors
# --------------------------------------------------------------------------


class FixedProba(ClassifierMixin, BaseEstimator):
    """A 'fitted' classifier predicting the given probabilities for every row."""

    def __init__(self, proba=(0.5, 0.5)):
        self.proba = proba

    def fit(self, X, y):
        self.classes_ = np.unique(np.asarray(y)[~is_unlabelled(y)])
        return self

    def predict_proba(self, X):
        return np.tile(self.proba, (len(X), 1))

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def test_prediction_entropy_values():
    X, y = np.zeros((4, 1)), np.array([0, 1, -1, -1])
    uniform = FixedProba((0.5, 0.5)).fit(X, y)
    assert prediction_entropy_scorer(uniform, X, y) == pytest.approx(-np.log(2))
    assert prediction_entropy_scorer(uniform, X, y, diversity=True) == pytest.approx(0.0)
    sure = FixedProba((1.0, 0.0)).fit(X, y)
    assert prediction_entropy_scorer(sure, X, y) == 0.0  # the collapse scores best ...
    assert prediction_entropy_scorer(sure, X, y, diversity=True) == 0.0  # ... unless


def test_prediction_entropy_needs_no_source_rows_but_predict_proba(problem):
    X, y, _ = problem
    model = aligner_pipeline().fit(X, y)
    target = y == -1
    assert prediction_entropy_scorer(model, X[target], y[target]) == pytest.approx(
        prediction_entropy_scorer(model, X, y))
    svm = make_da_pipeline(SVC()).fit(X, y)
    with pytest.raises(TypeError, match="probability=True"):
        prediction_entropy_scorer(svm, X, y)


@pytest.mark.parametrize("name", ["iwv", "dev", "reverse"])
def test_scorers_needing_source_labels_refuse_target_only_rows(problem, name):
    X, y, _ = problem
    model = aligner_pipeline().fit(X, y)
    target = y == -1
    with pytest.raises(ValueError, match="no.*labelled source row|none of the rows.*source"):
        SCORERS[name](model, X[target], y[target])


@pytest.mark.parametrize("name", list(SCORERS))
def test_scorers_refuse_a_classifier_that_learnt_minus_one(problem, name):
    X, y, _ = problem
    naive = LogisticRegression().fit(X, y)  # not wrapped in SkipUnlabelled
    with pytest.raises(ValueError, match="SkipUnlabelled"):
        SCORERS[name](naive, X, y)


def test_plain_stratified_kfold_is_caught_by_the_scorers(problem):
    X, y, _ = problem
    source = y != -1
    # Without the target rows in the test folds, scoring raises and explains
    with pytest.raises(ValueError, match="DomainKFold"):
        cross_validate(aligner_pipeline(), X[source], y[source], cv=StratifiedKFold(3),
                       scoring=reverse_validation_scorer, error_score="raise")


def test_reverse_validation_worst_score_on_a_single_class_pseudo_labelling(problem):
    X, y, _ = problem
    constant = make_da_pipeline(DummyClassifier(strategy="most_frequent")).fit(X, y)
    assert reverse_validation_scorer(constant, X, y) == 0.0


def test_reverse_validation_refuses_an_estimator_that_cannot_skip_target_rows(problem):
    X, y, _ = problem

    class ForgetsToSkip(ClassifierMixin, BaseEstimator):  # fitted elsewhere, refits naively
        def fit(self, X, y):
            self.model_ = LogisticRegression().fit(X, y)
            self.classes_ = self.model_.classes_
            return self

        def predict(self, X):
            return self.model_.predict(X)

    model = ForgetsToSkip()
    model.model_ = aligner_pipeline().fit(X, y)  # predicts both classes on the target
    model.classes_ = model.model_.classes_
    with pytest.raises(ValueError, match="SkipUnlabelled"):
        reverse_validation_scorer(model, X, y)


def test_importance_weighted_variants_and_parameters(problem):
    X, y, _ = problem
    model = aligner_pipeline().fit(X, y)
    accuracy = importance_weighted_scorer(model, X, y)
    assert 0.0 <= accuracy <= 1.0
    assert importance_weighted_scorer(model, X, y, variant="dev") == pytest.approx(
        accuracy, abs=0.1)
    assert importance_weighted_scorer(model, X, y, metric="log_loss") < 0
    # a domain classifier that cannot tell the domains apart: weights 1, the
    # score is the plain source accuracy
    flat = importance_weighted_scorer(
        model, X, y, domain_classifier=DummyClassifier(strategy="prior"))
    source = y != -1
    assert flat == pytest.approx(np.mean(
        model[-1].predict(model[0].transform_source(X[source])) == y[source]))
    for bad in ({"metric": "f1"}, {"variant": "kmm"}, {"max_weight": 0.5}):
        with pytest.raises(ValueError):
            importance_weighted_scorer(model, X, y, **bad)


def test_target_oracle_score(problem):
    X, y, yt = problem
    model = aligner_pipeline().fit(X, y)
    Xt = X[y == -1]
    truth = np.mean(model.predict(Xt) == yt)
    assert target_oracle_score(model, X, y, yt) == truth
    y_full = np.where(y == -1, 0, y)
    y_full[y == -1] = yt
    assert target_oracle_score(model, X, y, y_full) == truth  # one label per row works too
    with pytest.raises(ValueError, match="one per target row"):
        target_oracle_score(model, X, y, yt[:-1])


# --------------------------------------------------------------------------
# Real data: Office-Caltech10, amazon -> webcam
# --------------------------------------------------------------------------


@pytest.mark.skipif(not (DATA_HOME / "office_caltech10_surf").is_dir(),
                    reason=f"Office-Caltech10 not found under {DATA_HOME} (set SKTL_DATA)")
def test_office_caltech_amazon_to_webcam():
    from sktl.datasets import load_office_caltech

    Xs, ys = load_office_caltech("amazon", data_home=DATA_HOME)
    Xt, yt = load_office_caltech("webcam", data_home=DATA_HOME)
    X, y = np.r_[Xs, Xt], np.r_[ys, -np.ones(len(Xt), dtype=int)]
    scoring = {**SCORERS, "oracle": partial(target_oracle_score, y_target_true=yt)}
    result = cross_validate(make_da_pipeline(MeanAligner(), LogisticRegression(C=0.01)), X, y,
                            cv=DomainKFold(3, shuffle=True, random_state=0),
                            scoring=scoring, error_score="raise")
    for name in scoring:
        assert np.all(np.isfinite(result[f"test_{name}"])), name
    assert np.all(result["test_entropy"] <= 0)
    for name in ("iwv", "reverse", "oracle"):
        assert np.all((result[f"test_{name}"] >= 0) & (result[f"test_{name}"] <= 1)), name
    assert result["test_reverse"].mean() > 0.3  # far above chance (0.1) with 10 classes
    assert result["test_oracle"].mean() > 0.3
