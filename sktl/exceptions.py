"""Exceptions sktl raises where a built-in one would not say enough.

Each is a subclass of the built-in exception a caller would otherwise
catch, so ``except FloatingPointError`` / ``except ValueError`` keep working.
"""

from __future__ import annotations

__all__ = ["DivergenceError"]


class DivergenceError(FloatingPointError):
    """Training stopped because its loss stopped being a finite number.

    Raised by every training estimator as soon as a batch's loss is NaN or
    infinite (usually a learning rate that is too high, or inputs with
    extreme values). The message names the epoch and batch and the
    learning rate to lower. Like any failed fit, it leaves a previously
    fitted estimator unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktl import TransferClassifier
    >>> from sktl.exceptions import DivergenceError
    >>> X = np.random.RandomState(0).normal(size=(40, 4)).astype("float32")
    >>> y = np.arange(40) % 2
    >>> clf = TransferClassifier(nn.Sequential(nn.Linear(4, 8), nn.ReLU()),
    ...                          unfreeze="all", optimizer="sgd", lr=1e12)
    >>> try:
    ...     clf.fit(X, y)
    ... except DivergenceError as exc:
    ...     print(str(exc)[:36])
    Training diverged: the loss became n...
    """
