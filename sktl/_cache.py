"""Content-addressed feature rows shared by clones, CV folds and grid points.

A row is keyed by *what produced it* (the backbone's recipe and a
fingerprint of its weights, the layer, pooling and preprocessing) and by a
hash of the sample's content. Two folds of a cross-validation, or two
grid-search candidates that differ only in the head's hyperparameters, ask
for the same rows and get them without running the backbone again; a
fine-tuned backbone has another fingerprint and never reads stale rows.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict

import numpy as np

__all__ = [
    "CACHE_CONSTRAINT",
    "FeatureCache",
    "default_cache",
    "extraction_key",
    "resolve_cache",
    "sample_hashes",
]


def _hash_sample(x):
    h = hashlib.blake2b(digest_size=16)
    if isinstance(x, str):
        h.update(b"s")
        h.update(x.encode("utf-8", "surrogatepass"))
    elif isinstance(x, os.PathLike):
        stat = os.stat(x)
        h.update(f"p{os.fspath(x)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    elif hasattr(x, "tobytes") and hasattr(x, "mode"):  # PIL image
        h.update(f"i{x.mode}{x.size}".encode())
        h.update(x.tobytes())
    else:
        arr = np.ascontiguousarray(x)
        h.update(f"a{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.digest()


def sample_hashes(X):
    """One content hash per sample (row of an array, text, image or path)."""
    if isinstance(X, np.ndarray) and X.dtype != object:
        arr = np.ascontiguousarray(X)
        prefix = f"a{arr.dtype.str}{arr.shape[1:]}".encode()
        return [hashlib.blake2b(prefix + row.tobytes(), digest_size=16).digest()
                for row in arr]
    return [_hash_sample(x) for x in X]


def extraction_key(backbone, **settings):
    """What produced a row: backbone recipe + weights fingerprint + settings.

    The fingerprint is recomputed on every call, never memoised on the
    backbone: backbones are copied and fine-tuned, and a stale fingerprint
    would serve the rows of the weights before training.
    """
    parts = [backbone.fingerprint(), repr(sorted(backbone.spec.items())),
             repr(getattr(backbone.preprocess, "transform", None)),
             repr(sorted(settings.items()))]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).digest()


class FeatureCache:
    """A bounded, thread-safe, in-memory LRU store of feature rows.

    Parameters
    ----------
    max_bytes : int, default=1 GiB
        Rows are evicted least-recently-used first beyond this size.

    Attributes
    ----------
    hits, misses : int
        Rows served from the cache / computed, since creation or :meth:`clear`.
    """

    def __init__(self, max_bytes=1 << 30):
        self.max_bytes = max_bytes
        self._rows = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self):
        return len(self._rows)

    # clone() deep-copies parameters: a cache passed as a parameter must stay
    # the one shared store (like Pipeline(memory=...)), not be duplicated.
    def __deepcopy__(self, memo):
        return self

    # Pickling (joblib workers, saved models) carries the settings, not the rows.
    def __getstate__(self):
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["max_bytes"])

    def __repr__(self):
        return f"FeatureCache(max_bytes={self.max_bytes})"

    @property
    def nbytes(self):
        return self._bytes

    def clear(self):
        with self._lock:
            self._rows.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def lookup(self, key, hashes):
        """Cached rows for ``hashes`` (``None`` where missing)."""
        out = []
        with self._lock:
            for h in hashes:
                row = self._rows.get((key, h))
                if row is not None:
                    self._rows.move_to_end((key, h))
                out.append(row)
            found = sum(r is not None for r in out)
            self.hits += found
            self.misses += len(out) - found
        return out

    def store(self, key, hashes, rows):
        with self._lock:
            for h, row in zip(hashes, rows):
                k = (key, h)
                if k in self._rows:
                    continue
                row = np.array(row, copy=True)  # never alias a caller's array
                self._rows[k] = row
                self._bytes += row.nbytes
            while self._bytes > self.max_bytes and self._rows:
                _, old = self._rows.popitem(last=False)
                self._bytes -= old.nbytes


_DEFAULT = FeatureCache()


def default_cache():
    """The process-wide cache used when ``cache=True``."""
    return _DEFAULT


#: ``_parameter_constraints`` entry of every estimator's ``cache`` parameter.
CACHE_CONSTRAINT = ["boolean", None, FeatureCache]


def resolve_cache(cache):
    """The ``cache`` parameter -> a FeatureCache or None."""
    if cache is True:
        return _DEFAULT
    if cache is False or cache is None:
        return None
    return cache
