"""Sentence-level sentiment data sets: SST-2, SST-5, CR and an IMDB subset."""

from __future__ import annotations

import csv
import io

import numpy as np

from ._base import Bunch, _check_choice, _fetch_file

__all__ = ["load_sentiment"]

# name -> {split: path relative to data_home}
_SENTIMENT_FILES: dict[str, dict[str, str]] = {
    "sst2": {
        "train": "sentiment/sst2/stsa.binary.train",
        "dev": "sentiment/sst2/stsa.binary.dev",
        "test": "sentiment/sst2/stsa.binary.test",
    },
    "sst5": {
        "train": "sentiment/sst5/stsa.fine.train",
        "dev": "sentiment/sst5/stsa.fine.dev",
        "test": "sentiment/sst5/stsa.fine.test",
    },
    "cr": {"all": "sentiment/cr/custrev.all"},
    "imdb": {"all": "sentiment/imdb/imdb.csv"},
}

_DEFAULT_SPLIT = {"sst2": "train", "sst5": "train", "cr": "all", "imdb": "all"}

_TARGET_NAMES = {
    "sst2": ["negative", "positive"],
    "sst5": ["very negative", "negative", "neutral", "positive", "very positive"],
    "cr": ["negative", "positive"],
    "imdb": ["negative", "positive"],
}

_DESCR = {
    "sst2": "SST-2 (Socher et al. 2013), binary movie-review sentences.",
    "sst5": "SST-5 (Socher et al. 2013), five-class movie-review sentences.",
    "cr": "CR customer product reviews (Hu and Liu 2004), binary sentences.",
    "imdb": "Balanced 2000-review subset of IMDB (Maas et al. 2011), binary.",
}


def _decode(raw: bytes) -> str:
    # The files are mostly ASCII; the SST files hold a few UTF-8 accented
    # words.  Decode as UTF-8 and fall back to latin-1 (which never fails)
    # for a file that is not valid UTF-8.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_label_sentence(path) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    text = _decode(path.read_bytes())
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        label, _, sentence = line.partition(" ")
        try:
            labels.append(int(label))
        except ValueError:
            raise ValueError(
                f"{str(path)!r}, line {lineno}: expected 'label sentence', "
                f"got {line[:60]!r}"
            ) from None
        texts.append(sentence.strip())
    return texts, np.asarray(labels, dtype=np.int64)


def _read_imdb_csv(path) -> tuple[list[str], np.ndarray]:
    texts, labels = [], []
    reader = csv.DictReader(io.StringIO(_decode(path.read_bytes()), newline=""))
    missing = {"reviews", "labels"} - set(reader.fieldnames or ())
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks the column(s) {sorted(missing)}; "
            f"found {reader.fieldnames}"
        )
    for row in reader:
        texts.append(row["reviews"].strip())
        labels.append(int(row["labels"]))
    return texts, np.asarray(labels, dtype=np.int64)


def load_sentiment(
    name,
    split=None,
    *,
    data_home=None,
    download_if_missing=False,
    return_X_y=True,
):
    """Load a sentence-level sentiment classification data set.

    ========  =====================  ==============  ========================
    name      splits (sizes)         classes         source
    ========  =====================  ==============  ========================
    ``sst2``  train 6920, dev 872,   2               SST-2, movie reviews
              test 1821
    ``sst5``  train 8544, dev 1101,  5               SST-5, movie reviews
              test 2210
    ``cr``    all 3775               2               CR, product reviews
    ``imdb``  all 2000               2               IMDB subset
    ========  =====================  ==============  ========================

    Labels are 0 (negative) .. 1 (positive) or 0 .. 4 for SST-5.  Movie
    reviews (SST, IMDB) versus product reviews (CR) make a cross-domain
    sentiment shift.  Each file's SHA-256 is checked.  Lines are kept as
    they are in the published files (CR holds 4 label-only lines, returned as
    empty strings, so that its size stays the published 3775).

    Parameters
    ----------
    name : {"sst2", "sst5", "cr", "imdb"}
        Data set (case-insensitive).
    split : {"train", "dev", "test", "all"}, default=None
        ``"train"``, ``"dev"`` or ``"test"`` for SST-2 and SST-5; only
        ``"all"`` for CR and IMDB, which have no official split.  None means
        ``"train"`` for SST and ``"all"`` for CR and IMDB.
    data_home : str or path-like, default=None
        Data folder, see :func:`get_data_home`.  Files are read from
        ``data_home/sentiment/<name>/``.
    download_if_missing : bool, default=False
        Download a missing file from its public source (checksum verified).
    return_X_y : bool, default=True
        If True return ``(texts, y)``, else a :class:`Bunch` with ``data``,
        ``target``, ``target_names``, ``filename`` and ``DESCR``.

    Returns
    -------
    texts : list of str
        Sentences (whitespace stripped).
    y : ndarray of shape (n_samples,), dtype int64
        Labels.

    Raises
    ------
    ValueError
        Unknown ``name`` or ``split``.
    FileNotFoundError
        A file is missing and ``download_if_missing`` is False.
    ChecksumError
        A file does not have its expected SHA-256.

    Examples
    --------
    >>> from sktl.datasets import load_sentiment
    >>> texts, y = load_sentiment("sst2", "dev")  # doctest: +SKIP
    >>> len(texts), y[:5]  # doctest: +SKIP
    (872, array([1, 0, 1, 1, 0]))
    >>> texts, y = load_sentiment("cr")  # doctest: +SKIP
    >>> len(texts)  # doctest: +SKIP
    3775
    """
    key = name.lower() if isinstance(name, str) else name
    _check_choice(key, tuple(_SENTIMENT_FILES), "sentiment data set")
    files = _SENTIMENT_FILES[key]
    if split is None:
        split = _DEFAULT_SPLIT[key]
    if split not in files:
        raise ValueError(
            f"Invalid split {split!r} for {key!r}; valid splits are: "
            + ", ".join(repr(s) for s in files)
            + (
                " (CR and IMDB have no official train/test split: load "
                "split='all' and split it yourself)."
                if key in ("cr", "imdb")
                else "."
            )
        )
    relpath = files[split]
    path = _fetch_file(relpath, data_home, download_if_missing)
    if key == "imdb":
        texts, y = _read_imdb_csv(path)
    else:
        texts, y = _read_label_sentence(path)
    if return_X_y:
        return texts, y
    return Bunch(
        data=texts,
        target=y,
        target_names=list(_TARGET_NAMES[key]),
        filename=str(path),
        DESCR=_DESCR[key],
    )
