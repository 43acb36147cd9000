"""SubdomainEnsembleClassifier: per-subdomain experts and their combination."""

import pickle

import numpy as np
import pytest
from conftest import TinyNet
from sklearn import config_context
from sklearn.base import clone
from sklearn.dummy import DummyClassifier
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC
from sklearn.utils import check_random_state
from sklearn.utils import estimator_checks as ec
from sklearn.utils._param_validation import InvalidParameterError

from sktl import SubdomainEnsembleClassifier, TransferClassifier


def _opposite(n=100, seed=0, shift=3.0):
    """Two subdomains (left/right in x0) whose classes lie in opposite directions of x1.

    One linear model over both is near chance; one per subdomain is near perfect.
    """
    rng = np.random.RandomState(seed)
    X = np.r_[rng.normal([-shift, 0], 1, (n, 2)), rng.normal([shift, 0], 1, (n, 2))]
    y = np.r_[X[:n, 1] > 0, X[n:, 1] < 0].astype(int)
    return X, y, np.repeat(["left", "right"], n)


def _same_concept(n=100, seed=0):
    """Two subdomains sharing one concept (y = x1 > 0, some label noise)."""
    rng = np.random.RandomState(seed)
    X = np.r_[rng.normal([-3, 0], 1, (n, 2)), rng.normal([3, 0], 1, (n, 2))]
    y = (X[:, 1] + rng.normal(0, 0.2, 2 * n) > 0).astype(int)
    return X, y, np.repeat([0, 1], n)


def _lr():
    return LogisticRegression()


# -- behaviour -----------------------------------------------------------------
def test_ensemble_beats_pooled_model_where_subdomains_differ():
    X, y, g = _opposite(seed=0)
    Xt, yt, _ = _opposite(seed=1)
    pooled = _lr().fit(X, y).score(Xt, yt)
    ensemble = SubdomainEnsembleClassifier(_lr()).fit(X, y, groups=g).score(Xt, yt)
    assert pooled < 0.7
    assert ensemble > 0.95
    assert ensemble - pooled > 0.25


def test_kmeans_recovers_well_separated_subdomains():
    X, y, g = _opposite(seed=0, shift=5.0)
    Xt, yt, _ = _opposite(seed=1, shift=5.0)
    model = SubdomainEnsembleClassifier(_lr(), n_subdomains=2, random_state=0).fit(X, y)
    assert adjusted_rand_score(g, model.clusterer_.labels_) == 1.0
    np.testing.assert_array_equal(model.subdomains_, [0, 1])
    np.testing.assert_array_equal(model.subdomain_counts_, [100, 100])
    assert len(model.estimators_) == 2
    assert model.score(Xt, yt) > 0.95


def test_mean_cannot_route_samples_but_similarity_can():
    X, y, g = _opposite(seed=0)
    Xt, yt, _ = _opposite(seed=1)
    scores = {c: SubdomainEnsembleClassifier(_lr(), combine=c, random_state=0)
              .fit(X, y, groups=g).score(Xt, yt) for c in ("similarity", "mean")}
    assert scores["similarity"] > scores["mean"] + 0.3


@pytest.mark.parametrize("combine", ["stacking", "mean", "similarity"])
def test_every_combination_rule_learns_a_shared_concept(combine):
    X, y, g = _same_concept(seed=0)
    Xt, yt, _ = _same_concept(seed=1)
    model = SubdomainEnsembleClassifier(_lr(), combine=combine, cv=3, random_state=0)
    model.fit(X, y, groups=g)
    assert model.score(Xt, yt) > 0.9
    proba = model.predict_proba(Xt)
    assert proba.shape == (len(Xt), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert (model.final_estimator_ is not None) == (combine == "stacking")
    assert (model.gate_ is not None) == (combine == "similarity")
    if combine == "stacking":
        assert model.final_estimator_.n_features_in_ == 2 * 2  # experts x classes


def test_stacking_uses_out_of_fold_probabilities_on_own_subdomain():
    # Pure-noise labels and 1-NN experts: in-sample, an expert reproduces its
    # labels exactly; out-of-fold it is right about half the time.
    rng = np.random.RandomState(0)
    X = np.r_[rng.normal(-3, 1, (60, 2)), rng.normal(3, 1, (60, 2))]
    y = rng.randint(0, 2, 120)
    g = np.repeat(["a", "b"], 60)
    model = SubdomainEnsembleClassifier(KNeighborsClassifier(1), combine="stacking",
                                        random_state=0).fit(X, y, groups=g)
    rows = [np.flatnonzero(g == "a"), np.flatnonzero(g == "b")]
    meta = model._stacking_features(X, y, rows, check_random_state(0))
    own = np.r_[meta[rows[0], :2].argmax(1), meta[rows[1], 2:].argmax(1)]
    agreement = np.mean(own == np.r_[y[rows[0]], y[rows[1]]])
    assert agreement < 0.75
    # The same expert in-sample: perfect agreement, which stacking must not see.
    assert model.estimators_[0].score(X[rows[0]], y[rows[0]]) == 1.0


def test_temperature_interpolates_between_hard_routing_and_mean():
    X, y, g = _opposite(seed=0)
    Xt = _opposite(seed=1)[0]
    fit = lambda **kw: SubdomainEnsembleClassifier(_lr(), **kw).fit(X, y, groups=g)
    mean = fit(combine="mean").predict_proba(Xt)
    np.testing.assert_allclose(fit(temperature=1e6).predict_proba(Xt), mean, atol=1e-4)
    hard = fit(temperature=1e-3)
    side = (hard.gate_.predict(Xt) == 1).astype(int)  # the most similar subdomain
    experts = np.stack([e.predict_proba(Xt) for e in hard.estimators_])
    np.testing.assert_allclose(hard.predict_proba(Xt), experts[side, np.arange(len(Xt))],
                               atol=1e-6)


def test_uniform_subdomain_prior_does_not_favour_the_larger_subdomain():
    rng = np.random.RandomState(0)
    X = np.r_[rng.normal([-2, 0], 1, (300, 2)), rng.normal([2, 0], 1, (30, 2))]
    y = (X[:, 1] > 0).astype(int)
    g = np.repeat(["big", "small"], [300, 30])
    middle = np.zeros((1, 2))  # as far from both subdomains
    weights = {prior: SubdomainEnsembleClassifier(_lr(), subdomain_prior=prior)
               .fit(X, y, groups=g).gate_.predict_proba(middle)[0]
               for prior in ("uniform", "empirical")}
    assert abs(weights["uniform"][0] - 0.5) < 0.15
    assert weights["empirical"][0] > 0.8


def test_gate_sees_nothing_in_subdomains_standardised_on_their_own():
    # Documented limitation: equal feature means -> the linear gate's optimum is
    # a zero weight vector, so "similarity" is exactly "mean".
    X, y, g = _opposite(seed=0)
    for side in ("left", "right"):
        X[g == side] = StandardScaler().fit_transform(X[g == side])
    fit = lambda c: SubdomainEnsembleClassifier(_lr(), combine=c).fit(X, y, groups=g)
    similarity = fit("similarity")
    np.testing.assert_allclose(similarity.gate_[-1].coef_, 0.0, atol=1e-12)
    np.testing.assert_allclose(similarity.predict_proba(X), fit("mean").predict_proba(X),
                               atol=1e-12)


def test_single_subdomain_is_the_pooled_model():
    X, y, _ = _opposite(seed=0)
    pooled = _lr().fit(X, y).predict_proba(X)
    for kw, groups in [({"n_subdomains": 1}, None), ({}, np.zeros(len(y)))]:
        for combine in ("similarity", "mean"):
            model = SubdomainEnsembleClassifier(_lr(), combine=combine, **kw)
            np.testing.assert_allclose(model.fit(X, y, groups=groups).predict_proba(X), pooled)
    stacked = SubdomainEnsembleClassifier(_lr(), n_subdomains=1, combine="stacking").fit(X, y)
    assert len(stacked.estimators_) == 1


# -- classes -------------------------------------------------------------------
@pytest.mark.parametrize("combine", ["similarity", "stacking", "mean"])
def test_expert_columns_are_aligned_to_global_classes(combine):
    # Subdomain "a" has classes cat/dog only, "b" dog/emu only (cat < dog < emu in x1).
    rng = np.random.RandomState(0)
    Xa = np.r_[rng.normal([-6, -4], 0.5, (30, 2)), rng.normal([-6, 0], 0.5, (30, 2))]
    Xb = np.r_[rng.normal([6, 0], 0.5, (30, 2)), rng.normal([6, 4], 0.5, (30, 2))]
    X = np.r_[Xa, Xb]
    y = np.repeat(["cat", "dog", "dog", "emu"], 30)
    g = np.repeat(["a", "b"], 60)
    model = SubdomainEnsembleClassifier(_lr(), combine=combine, cv=3, random_state=0)
    model.fit(X, y, groups=g)
    np.testing.assert_array_equal(model.classes_, ["cat", "dog", "emu"])
    np.testing.assert_array_equal(model.estimators_[0].classes_, ["cat", "dog"])
    np.testing.assert_array_equal(model.estimators_[1].classes_, ["dog", "emu"])
    proba = model.predict_proba(X)
    assert proba.shape == (120, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    if combine != "mean":  # the mean halves every expert's confidence: no threshold
        assert model.score(X, y) > 0.95
    if combine == "similarity":  # expert "a" never gives probability to "emu"
        assert proba[:60, 2].max() < 0.05
        assert proba[60:, 0].max() < 0.05


def test_single_class_subdomain_gets_a_constant_expert():
    X, y, g = _opposite(seed=0)
    rng = np.random.RandomState(1)
    X = np.r_[X, rng.normal([0, 8], 0.5, (20, 2))]  # a third subdomain, all class 1
    y = np.r_[y, np.ones(20, dtype=int)]
    g = np.r_[g, np.repeat("top", 20)]
    for combine in ("similarity", "stacking", "mean"):
        model = SubdomainEnsembleClassifier(_lr(), combine=combine, random_state=0)
        with pytest.warns(UserWarning, match="Subdomain 'top' holds only class 1"):
            model.fit(X, y, groups=g)
        assert isinstance(model.estimators_[2], DummyClassifier)
        assert model.predict_proba(X).shape == (len(X), 2)
    similarity = SubdomainEnsembleClassifier(_lr())
    with pytest.warns(UserWarning):
        similarity.fit(X, y, groups=g)
    assert np.all(similarity.predict(rng.normal([0, 8], 0.5, (10, 2))) == 1)


# -- non-numeric input, real transfer experts -----------------------------------
def _text_to_xy(texts):
    return np.array([[float(v) for v in t.split()] for t in texts])


def test_experts_get_raw_input_and_the_featurizer_serves_the_gate():
    X, y, g = _opposite(seed=0)
    texts = [f"{a:.4f} {b:.4f}" for a, b in X]
    to_xy = FunctionTransformer(_text_to_xy)
    expert = make_pipeline(FunctionTransformer(_text_to_xy), _lr())
    model = SubdomainEnsembleClassifier(expert, featurizer=to_xy).fit(texts, y, groups=g)
    Xt, yt, _ = _opposite(seed=1)
    assert model.score([f"{a:.4f} {b:.4f}" for a, b in Xt], yt) > 0.95
    assert model.featurizer_ is not to_xy and not hasattr(to_xy, "n_features_in_")
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(restored.predict_proba(texts), model.predict_proba(texts))


def test_standard_scaler_featurizer_for_badly_scaled_features():
    X, y, g = _opposite(seed=0, shift=5.0)
    X = X * [1.0, 1000.0]  # x1 dominates Euclidean distances: KMeans would split on it
    model = SubdomainEnsembleClassifier(_lr(), featurizer=StandardScaler(), n_subdomains=2,
                                        random_state=0).fit(X, y)
    assert adjusted_rand_score(g, model.clusterer_.labels_) == 1.0
    assert model.n_features_in_ == 2


def test_refit_with_a_featurizer_drops_the_last_fits_column_names():
    import pandas as pd

    X, y, g = _opposite(seed=0)
    model = SubdomainEnsembleClassifier(_lr()).fit(pd.DataFrame(X, columns=["a", "b"]), y,
                                                   groups=g)
    assert list(model.feature_names_in_) == ["a", "b"]
    model.set_params(featurizer=FunctionTransformer()).fit(X, y, groups=g)
    assert not hasattr(model, "feature_names_in_")


def test_transfer_classifier_experts():
    X, y, g = _opposite(n=40, seed=0)
    X = X.astype(np.float32)
    expert = TransferClassifier(TinyNet, unfreeze="all", max_epochs=40, lr=0.05,
                                batch_size=16, random_state=0)
    model = SubdomainEnsembleClassifier(expert).fit(X, y, groups=g)
    assert all(isinstance(e, TransferClassifier) for e in model.estimators_)
    assert not hasattr(expert, "classes_")  # the given expert is never fitted
    assert model.score(X, y) > 0.85


# -- model selection -----------------------------------------------------------
def test_grid_search_over_subdomains_and_combination_rule():
    X, y, _ = _opposite(seed=0, shift=5.0)
    grid = {"n_subdomains": [1, 2], "combine": ["similarity", "mean"]}
    search = GridSearchCV(SubdomainEnsembleClassifier(_lr(), random_state=0), grid, cv=3)
    search.fit(X, y)
    assert search.best_params_ == {"combine": "similarity", "n_subdomains": 2}
    assert search.best_score_ > 0.95


def test_grid_search_routes_groups_to_fit_with_metadata_routing():
    X, y, g = _opposite(seed=0)
    with config_context(enable_metadata_routing=True):
        est = SubdomainEnsembleClassifier(_lr()).set_fit_request(groups=True)
        search = GridSearchCV(est, {"combine": ["similarity", "mean"]},
                              cv=KFold(3, shuffle=True, random_state=0))
        search.fit(X, y, groups=g)
    assert search.best_params_ == {"combine": "similarity"}
    np.testing.assert_array_equal(search.best_estimator_.subdomains_, ["left", "right"])


# -- scikit-learn conventions --------------------------------------------------
def test_clone_get_params_and_pickle_round_trip():
    X, y, g = _opposite(seed=0)
    est = SubdomainEnsembleClassifier(_lr(), combine="stacking", cv=3, random_state=0)
    assert est.get_params(deep=False) == {
        "estimator": est.estimator, "featurizer": None, "n_subdomains": None,
        "combine": "stacking", "temperature": 1.0, "subdomain_prior": "uniform", "cv": 3,
        "random_state": 0}
    assert "estimator__C" in est.get_params()
    twin = clone(est).set_params(estimator__C=0.5, temperature=2.0)
    assert twin.estimator.C == 0.5 and est.estimator.C == 1.0
    est.fit(X, y, groups=g)
    restored = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(restored.predict_proba(X), est.predict_proba(X))
    assert not hasattr(clone(est), "estimators_")


def test_same_random_state_same_model():
    X, y, _ = _opposite(seed=0)
    fit = lambda rs: SubdomainEnsembleClassifier(
        _lr(), n_subdomains=3, combine="stacking", cv=2, random_state=rs).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(fit(0), fit(0))


SKLEARN_CHECKS = [
    ec.check_estimators_pickle, ec.check_dont_overwrite_parameters,
    ec.check_estimators_overwrite_params, ec.check_dict_unchanged,
    ec.check_get_params_invariance, ec.check_set_params, ec.check_estimators_unfitted,
    ec.check_classifiers_one_label, ec.check_classifiers_regression_target,
    ec.check_estimators_nan_inf, ec.check_estimators_empty_data_messages,
    ec.check_methods_subset_invariance,
]


@pytest.mark.filterwarnings("ignore:Subdomain .* holds only class")
@pytest.mark.parametrize("check", SKLEARN_CHECKS, ids=lambda c: c.__name__)
def test_sklearn_checks(check):
    # A fast selection of scikit-learn's estimator checks (the whole suite passes
    # too, for every combination rule, but takes ~35 s per configuration).
    est = SubdomainEnsembleClassifier(_lr(), n_subdomains=2, random_state=0)
    check(type(est).__name__, est)


def test_predict_before_fit_raises():
    X, _, _ = _opposite(seed=0)
    with pytest.raises(NotFittedError):
        SubdomainEnsembleClassifier(_lr(), n_subdomains=2).predict(X)


def test_feature_count_is_checked_at_predict():
    X, y, g = _opposite(seed=0)
    model = SubdomainEnsembleClassifier(_lr()).fit(X, y, groups=g)
    with pytest.raises(ValueError, match="X has 3 features"):
        model.predict(np.c_[X, X[:, 0]])


# -- errors --------------------------------------------------------------------
def test_subdomains_must_be_given_exactly_one_way():
    X, y, g = _opposite(seed=0)
    with pytest.raises(ValueError, match="pass groups=.* or set n_subdomains=k"):
        SubdomainEnsembleClassifier(_lr()).fit(X, y)
    with pytest.raises(ValueError, match="ambiguous"):
        SubdomainEnsembleClassifier(_lr(), n_subdomains=2).fit(X, y, groups=g)


@pytest.mark.parametrize("groups, match", [
    (np.repeat(["a", "b"], 50), "groups has 100 entries but X has 200 rows"),
    (np.r_[np.zeros(199), 1], r"at least 2 training rows; too small: 1\.0 \(1 row\)"),
    (np.zeros((200, 2)), "groups must be 1-D"),
    (np.array(["a", 1] * 100, dtype=object), "one sortable type"),
])
def test_bad_groups(groups, match):
    X, y, _ = _opposite(seed=0)
    with pytest.raises(ValueError, match=match):
        SubdomainEnsembleClassifier(_lr()).fit(X, y, groups=groups)


def test_failed_refit_keeps_the_fitted_ensemble():
    X, y, g = _opposite(seed=0)
    clf = SubdomainEnsembleClassifier(_lr()).fit(X, y, groups=g)
    before = clf.predict_proba(X)
    with pytest.raises(ValueError, match="only one class"):
        clf.fit(X, np.full(len(y), 7), groups=g)
    np.testing.assert_array_equal(clf.classes_, [0, 1])
    np.testing.assert_array_equal(clf.predict_proba(X), before)


def test_bad_inputs_say_what_is_wrong():
    X, y, g = _opposite(seed=0)
    X_nan = X.copy()
    X_nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        SubdomainEnsembleClassifier(_lr()).fit(X_nan, y, groups=g)
    with pytest.raises(ValueError, match=r"y contains only one class \(1\)"):
        SubdomainEnsembleClassifier(_lr()).fit(X, np.ones(len(y), dtype=int), groups=g)
    with pytest.raises(ValueError, match="n_subdomains=5 is more than the 4 training rows"):
        SubdomainEnsembleClassifier(_lr(), n_subdomains=5).fit(X[:4], [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"has no predict_proba.*SVC\(probability=True\)"):
        SubdomainEnsembleClassifier(SVC()).fit(X, y, groups=g)
    with pytest.raises(ValueError, match="Unknown label type"):
        SubdomainEnsembleClassifier(_lr()).fit(X, X[:, 0], groups=g)


@pytest.mark.parametrize("params, match", [
    ({"combine": "median"}, "'combine' parameter"),
    ({"temperature": 0.0}, "'temperature' parameter"),
    ({"subdomain_prior": "size"}, "'subdomain_prior' parameter"),
    ({"n_subdomains": 0}, "'n_subdomains' parameter"),
    ({"cv": 1}, "'cv' parameter"),
    ({"featurizer": "minilm"}, "'featurizer' parameter"),
])
def test_invalid_parameters_are_rejected_at_fit(params, match):
    X, y, _ = _opposite(seed=0)
    est = SubdomainEnsembleClassifier(_lr(), **{"n_subdomains": 2, **params})
    with pytest.raises(InvalidParameterError, match=match):
        est.fit(X, y)


def test_cv_must_partition_the_rows():
    from sklearn.model_selection import ShuffleSplit

    X, y, g = _opposite(seed=0)
    est = SubdomainEnsembleClassifier(_lr(), combine="stacking",
                                      cv=ShuffleSplit(2, test_size=0.2, random_state=0))
    with pytest.raises(ValueError, match="partitions the rows"):
        est.fit(X, y, groups=g)
