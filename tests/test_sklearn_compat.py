"""scikit-learn's own estimator checks, on a small vector backbone."""

from conftest import TinyNet
from sklearn.utils.estimator_checks import parametrize_with_checks

from sktl import ContrastiveClassifier, FeatureExtractor, TransferClassifier, TransferRegressor

FAST = {"max_epochs": 30, "lr": 0.02, "batch_size": 16, "random_state": 0}

ESTIMATORS = [
    TransferClassifier(TinyNet, unfreeze=0, **FAST),
    TransferClassifier(TinyNet, unfreeze="all", **FAST),
    TransferRegressor(TinyNet, unfreeze=1, **FAST),
    FeatureExtractor(TinyNet, random_state=0),
    # The backbone as an instance rather than a class.
    TransferClassifier(TinyNet(), unfreeze=1, **FAST),
    ContrastiveClassifier(TinyNet, lr=0.01, pair_iterations=5, random_state=0),
]

# sklearn compares joblib.hash(param) before and after fit against a deep
# copy; a deep-copied nn.Module never hashes like the original (tensor
# pickling), even untouched. test_transfer.py checks the instance's weights
# are unchanged by fit instead.
INSTANCE_FAILURES = {
    "check_estimators_overwrite_params": "deepcopy of an nn.Module changes its joblib.hash",
    "check_dont_overwrite_parameters": "deepcopy of an nn.Module changes its joblib.hash",
}


# float32 matrix products on CPU (oneDNN/MKL) block rows differently with
# the batch composition, so a row's output can move by ~1e-7 when predicted
# in another batch; these two checks demand rtol=1e-7.
BATCH_FAILURES = {
    "check_methods_subset_invariance": "float32 GEMM differs by ~1e-7 across batch sizes",
    "check_methods_sample_order_invariance": "float32 GEMM differs by ~1e-7 across batches",
}


# Training goes by mini-batches and their order: weighted rows equal repeated
# rows only with the whole training set in one batch, which
# tests/test_engine.py checks (test_integer_weights_equal_repeated_rows).
WEIGHT_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data":
        "mini-batches: weights equal repeated rows with the whole set in one batch only",
}


def _expected_failures(estimator):
    failures = dict(BATCH_FAILURES)
    if not isinstance(estimator, FeatureExtractor):
        failures.update(WEIGHT_FAILURES)
    if isinstance(estimator.backbone, TinyNet):
        failures.update(INSTANCE_FAILURES)
    return failures


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failures)
def test_sklearn_compatible(estimator, check):
    check(estimator)
