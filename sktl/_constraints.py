"""Parameter constraints sktl's estimators share, beside scikit-learn's."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.utils._param_validation import Interval

__all__ = ["Count"]


class Count(Interval):
    """An integer interval that refuses booleans.

    ``True`` is an ``int`` to Python, so ``Interval(Integral, ...)`` would take
    ``unfreeze=True`` as ``1``: a flag where a count is meant is a mistake
    to report, not a value to guess.
    """

    def __init__(self, left, right=None, *, closed="left"):
        super().__init__(Integral, left, right, closed=closed)

    def is_satisfied_by(self, val):
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)
