"""DistillationClassifier and its loss."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from torch import nn

from sktl import TransferClassifier
from sktl.backbones import truncate_sentence_encoder
from sktl.distillation import DistillationClassifier
from sktl.losses import DistillationLoss, DomainAwareLoss, Output


# --------------------------------------------------------------------------- the loss
def _reference_loss(logits, hard, soft, t, alpha):
    """The formula, row by row, in numpy."""
    total = []
    for z, h, p in zip(logits, hard, soft):
        q_t = np.exp(z / t) / np.exp(z / t).sum()
        kl = sum(pi * np.log(pi / qi) for pi, qi in zip(p, q_t) if pi > 0)
        row = (1 - alpha) * t * t * kl
        if h >= 0:
            row += alpha * -np.log(np.exp(z[h]) / np.exp(z).sum())
        total.append(row)
    return np.mean(total)


@pytest.mark.parametrize("t, alpha", [(1.0, 0.5), (3.0, 0.2), (2.0, 1.0), (4.0, 0.0)])
def test_loss_is_the_formula(t, alpha):
    rng = np.random.RandomState(0)
    logits = rng.normal(size=(6, 3))
    soft = rng.dirichlet(np.ones(3), size=6)
    soft[0] = [1.0, 0.0, 0.0]  # 0 log 0 = 0
    hard = np.array([0, 2, -1, 1, -1, 0])  # -1: no hard-label term
    target = {"y": torch.tensor(hard), "soft": torch.tensor(soft, dtype=torch.float32)}
    output = Output(torch.tensor(logits, dtype=torch.float32), None)
    loss = DistillationLoss(t, alpha)(output, target)
    assert loss.item() == pytest.approx(_reference_loss(logits, hard, soft, t, alpha),
                                        rel=1e-5)


def test_loss_gradient_is_zero_when_student_matches_teacher_and_no_labels():
    logits = torch.tensor([[1.0, -0.5, 2.0]], requires_grad=True)
    soft = torch.softmax(logits.detach() / 2.0, dim=1)
    target = {"y": torch.tensor([-1]), "soft": soft}
    DistillationLoss(2.0, 0.5)(Output(logits, None), target).backward()
    assert torch.allclose(logits.grad, torch.zeros(1, 3), atol=1e-6)


# --------------------------------------------------------------------------- the estimator
def _xor(n, seed):
    rng = np.random.RandomState(seed)
    X = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    return X, (X[:, 0] * X[:, 1] > 0).astype(int)


def _student(**params):
    module = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    settings = {"unfreeze": "all", "max_epochs": 40, "lr": 1e-2, "batch_size": 32,
                "random_state": 0}
    return TransferClassifier(module, **{**settings, **params})


@pytest.fixture(scope="module")
def xor_task():
    """XOR: 20 labelled rows, 420 unlabelled transfer rows, a teacher that
    saw 2000 labels (the situation distillation is for)."""
    X, y = _xor(440, 0)
    y_few = np.where(np.arange(440) < 20, y, -1)
    X_big, y_big = _xor(2000, 1)
    teacher = RandomForestClassifier(n_estimators=50, random_state=0).fit(X_big, y_big)
    X_test, y_test = _xor(1000, 2)
    return X, y_few, teacher, X_test, y_test


def test_distilled_student_beats_the_hard_label_student(xor_task):
    X, y_few, teacher, X_test, y_test = xor_task
    labelled = y_few != -1
    hard = _student().fit(X[labelled], y_few[labelled]).score(X_test, y_test)
    model = DistillationClassifier(teacher, _student(), temperature=2.0, alpha=0.3)
    distilled = model.fit(X, y_few).score(X_test, y_test)
    assert model.teacher_ is teacher  # fitted: used as it is
    assert distilled >= hard + 0.05
    assert distilled >= 0.97 * teacher.score(X_test, y_test)
    np.testing.assert_array_equal(model.classes_, [0, 1])
    assert model.soft_targets_.shape == (len(X), 2)


def test_alpha_one_ignores_the_teacher(xor_task):
    """alpha=1 is the student trained on the hard labels alone: same weights
    whatever the teacher says."""
    X, y_few, teacher, X_test, _ = xor_task
    labelled = y_few != -1
    flipped = FrozenEstimator(_Flipped(teacher))
    student = _student(max_epochs=5)  # one module: the same initial weights
    a = DistillationClassifier(teacher, student, alpha=1.0)
    b = DistillationClassifier(flipped, student, alpha=1.0)
    pa = a.fit(X[labelled], y_few[labelled]).predict_proba(X_test)
    pb = b.fit(X[labelled], y_few[labelled]).predict_proba(X_test)
    np.testing.assert_allclose(pa, pb, atol=1e-6)


class _Flipped(ClassifierMixin, BaseEstimator):
    """A teacher that swaps the two classes' probabilities."""

    def __init__(self, teacher):
        self.teacher = teacher
        self.classes_ = teacher.classes_

    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        return self.teacher.predict_proba(X)[:, ::-1]

    def __sklearn_is_fitted__(self):
        return True


def test_unfitted_teacher_is_cloned_and_fitted_on_labelled_rows(xor_task):
    X, y_few, _, _, _ = xor_task
    teacher = LogisticRegression()
    model = DistillationClassifier(teacher, _student(max_epochs=2)).fit(X, y_few)
    assert not hasattr(teacher, "coef_")  # the user's object is untouched
    labelled = y_few != -1
    reference = LogisticRegression().fit(X[labelled], y_few[labelled])
    np.testing.assert_allclose(model.teacher_.coef_, reference.coef_)


def test_string_labels_and_teacher_class_order(xor_task):
    X, y_few, _, X_test, _ = xor_task
    names = np.array(["neg", "pos"])
    y_str = np.where(y_few == -1, "-1", names[np.clip(y_few, 0, 1)])  # "-1": unlabelled
    model = DistillationClassifier(LogisticRegression(), _student(max_epochs=3))
    model.fit(X, y_str)
    assert set(model.predict(X_test)) <= {"neg", "pos"}
    np.testing.assert_array_equal(model.classes_, names)


def test_bad_input_errors(xor_task):
    X, y_few, teacher, _, _ = xor_task
    one_class = np.where(y_few == 1, 1, -1)
    with pytest.raises(ValueError, match=r"hold 1 class\(es\).*at least two classes"):
        DistillationClassifier(teacher, _student()).fit(X, one_class)
    three = y_few.copy()
    three[:5] = 2
    with pytest.raises(ValueError, match="teacher's classes .* differ"):
        DistillationClassifier(teacher, _student()).fit(X, three)
    with pytest.raises(NotFittedError):
        DistillationClassifier(teacher, _student()).predict(X)
    with pytest.raises(Exception, match="'student' parameter"):
        DistillationClassifier(teacher, LogisticRegression()).fit(X, y_few)
    with pytest.raises(Exception, match="'alpha' parameter"):
        DistillationClassifier(teacher, _student(), alpha=1.5).fit(X, y_few)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        DistillationClassifier(teacher, _student()).fit(X[:-3], y_few)
    # A student criterion, which the distillation loss would replace, is
    # refused rather than ignored.
    with pytest.raises(ValueError, match="leave the student's criterion=None"):
        DistillationClassifier(teacher, _student(criterion=DomainAwareLoss())).fit(X, y_few)


def test_failed_refit_keeps_the_fitted_model(xor_task):
    X, y_few, teacher, X_test, _ = xor_task
    model = DistillationClassifier(teacher, _student(max_epochs=2)).fit(X, y_few)
    before = model.predict_proba(X_test)
    with pytest.raises(ValueError):
        model.set_params(student__unfreeze=99).fit(X, y_few)
    np.testing.assert_array_equal(model.predict_proba(X_test), before)


def test_module_student_is_trained_whole(xor_task):
    X, y_few, teacher, _, _ = xor_task
    module = nn.Sequential(nn.Linear(2, 8), nn.ReLU())
    model = DistillationClassifier(teacher, module, random_state=0).fit(X, y_few)
    assert model.student_.unfreeze == "all"
    trained = model.student_.module_.backbone[0].weight.detach().cpu()  # a GPU fit's too
    assert not torch.equal(trained, module[0].weight)


def test_grid_search_clone_and_pickle(xor_task):
    X, y_few, teacher, X_test, _ = xor_task
    model = DistillationClassifier(FrozenEstimator(teacher), _student(max_epochs=2))
    params = model.get_params()
    assert params["student__lr"] == 1e-2 and params["temperature"] == 2.0
    assert clone(model).get_params()["alpha"] == 0.5
    search = GridSearchCV(model, {"temperature": [1.0, 4.0], "student__lr": [1e-2]}, cv=2,
                          error_score="raise")
    labelled = y_few != -1  # GridSearchCV scores on labelled rows
    search.fit(X[labelled], y_few[labelled])
    assert search.best_estimator_.teacher_.estimator is teacher  # kept, never refit
    fitted = search.best_estimator_
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_allclose(again.predict_proba(X_test), fitted.predict_proba(X_test))


# --------------------------------------------------------------------------- text student
def test_truncated_sentence_encoder_student(minilm_dir):
    encoder = truncate_sentence_encoder(minilm_dir, 2)
    assert len(encoder[0].auto_model.encoder.layer) == 2
    texts = ["a great film", "awful, boring", "loved it", "terrible acting"] * 3
    y = np.array([1, 0, 1, 0] * 3)
    student = TransferClassifier(encoder, unfreeze=1, max_epochs=1, random_state=0)
    teacher = TransferClassifier(minilm_dir, max_epochs=5, lr=1e-2, random_state=0)
    model = DistillationClassifier(teacher, student).fit(texts, y)
    assert model.student_.n_blocks_ == 3  # embeddings + 2 layers
    assert model.predict(["what a great film"]).shape == (1,)
    with pytest.raises(ValueError, match=r"n_layers must be in \[1, 6\]"):
        truncate_sentence_encoder(minilm_dir, 7)
