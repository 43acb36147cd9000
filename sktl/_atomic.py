"""Fits that change an estimator only when they succeed.

scikit-learn's own validation (``validate_data(reset=True)``) sets
``n_features_in_`` before any training, and several fits publish attributes
as they go. A refit that then fails (one class only, a bad parameter
combination, an interrupted training) must not leave a previously fitted
model half-updated: predictions from it would be wrong or fail.
"""

from __future__ import annotations

import functools

__all__ = ["atomic_fit"]


def atomic_fit(fit):
    """Decorate a fitting method: if it raises (or is interrupted), the
    estimator's attributes are put back as they were before the call.

    The restore is shallow: fitting code builds new fitted objects rather
    than changing the old ones in place, so the previous objects are intact.
    """

    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        before = dict(self.__dict__)
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    return wrapper
