"""Process-wide settings of how sktl uses the machine, as sklearn's
``set_config`` / ``config_context``: resources, not modelling choices, so
not estimator parameters (a grid search never varies them)."""

from __future__ import annotations

import contextlib
import threading
from numbers import Integral

__all__ = ["config_context", "get_config", "set_config"]

_DEFAULTS = {"num_workers": 0}
_local = threading.local()


def _config():
    if not hasattr(_local, "config"):
        _local.config = dict(_DEFAULTS)
    return _local.config


def get_config():
    """The current settings (a copy), see :func:`set_config`.

    Examples
    --------
    >>> import sktl
    >>> sktl.get_config()["num_workers"]
    0
    """
    return dict(_config())


def set_config(num_workers=None):
    """Set how sktl uses the machine, for this thread.

    Worker processes (``GridSearchCV(n_jobs=k)``, joblib, dask) start with
    the defaults: set it in the code they run if they train.

    Parameters
    ----------
    num_workers : int, optional
        Worker processes of the data loader that feeds training batches:
        inputs are read and preprocessed (image files decoded, texts
        tokenised) in parallel with training. ``0`` (the default) does it in
        the training process. Worth it when decoding image files takes a
        good part of each step; pinned memory is used on CUDA devices.

    Examples
    --------
    >>> import sktl
    >>> sktl.set_config(num_workers=2)
    >>> sktl.get_config()["num_workers"]
    2
    >>> sktl.set_config(num_workers=0)
    """
    if num_workers is not None:
        if isinstance(num_workers, bool) or not (isinstance(num_workers, Integral)
                                                 and num_workers >= 0):
            raise ValueError(f"num_workers must be an int >= 0; got {num_workers!r}.")
        _config()["num_workers"] = int(num_workers)


@contextlib.contextmanager
def config_context(**settings):
    """:func:`set_config` for the duration of a ``with`` block.

    Examples
    --------
    >>> import sktl
    >>> with sktl.config_context(num_workers=4):
    ...     sktl.get_config()["num_workers"]
    4
    """
    before = get_config()
    set_config(**settings)
    try:
        yield
    finally:
        _config().clear()
        _config().update(before)
