"""Model selection for transfer learning: rank backbones before training.

Transferability scores estimate from a backbone's frozen features on the
target data how well it will transfer, so that candidate backbones (or
layers) can be compared without fine-tuning each one.
"""

from ._transferability import (
    hscore,
    hscore_scorer,
    leep_score,
    logme_score,
    logme_scorer,
    rank_backbones,
)

__all__ = [
    "hscore",
    "hscore_scorer",
    "leep_score",
    "logme_score",
    "logme_scorer",
    "rank_backbones",
]
