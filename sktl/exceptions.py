"""Exceptions sktl raises where a built-in one would not say enough.

Each is a subclass of the built-in exception a caller would otherwise
catch, so ``except FloatingPointError`` / ``except TypeError`` /
``except ValueError`` keep working.
"""

from __future__ import annotations

__all__ = ["DivergenceError", "SaveFormatError", "SaveIntegrityError", "UntrustedTypeError"]


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


class UntrustedTypeError(TypeError):
    """A saved model names a type that :func:`sktl.load` does not trust.

    By default :func:`sktl.load` builds only types defined by sktl, torch,
    torchvision and sentence-transformers; it never imports a module to find
    out what a name refers to. Pass the classes of a save you trust, imported
    yourself, as ``sktl.load(path, trusted=[MyNet])``.

    Examples
    --------
    >>> from sktl.exceptions import UntrustedTypeError
    >>> issubclass(UntrustedTypeError, TypeError)
    True
    """


class SaveFormatError(ValueError):
    """A folder is not a save this version of sktl can read.

    Raised for a folder without an sktl ``config.json``, another format
    version, an estimator sktl does not define, or a configuration with
    unknown keys or values that are not plain data.

    Examples
    --------
    >>> from sktl.exceptions import SaveFormatError
    >>> issubclass(SaveFormatError, ValueError)
    True
    """


class SaveIntegrityError(ValueError):
    """The files of a save do not match the hashes in its ``config.json``.

    A file was changed, truncated, replaced by one from another save, or is
    missing. The hashes detect accidents (a partial write, a bad copy, bit
    rot, files mixed from two saves), not an attacker who can also edit
    ``config.json``.

    Examples
    --------
    >>> from sktl.exceptions import SaveIntegrityError
    >>> issubclass(SaveIntegrityError, ValueError)
    True
    """
