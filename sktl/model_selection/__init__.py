"""Model selection for transfer learning: rank backbones before training.

Transferability scores estimate from a backbone's frozen features on the
target data how well it will transfer, so that candidate backbones (or
layers) can be compared without fine-tuning each one.

For domain adaptation without target labels, :class:`DomainKFold` and the
unsupervised scorers (:func:`prediction_entropy_scorer`,
:func:`importance_weighted_scorer`, :func:`reverse_validation_scorer`) let
``GridSearchCV`` choose hyperparameters; :func:`target_oracle_score` is for
reporting only.
"""

from ._domain import (
    DomainKFold,
    SourceTargetSplit,
    importance_weighted_scorer,
    prediction_entropy_scorer,
    reverse_validation_scorer,
    target_oracle_score,
)
from ._transferability import (
    hscore,
    hscore_scorer,
    leep_score,
    logme_score,
    logme_scorer,
    rank_backbones,
)

__all__ = [
    "DomainKFold",
    "SourceTargetSplit",
    "hscore",
    "hscore_scorer",
    "importance_weighted_scorer",
    "leep_score",
    "logme_score",
    "logme_scorer",
    "prediction_entropy_scorer",
    "rank_backbones",
    "reverse_validation_scorer",
    "target_oracle_score",
]
