"""The one training engine, through every training estimator: callbacks,
criteria, learning-rate schedules, class and sample weights, augmentation,
mixed precision, early stopping and accelerate in every mode; what larger
data needs (data-loader workers, gradient accumulation, inference that
backs off on out-of-memory, concurrent predictions)."""

import numpy as np
import pytest
import sklearn
import torch
from conftest import Events, TinyCNN, TinyNet
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from torch import nn

import sktl
from sktl import (
    ContrastiveClassifier,
    DistillationClassifier,
    FeatureCache,
    FeatureExtractor,
    TransferClassifier,
    TransferRegressor,
)
from sktl.callbacks import EarlyStopping, GradientAccumulation
from sktl.losses import DomainAwareLoss, Loss, weighted_mean


@pytest.fixture
def data():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(64, 5)).astype("float32")
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    return X, y


def _images(n=24, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.rand(n, 1, 12, 12).astype("float32")
    y = np.arange(n) % 2
    X[y == 1, :, :6] += 0.5
    return X, y


def _mode(mode, **params):
    """An estimator of each training mode, and its fit arguments."""
    if mode == "finetune":
        return TransferClassifier(TinyNet, unfreeze="all", random_state=0, **params), None
    if mode == "head":
        return TransferClassifier(TinyNet, unfreeze=0, random_state=0, **params), None
    if mode == "prefix":
        return TransferClassifier(TinyNet, unfreeze=1, random_state=0, **params), None
    if mode == "regressor":
        return TransferRegressor(TinyNet, unfreeze="all", random_state=0, **params), "regress"
    if mode == "domain":
        return TransferClassifier(TinyNet, unfreeze=1, criterion=DomainAwareLoss("mmd"),
                                  random_state=0, **params), "target rows"
    if mode == "distillation":
        student = TransferClassifier(TinyNet, unfreeze="all", random_state=0, **params)
        return DistillationClassifier(LogisticRegression(), student), "target rows"
    if mode == "contrastive":
        return ContrastiveClassifier(TinyNet, lr=1e-2, batch_size=8, pair_iterations=2,
                                     random_state=0, **params), None
    raise ValueError(mode)


def _fit(est, kind, X, y):
    if kind == "regress":
        return est.fit(X, X[:, 0])
    if kind == "target rows":
        return est.fit(X, np.where(np.arange(len(y)) < 48, y, -1))
    return est.fit(X, y)


MODES = ["finetune", "head", "prefix", "regressor", "domain", "distillation", "contrastive"]


@pytest.mark.parametrize("mode", MODES)
def test_callbacks_receive_the_events_in_every_mode(mode, data):
    X, y = data
    events = Events()
    est, kind = _mode(mode, max_epochs=2, callbacks=[events])
    _fit(est, kind, X, y)
    if mode == "distillation":  # the student is a clone: its callbacks are copies
        events = est.student_.callbacks[0]
    seen = events.seen
    assert seen[0] == "train_begin" and seen[-1] == "train_end"
    assert seen.count("epoch_end") == 2 and seen.count("batch") >= 2


@pytest.mark.parametrize("mode", MODES)
def test_precision_and_early_stopping_in_every_mode(mode, data):
    X, y = data
    stopping = EarlyStopping(patience=1, validation_fraction=0.25)
    est, kind = _mode(mode, max_epochs=4, precision="bf16", early_stopping=stopping)
    fitted = _fit(est, kind, X, y)
    history = (fitted.student_ if mode == "distillation" else fitted).history_
    assert np.isfinite(history[:, "valid_loss"]).all()
    assert not hasattr(stopping, "best_epoch_")  # the parameter is left as given (a copy ran)


@pytest.mark.parametrize("mode", MODES)
def test_an_accelerator_trains_every_mode(mode, data):
    accelerate = pytest.importorskip("accelerate")
    X, y = data
    est, kind = _mode(mode, max_epochs=2, device=accelerate.Accelerator(cpu=True))
    fitted = _fit(est, kind, X, y)
    assert np.isfinite(fitted.predict(X).astype(float)).all()


# -- criteria ---------------------------------------------------------------------
class CountingMAE(Loss):
    """Mean absolute error on one-hot targets: a loss the engine does not know."""

    calls = 0

    def forward(self, output, target):
        CountingMAE.calls += 1
        rows = target["y"] >= 0
        onehot = nn.functional.one_hot(target["y"].clamp(min=0), output.logits.shape[1])
        per_row = (output.logits.softmax(1) - onehot).abs().sum(1)
        return weighted_mean(per_row, target, rows)


def test_a_custom_criterion_is_used(data):
    X, y = data
    CountingMAE.calls = 0
    clf = TransferClassifier(TinyNet, unfreeze="all", criterion=CountingMAE(), lr=0.05,
                             max_epochs=10, batch_size=16, random_state=0).fit(X, y)
    assert CountingMAE.calls == 10 * 4
    assert clf.score(X, y) > 0.8
    # The parameter is left as given: the fit trains a copy.
    assert isinstance(clf.criterion, CountingMAE)


@pytest.mark.parametrize("criterion", [nn.CrossEntropyLoss, nn.CrossEntropyLoss()])
def test_a_plain_torch_loss_plugs_in(criterion, data):
    X, y = data
    clf = TransferClassifier(TinyNet, unfreeze="all", criterion=criterion, lr=0.05,
                             max_epochs=10, random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.8
    with pytest.raises(ValueError, match="sample_weight and class_weight need an sktl"):
        clf.fit(X, y, sample_weight=np.ones(len(y)))


def test_a_regression_torch_loss(data):
    X, _ = data
    reg = TransferRegressor(TinyNet, unfreeze="all", criterion=nn.HuberLoss(), lr=0.02,
                            max_epochs=30, random_state=0).fit(X, X[:, 0])
    assert reg.score(X, X[:, 0]) > 0.8


# -- weights ----------------------------------------------------------------------
FULL_BATCH = {"unfreeze": "all", "lr": 0.05, "max_epochs": 15, "batch_size": 1000,
              "random_state": 0, "cache": False}


@pytest.mark.parametrize("unfreeze", ["all", 0])
def test_integer_weights_equal_repeated_rows(unfreeze, data):
    X, y = data
    w = np.random.RandomState(1).randint(1, 4, len(y))
    params = {**FULL_BATCH, "unfreeze": unfreeze}
    weighted = TransferClassifier(TinyNet, **params).fit(X, y, sample_weight=w)
    repeated = TransferClassifier(TinyNet, **params).fit(np.repeat(X, w, axis=0),
                                                         np.repeat(y, w))
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X),
                               rtol=1e-4, atol=1e-5)


def test_zero_weights_equal_dropped_rows_and_keep_the_classes(data):
    X, y = data
    w = np.ones(len(y))
    w[:20] = 0
    zero = TransferRegressor(TinyNet, **FULL_BATCH).fit(X, X[:, 0], sample_weight=w)
    # The regressor standardises y over the rows it sees: compare classifiers
    # for the model, and check the classifier keeps a class of zero weights.
    clf_zero = TransferClassifier(TinyNet, **FULL_BATCH).fit(X, y, sample_weight=w)
    clf_drop = TransferClassifier(TinyNet, **FULL_BATCH).fit(X[20:], y[20:])
    np.testing.assert_allclose(clf_zero.predict_proba(X), clf_drop.predict_proba(X),
                               rtol=1e-4, atol=1e-5)
    y3 = y.copy()
    y3[:5] = 2  # a class whose rows all weigh 0
    w3 = np.where(y3 == 2, 0.0, 1.0)
    clf = TransferClassifier(TinyNet, **FULL_BATCH).fit(X, y3, sample_weight=w3)
    assert list(clf.classes_) == [0, 1, 2]
    assert np.isfinite(zero.predict(X)).all()


def test_balanced_class_weight_equals_its_sample_weights(data):
    X, y = data
    y = np.where(np.arange(len(y)) < 50, 0, 1)  # 50:14
    balanced = TransferClassifier(TinyNet, class_weight="balanced", **FULL_BATCH).fit(X, y)
    w = len(y) / (2 * np.bincount(y))
    manual = TransferClassifier(TinyNet, **FULL_BATCH).fit(X, y, sample_weight=w[y])
    np.testing.assert_allclose(balanced.predict_proba(X), manual.predict_proba(X),
                               rtol=1e-5, atol=1e-6)
    as_dict = TransferClassifier(TinyNet, class_weight={0: w[0], 1: w[1]},
                                 **FULL_BATCH).fit(X, y)
    np.testing.assert_allclose(as_dict.predict_proba(X), manual.predict_proba(X),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"class_weight names labels \[7\]"):
        TransferClassifier(TinyNet, class_weight={7: 1.0}, **FULL_BATCH).fit(X, y)


def test_unlabelled_rows_carry_no_class_weight(data):
    X, y = data
    seen = {}

    class Spy(DomainAwareLoss):
        def forward(self, output, target):
            seen["w"], seen["y"] = target["sample_weight"].clone(), target["y"].clone()
            return super().forward(output, target)

    y_da = np.where(np.arange(len(y)) < 48, y, -1)
    TransferClassifier(TinyNet, unfreeze=1, criterion=Spy("coral"), class_weight="balanced",
                       max_epochs=1, batch_size=1000, random_state=0).fit(X, y_da)
    assert torch.all(seen["w"][seen["y"] == -1] == 1)
    assert not torch.all(seen["w"][seen["y"] >= 0] == 1)


def test_sample_weight_is_routed_by_metadata_routing(data):
    X, y = data
    w = np.random.RandomState(0).randint(1, 3, len(y)).astype(float)
    with sklearn.config_context(enable_metadata_routing=True):
        clf = TransferClassifier(TinyNet, unfreeze="all", max_epochs=2, random_state=0)
        clf.set_fit_request(sample_weight=True).set_score_request(sample_weight=False)
        search = GridSearchCV(clf, {"lr": [1e-3, 1e-2]}, cv=2).fit(X, y, sample_weight=w)
    assert search.best_estimator_.score(X, y) > 0
    for bad, match in [(np.ones(3), "one weight per sample"), (-np.ones(len(y)), "non-negative"),
                       (np.zeros(len(y)), "weight is zero")]:
        with pytest.raises(ValueError, match=match):
            TransferClassifier(TinyNet, max_epochs=1).fit(X, y, sample_weight=bad)


# -- augmentation -------------------------------------------------------------------
class CountingAugment:
    """Adds noise; records the rows and the value range it saw."""

    def __init__(self):
        self.rows, self.low, self.high = 0, np.inf, -np.inf

    def __call__(self, batch):
        self.rows += len(batch)
        self.low, self.high = min(self.low, float(batch.min())), max(self.high,
                                                                      float(batch.max()))
        return batch + 0.01 * torch.randn_like(batch)


@pytest.mark.parametrize("unfreeze", [0, 1])
def test_augmentation_reaches_training_batches_only(unfreeze):
    X, y = _images()
    augment = CountingAugment()
    cache = FeatureCache()
    stopping = EarlyStopping(patience=10, validation_fraction=0.25)
    clf = TransferClassifier(TinyCNN, unfreeze=unfreeze, augment=augment, max_epochs=3,
                             batch_size=8, early_stopping=stopping, cache=cache,
                             random_state=0).fit(X, y)
    assert augment.rows == 3 * 18  # training rows every epoch, never validation rows
    assert cache.nbytes == 0  # nothing precomputed: augmented inputs change the frozen outputs
    clf.predict(X)
    clf.predict_proba(X)
    assert augment.rows == 3 * 18  # never at prediction


def test_images_are_augmented_before_normalisation():
    X = (np.random.RandomState(0).rand(6, 16, 16, 3) * 255).astype(np.uint8)
    augment = CountingAugment()
    TransferClassifier("resnet18", weights=None, unfreeze=1, augment=augment, max_epochs=1,
                       batch_size=3, random_state=0).fit(X, np.arange(6) % 2)
    assert 0 <= augment.low and augment.high <= 1  # pixels in [0, 1], not normalised


def test_augmentation_is_seeded(data):
    X, y = _images()
    def make():
        return TransferClassifier(TinyCNN, unfreeze="all", augment=CountingAugment(),
                                  max_epochs=2, random_state=0)
    np.testing.assert_array_equal(make().fit(X, y).predict_proba(X),
                                  make().fit(X, y).predict_proba(X))


# -- learning-rate schedules ------------------------------------------------------------
RATES = []


class RecordingSGD(torch.optim.SGD):
    def step(self, closure=None):
        RATES.append(sorted(g["lr"] for g in self.param_groups))
        return super().step(closure)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine", "onecycle"])
def test_the_schedule_moves_both_learning_rates(schedule, data):
    from sktl._engine.net import schedule_factor

    X, y = data
    RATES.clear()
    TransferClassifier(TinyNet, unfreeze="all", lr=0.1, backbone_lr=0.01, optimizer=RecordingSGD,
                       lr_schedule=schedule, max_epochs=3, batch_size=16,
                       random_state=0).fit(X, y)
    factor = schedule_factor(schedule, 12)
    expected = [[0.01 * factor(step), 0.1 * factor(step)] for step in range(12)]
    np.testing.assert_allclose(RATES, expected, rtol=1e-6, atol=1e-12)


# -- larger data ----------------------------------------------------------------------
def test_gradient_accumulation_equals_a_larger_batch(data):
    X, y = data
    X, y = X[:32], y[:32]
    params = {"unfreeze": "all", "optimizer": "sgd", "lr": 0.1, "max_epochs": 3,
              "random_state": 0, "cache": False}
    big = TransferClassifier(TinyNet, batch_size=32, **params).fit(X, y)
    accumulated = TransferClassifier(TinyNet, batch_size=8,
                                     callbacks=[GradientAccumulation(4)], **params).fit(X, y)
    np.testing.assert_allclose(accumulated.predict_proba(X), big.predict_proba(X),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="steps must be an int"):
        TransferClassifier(TinyNet, callbacks=[GradientAccumulation(0)], **params).fit(X, y)


def test_data_loader_workers_give_the_same_model(data):
    X, y = data
    params = {"unfreeze": "all", "max_epochs": 2, "random_state": 0, "cache": False}
    serial = TransferClassifier(TinyNet, **params).fit(X, y).predict_proba(X)
    with sktl.config_context(num_workers=2):
        assert sktl.get_config()["num_workers"] == 2
        parallel = TransferClassifier(TinyNet, **params).fit(X, y).predict_proba(X)
    assert sktl.get_config()["num_workers"] == 0
    np.testing.assert_allclose(parallel, serial, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_workers"):
        sktl.set_config(num_workers=-1)


class RunsOutOfMemory(nn.Module):
    """A linear layer that 'runs out of memory' on batches of more than 4."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 3)

    def forward(self, x):
        if len(x) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return self.linear(x)


def test_inference_backs_off_on_out_of_memory(data):
    X, _ = data
    fe = FeatureExtractor(RunsOutOfMemory, batch_size=32, cache=False, random_state=0).fit(X[:2])
    with pytest.warns(RuntimeWarning, match="out of memory at batch_size=32"):
        out = fe.transform(X)
    expected = fe.backbone_.module.linear(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("unfreeze", [0, 1, "all"])
def test_concurrent_predictions_equal_serial_ones(unfreeze):
    from concurrent.futures import ThreadPoolExecutor

    X, y = _images(32)
    clf = TransferClassifier(TinyCNN, unfreeze=unfreeze, max_epochs=1, cache=FeatureCache(),
                             random_state=0).fit(X, y)
    tests = [_images(8, seed)[0] for seed in range(1, 7)]
    serial = [clf.predict_proba(t) for t in tests]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(clf.predict_proba, tests * 3))
    for i, result in enumerate(parallel):
        np.testing.assert_allclose(result, serial[i % len(tests)], rtol=1e-5, atol=1e-6)


# -- review findings, each a regression test ------------------------------------------
def test_rows_too_large_to_store_are_never_read_under_another_models_key(data):
    X, y = data
    def small_cache_model(seed):
        body = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8))
        torch.manual_seed(seed)
        return TransferClassifier(body, unfreeze=1, max_epochs=2, random_state=seed,
                                  cache=FeatureCache(max_bytes=1000))
    a, b = small_cache_model(0).fit(X, y), small_cache_model(1).fit(X, y)
    a.predict_proba(X[:5])
    expected = b.predict_proba(X[:5])
    b.set_params(cache=False)
    np.testing.assert_allclose(b.predict_proba(X[:5]), expected, rtol=1e-5, atol=1e-6)


class ScaledNet(nn.Module):
    """Two blocks and a parameter outside them (frozen, like a BERT pooler)."""

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.block2(self.block1(x)) * self.scale


def test_the_cached_prediction_path_survives_restoring_the_best_epoch(data):
    X, y = data
    module = ScaledNet()
    clf = TransferClassifier(module, unfreeze=1, max_epochs=8, lr=0.5,
                             early_stopping=EarlyStopping(patience=8, validation_fraction=0.25),
                             cache=FeatureCache(), random_state=0).fit(X, y)
    history = clf.history_
    assert history[-1, "valid_loss"] != min(history[:, "valid_loss"])  # best epoch restored
    assert clf._frozen_reader is not None and clf._frozen_reader.valid()


def test_weights_keep_the_unlabelled_rows_balance():
    from sktl._base import row_weights

    labelled = np.array([True, True, False, False])
    np.testing.assert_allclose(row_weights(10 * np.ones(4), None, labelled), np.ones(4))
    np.testing.assert_allclose(row_weights(np.array([1, 3, 2, 2.0]), None, labelled),
                               [0.5, 1.5, 1.0, 1.0])


@pytest.mark.parametrize("criterion", [DomainAwareLoss(), "distillation"])
def test_the_regressor_refuses_criteria_of_class_labels(criterion, data):
    from sktl.losses import DistillationLoss

    X, _ = data
    criterion = DistillationLoss() if criterion == "distillation" else criterion
    with pytest.raises(ValueError, match="learns class labels"):
        TransferRegressor(TinyNet, unfreeze=1, criterion=criterion, max_epochs=1).fit(X, X[:, 0])


def test_scoring_callbacks_are_refused_with_a_reason(data):
    from skorch.callbacks import EpochScoring

    X, y = data
    with pytest.raises(ValueError, match="EpochScoring scores the net's own predict"):
        TransferClassifier(TinyNet, callbacks=[EpochScoring("accuracy")], max_epochs=1).fit(X, y)


@pytest.mark.parametrize("order", ["accumulation first", "scheduler first"])
def test_gradient_accumulation_beside_a_learning_rate_scheduler(order, data):
    from skorch.callbacks import LRScheduler

    X, y = data
    callbacks = [GradientAccumulation(2), LRScheduler(policy="StepLR", step_size=1, gamma=0.5)]
    if order == "scheduler first":
        callbacks = callbacks[::-1]
    clf = TransferClassifier(TinyNet, unfreeze="all", callbacks=callbacks, max_epochs=2,
                             batch_size=16, random_state=0).fit(X, y)
    assert np.isfinite(clf.predict_proba(X)).all()


def test_contrastive_criterion_none_is_supcon(data):
    X, y = data
    clf = ContrastiveClassifier(TinyNet, criterion=None, batch_size=8, pair_iterations=1,
                                random_state=0).fit(X, y)
    assert clf.temperature_ == 0.1  # 32 examples per class: the nearer 64's temperature


def test_a_fitted_model_is_in_eval_mode(data):
    X, y = data
    for unfreeze in (0, 1, "all"):
        clf = TransferClassifier(TinyNet, unfreeze=unfreeze, max_epochs=1,
                                 random_state=0).fit(X, y)
        assert not any(m.training for m in clf.module_.modules())


# -- the detector trains through the engine too ------------------------------------
@pytest.fixture(scope="module")
def scenes():
    from sktl.datasets import make_fashion_scenes

    return make_fashion_scenes(6, canvas_size=64, item_size=(20, 30), max_items=2,
                               random_state=0)


def _detector(**params):
    return sktl.TransferDetector(**{"weights": None, "max_epochs": 2, "min_size": 64,
                                    "batch_size": 4, "random_state": 0, **params})


def test_the_detector_calls_callbacks_and_follows_a_schedule(scenes):
    from skorch.callbacks import Callback

    events = Events()
    lrs = []

    class RecordLR(Callback):  # the rate after each step (the schedule steps per batch)
        def on_batch_end(self, net, training=None, **kwargs):
            lrs.append(net.optimizer_.param_groups[0]["lr"])

    det = _detector(callbacks=[events, RecordLR()], lr_schedule="linear").fit(*scenes)
    assert events.seen[0] == "train_begin" and events.seen[-1] == "train_end"
    assert events.seen.count("epoch_end") == 2 and events.seen.count("batch") == 4
    # 4 steps (6 images in batches of 4: [4, 2] twice), warm-up over the first.
    assert lrs == pytest.approx([1e-3, 2 / 3 * 1e-3, 1 / 3 * 1e-3, 0.0])
    assert np.isfinite(det.history_[:, "train_loss"]).all()


def test_the_detector_loss_is_a_criterion(scenes):
    from sktl.losses import DetectionLoss

    plain = _detector(max_epochs=1).fit(*scenes).history_[-1, "train_loss"]
    weighted = _detector(max_epochs=1, criterion=DetectionLoss(
        {"bbox_regression": 0.0})).fit(*scenes).history_[-1, "train_loss"]
    assert 0 < weighted < plain  # the box term left out: the classification term alone
    with pytest.raises(ValueError, match="does not compute.*bbox_regression"):
        _detector(max_epochs=1, criterion=DetectionLoss({"loss_box": 1.0})).fit(*scenes)


def test_the_detector_trains_in_bf16_and_through_an_accelerator(scenes):
    det = _detector(precision="bf16").fit(*scenes)
    assert np.isfinite(det.history_[:, "train_loss"]).all()
    assert det.predict(scenes[0][:1])[0]["boxes"].dtype == np.float32
    accelerate = pytest.importorskip("accelerate")
    det = _detector(device=accelerate.Accelerator(cpu=True)).fit(*scenes)
    assert len(det.predict(scenes[0][:2])) == 2
