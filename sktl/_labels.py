"""Checks of class labels as the user gave them, before numpy converts them."""

from __future__ import annotations

import numpy as np

__all__ = ["check_label_types"]


def _is_number(v):
    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))


def check_label_types(y, *, what="y"):
    """Refuse labels that mix numbers and strings, read as given.

    numpy turns ``[1, "cat"]`` into ``["1", "cat"]`` (a class ``"1"`` the
    user never had) and an object array of both into sorting errors
    (``'<' not supported``); both deserve one clear message. The marker of
    unlabelled rows, the integer ``-1``, may stand among string labels.

    Parameters
    ----------
    y : array-like
        Labels as passed by the user (list, numpy array, pandas Series).
    what : str, default="y"
        How the message names them.
    """
    if isinstance(y, np.ndarray) and y.dtype != object:
        return  # one dtype: numbers, or strings, throughout
    try:  # dtype=object keeps the values as given
        values = np.asarray(y, dtype=object).ravel().tolist()
    except (TypeError, ValueError):  # ragged or not array-like: left to the usual checks
        return
    numeric = [_is_number(v) and not (v == -1) for v in values]
    textual = [isinstance(v, (str, np.str_)) for v in values]
    if any(numeric) and any(textual):
        number, text = values[numeric.index(True)], values[textual.index(True)]
        raise ValueError(
            f"{what} mixes numbers and strings (e.g. {number!r} and {text!r}); give every "
            "label the same type, e.g. all strings: [str(label) for label in y].")
