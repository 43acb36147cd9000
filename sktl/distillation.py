"""Knowledge distillation: train a small student on a teacher's soft targets.

:class:`DistillationClassifier` wraps a teacher (any fitted or unfitted
classifier with ``predict_proba``) and a student
(:class:`~sktl.TransferClassifier` with a small backbone, or a
``torch.nn.Module``). Hinton et al. (2015): the student minimises

    alpha * CE(y, student) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

where ``p_T = softmax(logits / T)``. Rows labelled ``-1`` (unlabelled
transfer data, the convention of :mod:`sktl.domain`) have no CE term: they
teach through the teacher's soft targets only, which is where distillation
gains most over training the student on the few hard labels.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length, check_is_fitted, column_or_1d
from torch import nn

from ._labels import check_label_types
from .backbones import take
from .classifier import TransferClassifier
from .domain import is_unlabelled
from .losses import DistillationLoss

__all__ = ["DistillationClassifier"]


class DistillationClassifier(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """A small student classifier trained on a teacher's soft targets.

    Parameters
    ----------
    teacher : classifier with ``predict_proba``
        A :class:`~sktl.TransferClassifier`, a ``Pipeline``, any
        scikit-learn classifier. Used as it is when fitted; otherwise a
        clone is fitted first on the labelled rows. Note that
        ``GridSearchCV`` and ``clone`` drop fitted state: wrap a fitted
        teacher in ``sklearn.frozen.FrozenEstimator`` to keep it across a
        grid search (each fold then reuses it; an sktl teacher with frozen
        blocks reads their outputs from the feature cache, so the teacher's
        outputs are not recomputed through the backbone either).
    student : TransferClassifier or torch.nn.Module
        The model to train: a :class:`~sktl.TransferClassifier` with a
        small backbone (its ``lr``, ``max_epochs``, ``unfreeze``... are
        grid-searchable as ``student__lr``), or a module, which is trained
        whole as ``TransferClassifier(module, unfreeze="all")``.
    temperature : float, default=2.0
        ``T``: softens both distributions; larger values pass on more of
        the teacher's "dark knowledge" about wrong classes.
    alpha : float, default=0.5
        Weight of the hard-label term on labelled rows; ``1`` ignores the
        teacher (the student alone), ``0`` learns from the teacher only.
    random_state : int or None, default=None
        Seeds a module student (a TransferClassifier student keeps its own
        ``random_state``).

    Attributes
    ----------
    teacher_ : classifier
        The teacher used (the one passed when fitted, else a fitted clone).
    student_ : TransferClassifier
        The trained student; predictions come from it alone.
    classes_ : ndarray
        Class labels (those of the labelled rows).
    soft_targets_ : ndarray of shape (n_samples, n_classes)
        The teacher's probabilities at temperature ``T`` for the training rows.

    See Also
    --------
    sktl.TransferClassifier : the usual student.
    sktl.backbones.truncate_sentence_encoder : a small text student.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sklearn.ensemble import RandomForestClassifier
    >>> from sktl import TransferClassifier
    >>> from sktl.distillation import DistillationClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(300, 4)).astype("float32")
    >>> y = (X[:, 0] * X[:, 1] > 0).astype(int)
    >>> y_few = np.where(np.arange(300) < 60, y, -1)  # 60 labels, 240 unlabelled rows
    >>> student = TransferClassifier(nn.Sequential(nn.Linear(4, 32), nn.ReLU()),
    ...                              unfreeze="all", max_epochs=30, lr=1e-2,
    ...                              random_state=0)
    >>> model = DistillationClassifier(RandomForestClassifier(random_state=0), student,
    ...                                alpha=0.3).fit(X, y_few)
    >>> model.predict(X[:3]).shape
    (3,)
    >>> bool(model.score(X, y) > 0.8)
    True
    """

    _parameter_constraints = {
        "teacher": [HasMethods(["fit", "predict_proba"]), HasMethods(["predict_proba"])],
        "student": [TransferClassifier, nn.Module],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "alpha": [Interval(Real, 0, 1, closed="both")],
        "random_state": ["random_state"],
    }

    def __init__(self, teacher, student, *, temperature=2.0, alpha=0.5, random_state=None):
        self.teacher = teacher
        self.student = student
        self.temperature = temperature
        self.alpha = alpha
        self.random_state = random_state

    def fit(self, X, y):
        """Fit the teacher if needed, then train the student on its soft targets.

        Parameters
        ----------
        X : array-like, list of str, list of images or paths
            Inputs of the kind both models read.
        y : array-like of shape (n_samples,)
            Labels; ``-1`` marks unlabelled transfer rows, which the student
            learns from the teacher's soft targets only.

        Returns
        -------
        self : DistillationClassifier
        """
        self._validate_params()
        self._check_student()
        check_label_types(y)
        y = column_or_1d(y, warn=True)
        if hasattr(X, "__len__") and not isinstance(X, (str, bytes)):
            check_consistent_length(X, y)  # before the teacher trains, not after
        check_classification_targets(y)
        labelled = ~is_unlabelled(y)
        classes = np.unique(y[labelled])
        if len(classes) < 2:
            raise ValueError(
                f"The labelled rows of y hold {len(classes)} class(es) "
                f"({list(classes)}); distillation needs labelled rows of at least two "
                "classes (rows labelled -1 are unlabelled).")
        teacher = self._fitted_teacher(X, y, labelled)
        soft = self._soft_targets(teacher, X, classes)
        student = self._new_student().set_params(
            criterion=DistillationLoss(self.temperature, self.alpha))
        student.fit(X, y, soft_targets=soft)
        # Set only after the student trained: a failed refit keeps the old model.
        self.teacher_, self.student_, self.classes_ = teacher, student, classes
        self.soft_targets_ = soft
        return self

    def _fitted_teacher(self, X, y, labelled):
        try:
            check_is_fitted(self.teacher)
            return self.teacher
        except NotFittedError:
            rows = np.flatnonzero(labelled)
            return clone(self.teacher).fit(take(X, rows), y[rows])

    def _soft_targets(self, teacher, X, classes):
        """The teacher's probabilities, columns as ``classes``, at temperature T."""
        proba = np.asarray(teacher.predict_proba(X), dtype=np.float64)
        teacher_classes = np.asarray(getattr(teacher, "classes_", classes))
        missing = np.setdiff1d(classes, teacher_classes)
        if len(missing) or len(teacher_classes) != len(classes):
            raise ValueError(
                f"The teacher's classes {list(teacher_classes)} differ from the classes of "
                f"the labelled rows {list(classes)}; fit the teacher on the same labels.")
        proba = proba[:, np.searchsorted(teacher_classes, classes)]
        # softmax(logits / T) from probabilities: log p = logits - const per row.
        logits = np.log(np.clip(proba, 1e-12, None)) / self.temperature
        return softmax(logits, axis=1)

    def _check_student(self):
        """The student learns from soft targets by the distillation loss: a
        criterion of its own cannot apply."""
        criterion = getattr(self.student, "criterion", None)
        if criterion is not None:
            raise ValueError(
                f"The student has criterion={criterion!r}; DistillationClassifier trains it "
                "with sktl.losses.DistillationLoss(temperature, alpha), so leave the "
                "student's criterion=None (adapt shifted transfer rows first with "
                "sktl.DomainAdaptTransformer).")

    def _new_student(self):
        if isinstance(self.student, nn.Module):
            return TransferClassifier(self.student, unfreeze="all",
                                      random_state=self.random_state)
        return clone(self.student)

    def predict_proba(self, X):
        """Class probabilities of the student, columns as ``classes_``."""
        check_is_fitted(self, "student_")
        return self.student_.predict_proba(X)

    def predict(self, X):
        """Class predicted by the student."""
        check_is_fitted(self, "student_")
        return self.student_.predict(X)

    def decision_function(self, X):
        """The student's logits (see :meth:`sktl.TransferClassifier.decision_function`)."""
        check_is_fitted(self, "student_")
        return self.student_.decision_function(X)

    @property
    def n_features_in_(self):
        """Input width seen by the student (array inputs only)."""
        return self.student_.n_features_in_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = True  # the student's training, unless seeded
        return tags
