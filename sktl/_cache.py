"""Content-addressed feature rows shared by clones, CV folds and grid points.

A row is keyed by *what produced it* (the backbone's recipe and a
fingerprint of its weights, the layer, pooling and preprocessing) and by a
hash of the sample's content. Two folds of a cross-validation, or two
grid-search candidates that differ only in the head's hyperparameters, ask
for the same rows and get them without running the backbone again; a
fine-tuned backbone has another fingerprint and never reads stale rows.

With a ``directory`` the rows are also kept on disk, so they outlive the
process: a notebook restart or the worker processes of ``n_jobs>1`` read
them back instead of running the backbone again.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import threading
import time
import warnings
from collections import OrderedDict, defaultdict

import numpy as np
from sklearn.utils._param_validation import HasMethods

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


def _layer_types(module):
    """Each submodule's name and class; a lazy layer counts as the layer it
    becomes, so a loaded model keys like the fitted one it was saved from."""
    return ",".join(f"{name}:{(getattr(type(m), 'cls_to_become', None) or type(m)).__name__}"
                    for name, m in module.named_modules())


def extraction_key(backbone, **settings):
    """What produced a row: backbone recipe + layers + weights fingerprint + settings.

    The fingerprint is checked on every call: backbones are copied and
    fine-tuned, and a stale fingerprint would serve the rows of the weights
    before training. :meth:`Backbone.fingerprint` remembers a digest only
    together with a token of the tensors' identities and version counters,
    which any training step changes.
    """
    # Same weights in another architecture (an activation swapped), or texts
    # tokenised otherwise (max_seq_length), must not share rows.
    parts = [backbone.fingerprint(), repr(sorted(backbone.spec.items())),
             _layer_types(backbone.module),
             repr(getattr(backbone.preprocess, "transform", None)),
             repr(getattr(backbone.preprocess, "settings", None)),
             repr(sorted(settings.items()))]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).digest()


#: Subfolder of a cache directory holding the current on-disk format. A new
#: format gets a new name, so files of an older one are never misread.
_FORMAT = "v1"
#: A temporary file this old belongs to a writer that was killed mid-write.
_STALE_TMP_SECONDS = 3600
#: Shard mtimes are the LRU clock of disk eviction; a minute's precision is
#: plenty and keeps cache hits from costing a system call each.
_TOUCH_EVERY_SECONDS = 60


def _checksum(hashes, rows):
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{hashes.dtype.str}{hashes.shape}{rows.dtype.str}{rows.shape}".encode())
    h.update(np.ascontiguousarray(hashes).tobytes())
    h.update(np.ascontiguousarray(rows).tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8)


def _split_hashes(raw):
    # Hashes are stored as uint8 rows, not as a bytes dtype: numpy strips the
    # trailing NUL bytes of "S" strings, which would alter some digests.
    if raw.dtype != np.uint8 or raw.ndim != 2:
        raise ValueError("not a feature-cache shard")
    return [bytes(h) for h in raw]


def _remove(path):
    try:
        os.remove(path)
    except OSError:  # already gone (another process), or still open on Windows
        pass


def _set_mtime(path, ns):
    # Explicit, precise times: the kernel stamps files with a coarse clock
    # (a few ms), too coarse to order shards written or read in a burst.
    os.utime(path, ns=(ns, ns))


def _shard_names(folder):
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries if e.name.endswith(".npz")
                    and not e.name.startswith(".")}
    except OSError:  # no folder yet, or removed by another process's eviction
        return set()


def _open_temp(folder):
    """A new hidden file in ``folder`` (created if missing), opened for writing."""
    for attempt in range(3):
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f".tmp-{secrets.token_hex(8)}")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return os.open(path, flags, 0o666), path
        except FileNotFoundError:
            # Another process's eviction removed the empty folder meanwhile.
            if attempt == 2:
                raise


class _DiskStore:
    """The on-disk layer of a :class:`FeatureCache`.

    ``root/<key hex>/<shard>.npz``: a shard holds the rows of one ``store``
    call (``hashes``: uint8 of shape (n, 16), ``rows``: shape (n, ...), and
    a checksum of both). It is written to a hidden temporary file and
    published with ``os.replace``, so readers of any process see whole shards
    only, and concurrent writers never collide (names are unique; a row
    stored twice is harmless). Damaged shards are skipped and deleted. The
    in-process index remembers which shards were read and where each row
    lives, so a lookup reads only new shards, or the shard of a row the
    memory layer has evicted.
    """

    def __init__(self, root, max_bytes):
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._seen = {}  # key -> names of the shards already indexed
        self._where = {}  # key -> {sample hash: name of a shard holding its row}
        self._touched = {}  # shard path -> time.monotonic() of our last utime

    def _folder(self, key):
        return os.path.join(self.root, key.hex())

    def lookup(self, key, hashes):
        """``{hash: row}`` for those of ``hashes`` found on disk."""
        wanted = set(hashes)
        with self._lock:
            found = self._index_new_shards(key, wanted)
            index = self._where.get(key, {})
            by_shard = defaultdict(set)
            for h in wanted.difference(found):
                if h in index:
                    by_shard[index[h]].add(h)
            for name, shard_hashes in by_shard.items():
                found.update(self._read(key, name, shard_hashes))
        return found

    def _index_new_shards(self, key, wanted):
        names = _shard_names(self._folder(key))
        seen = self._seen.setdefault(key, set())
        self._forget(key, seen - names)  # evicted by some process
        index = self._where.setdefault(key, {})
        found = {}
        for name in sorted(names - seen):
            seen.add(name)
            for h, row in self._load(key, name, wanted):
                index[h] = name
                if row is not None:
                    found[h] = row
        return found

    def _read(self, key, name, wanted):
        rows = {h: row for h, row in self._load(key, name, wanted) if row is not None}
        if not rows:  # gone or damaged since it was indexed
            self._forget(key, {name})
        return rows

    def _load(self, key, name, wanted):
        """``(hash, row or None)`` pairs of a shard, rows only for ``wanted``;
        nothing if the shard is gone (evicted) or damaged (then deleted)."""
        path = os.path.join(self._folder(key), name)
        try:
            with np.load(path, allow_pickle=False) as shard:
                raw = shard["hashes"]
                hashes = _split_hashes(raw)
                if wanted.isdisjoint(hashes):
                    return [(h, None) for h in hashes]
                rows, check = shard["rows"], shard["check"]
            if len(rows) != len(hashes) or not np.array_equal(check, _checksum(raw, rows)):
                raise ValueError("checksum mismatch")
        except (OSError, MemoryError):  # evicted by another process, unreadable: a miss
            return []
        # Damaged bytes make zipfile and numpy raise many types (BadZipFile,
        # KeyError, ValueError, EOFError, NotImplementedError, zlib.error...);
        # a cache must treat them all as a miss, never crash.
        except Exception:  # noqa: BLE001
            _remove(path)
            return []
        self._touch(path, force=True)
        # Copies: a view would keep the whole shard alive in the memory layer.
        return [(h, rows[i].copy() if h in wanted else None) for i, h in enumerate(hashes)]

    def _forget(self, key, names):
        if not names:
            return
        self._seen.get(key, set()).difference_update(names)
        index = self._where.get(key, {})
        self._where[key] = {h: n for h, n in index.items() if n not in names}
        for name in names:
            self._touched.pop(os.path.join(self._folder(key), name), None)

    def _touch(self, path, force=False):
        now = time.monotonic()
        if not force and now - self._touched.get(path, -np.inf) < _TOUCH_EVERY_SECONDS:
            return
        self._touched[path] = now
        try:
            _set_mtime(path, time.time_ns())
        except OSError:
            pass

    def touch(self, key, hashes):
        """Mark the shards holding ``hashes`` (served from memory) as recently used."""
        with self._lock:
            index = self._where.get(key, {})
            for name in {index[h] for h in hashes if h in index}:
                self._touch(os.path.join(self._folder(key), name))

    def store(self, key, hashes, rows):
        with self._lock:
            index = self._where.setdefault(key, {})
            groups = defaultdict(dict)  # np.stack needs rows of one shape
            for h, row in zip(hashes, rows):
                if h not in index:
                    groups[row.shape, row.dtype.str][h] = row
            if not groups:
                return
            for group in groups.values():
                for part in self._shards(group):
                    try:
                        name = self._write(key, list(part), np.stack(list(part.values())))
                    except OSError as exc:  # disk full, read-only...: still a memory cache
                        warnings.warn(f"FeatureCache could not write to {self.root}: {exc}",
                                      RuntimeWarning, stacklevel=3)
                        break
                    self._seen.setdefault(key, set()).add(name)
                    index.update(dict.fromkeys(part, name))
        self.evict()

    def _shards(self, group):
        """``group`` (hash -> row) as one shard, or, beyond half of ``max_bytes``,
        in shards of a quarter of it, oldest first: a store larger than the
        bound then evicts only what it must (older shards, its own first
        parts) and keeps its newest rows, instead of writing one shard too big
        to keep after wiping the folder for it."""
        items = list(group.items())
        row_bytes = max(1, items[0][1].nbytes)
        if row_bytes * len(items) <= self.max_bytes // 2:
            yield group
            return
        per_shard = max(1, self.max_bytes // 4 // row_bytes)
        for start in range(0, len(items), per_shard):
            yield dict(items[start:start + per_shard])

    def _write(self, key, hashes, rows):
        raw = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), -1)
        folder = self._folder(key)
        fd, tmp = _open_temp(folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, hashes=raw, rows=rows, check=_checksum(raw, rows))
            now = time.time_ns()
            _set_mtime(tmp, now)
            # Time first: names sort by age, which breaks mtime ties in eviction.
            name = f"{now:016x}-{secrets.token_hex(4)}.npz"
            os.replace(tmp, os.path.join(folder, name))
        except BaseException:
            _remove(tmp)
            raise
        return name

    def _scan(self):
        """``(mtime_ns, path, size)`` of every shard; stale temporary files are removed."""
        shards = []
        try:
            with os.scandir(self.root) as listing:
                folders = [e.path for e in listing if e.is_dir()]
        except OSError:
            return shards
        for folder in folders:
            try:
                with os.scandir(folder) as listing:
                    entries = list(listing)
            except OSError:  # removed meanwhile by another process
                continue
            for e in entries:
                try:
                    st = e.stat()
                except OSError:
                    continue
                if e.name.startswith(".tmp-"):
                    if time.time() - st.st_mtime > _STALE_TMP_SECONDS:
                        _remove(e.path)
                elif e.name.endswith(".npz"):
                    shards.append((st.st_mtime_ns, e.path, st.st_size))
        return shards

    @property
    def nbytes(self):
        return sum(size for _, _, size in self._scan())

    def evict(self):
        """Delete least recently used shards until the folder fits ``max_bytes``."""
        shards = self._scan()
        total = sum(size for _, _, size in shards)
        emptied = set()
        for _, path, size in sorted(shards):
            if total <= self.max_bytes:
                break
            _remove(path)
            total -= size
            emptied.add(os.path.dirname(path))
        for folder in emptied:
            try:
                os.rmdir(folder)  # only succeeds once the key has no file left
            except OSError:
                pass

    def clear(self):
        with self._lock:
            shutil.rmtree(self.root, ignore_errors=True)
            self._seen.clear()
            self._where.clear()
            self._touched.clear()


class FeatureCache:
    """A bounded, thread-safe store of feature rows, in memory and optionally on disk.

    Rows are keyed by what produced them (see :func:`extraction_key`) and by
    a hash of each sample's content; estimators get rows through their
    ``cache`` parameter.

    Parameters
    ----------
    max_bytes : int, default=1 GiB
        Size of the in-memory layer; least recently used rows are evicted first.
    directory : str, os.PathLike or None, default=None
        Also keep every row on disk under this folder (in a ``v1``
        subfolder, one folder per extraction key), so rows survive the
        process: a new :class:`FeatureCache` on the same folder, after a
        notebook restart or in a worker process of ``n_jobs>1``, reads them
        back. Several processes may share the folder: files are published
        atomically, damaged files are skipped and deleted. Rows of other
        weights have another key and are never read.
    max_disk_bytes : int or None, default=None
        Size of the on-disk folder, ``None`` meaning ``max_bytes``. After
        each write the least recently used files (by modification time,
        refreshed on reads) are deleted until the folder fits.

    Attributes
    ----------
    hits, misses : int
        Rows served from the cache / not found, since creation or :meth:`clear`.
    disk_hits : int
        Those of ``hits`` read from disk rather than memory.

    Notes
    -----
    ``copy.deepcopy`` (thus :func:`sklearn.base.clone`) returns the cache
    itself, like ``Pipeline(memory=...)``: clones share one store. Pickling
    keeps the settings, not the rows: an unpickled cache starts empty in
    memory, and reads back the rows of its ``directory``.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sktl import FeatureCache
    >>> folder = tempfile.TemporaryDirectory()
    >>> cache = FeatureCache(directory=folder.name)
    >>> key, hashes = b"k" * 16, [b"a" * 16, b"b" * 16]
    >>> cache.store(key, hashes, np.ones((2, 3), dtype=np.float32))
    >>> restarted = FeatureCache(directory=folder.name)  # e.g. after a restart
    >>> restarted.lookup(key, hashes + [b"c" * 16])
    [array([1., 1., 1.], dtype=float32), array([1., 1., 1.], dtype=float32), None]
    >>> restarted.hits, restarted.disk_hits, restarted.misses
    (2, 2, 1)
    >>> restarted.clear(disk=True)
    >>> folder.cleanup()
    """

    def __init__(self, max_bytes=1 << 30, directory=None, max_disk_bytes=None):
        self.max_bytes = max_bytes
        # Absolute, so that worker processes and later cwd changes agree on it.
        self.directory = (None if directory is None
                          else os.path.abspath(os.path.expanduser(os.fspath(directory))))
        self.max_disk_bytes = max_disk_bytes
        self._disk = None
        if self.directory is not None:
            disk_bytes = max_bytes if max_disk_bytes is None else max_disk_bytes
            self._disk = _DiskStore(os.path.join(self.directory, _FORMAT), disk_bytes)
        self._rows = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.disk_hits = 0

    def __len__(self):
        return len(self._rows)

    # clone() deep-copies parameters: a cache passed as a parameter must stay
    # the one shared store (like Pipeline(memory=...)), not be duplicated.
    def __deepcopy__(self, memo):
        return self

    # Pickling (joblib workers, saved models) carries the settings, not the
    # rows: a worker's copy reads and writes the same directory.
    def __getstate__(self):
        return {"max_bytes": self.max_bytes, "directory": self.directory,
                "max_disk_bytes": self.max_disk_bytes}

    def __setstate__(self, state):
        self.__init__(**state)

    def __repr__(self):
        args = [f"max_bytes={self.max_bytes}"]
        if self.directory is not None:
            args.append(f"directory={self.directory!r}")
        if self.max_disk_bytes is not None:
            args.append(f"max_disk_bytes={self.max_disk_bytes}")
        return f"FeatureCache({', '.join(args)})"

    @property
    def nbytes(self):
        """Bytes of the rows held in memory."""
        return self._bytes

    @property
    def disk_nbytes(self):
        """Bytes of the files under ``directory`` (0 without one)."""
        return 0 if self._disk is None else self._disk.nbytes

    def clear(self, disk=False):
        """Empty the memory layer and reset the counters.

        Parameters
        ----------
        disk : bool, default=False
            Also delete the rows stored under ``directory``, for every
            process sharing it. By default the files are kept.
        """
        with self._lock:
            self._rows.clear()
            self._bytes = 0
            self.hits = self.misses = self.disk_hits = 0
        if disk and self._disk is not None:
            self._disk.clear()

    def lookup(self, key, hashes):
        """Cached rows for ``hashes`` (``None`` where missing).

        Rows missing in memory are looked up on disk; those found there are
        put in memory and count as hits (and ``disk_hits``).
        """
        with self._lock:
            out = [self._get(key, h) for h in hashes]
        missing = [i for i, row in enumerate(out) if row is None]
        from_disk = {}
        if self._disk is not None:
            self._disk.touch(key, [h for h, row in zip(hashes, out) if row is not None])
            if missing:
                from_disk = self._disk.lookup(key, [hashes[i] for i in missing])
                for i in missing:
                    out[i] = from_disk.get(hashes[i])
        with self._lock:
            self._remember(key, from_disk.items())
            found = sum(row is not None for row in out)
            self.hits += found
            self.misses += len(out) - found
            self.disk_hits += sum(hashes[i] in from_disk for i in missing)
        return out

    def store(self, key, hashes, rows):
        """Keep ``rows`` (arrays of any shape), one per hash of ``hashes``."""
        rows = [np.array(row, copy=True) for row in rows]  # never alias a caller's array
        with self._lock:
            self._remember(key, zip(hashes, rows))
        if self._disk is not None:
            self._disk.store(key, hashes, rows)

    def _get(self, key, h):
        row = self._rows.get((key, h))
        if row is not None:
            self._rows.move_to_end((key, h))
        return row

    def _remember(self, key, pairs):
        for h, row in pairs:
            if (key, h) in self._rows:
                continue
            self._rows[key, h] = row
            self._bytes += row.nbytes
        while self._bytes > self.max_bytes and self._rows:
            _, old = self._rows.popitem(last=False)
            self._bytes -= old.nbytes


_DEFAULT = FeatureCache()


def default_cache():
    """The process-wide cache used when ``cache=True``."""
    return _DEFAULT


#: ``_parameter_constraints`` entry of every estimator's ``cache`` parameter.
CACHE_CONSTRAINT = ["boolean", None, FeatureCache, str, os.PathLike, HasMethods(["cache"])]

_BY_DIRECTORY = {}
_BY_DIRECTORY_LOCK = threading.Lock()


def _directory_cache(directory):
    # One instance per folder and process: repeated fits with cache="path"
    # share its memory layer and counters.
    directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    with _BY_DIRECTORY_LOCK:
        if directory not in _BY_DIRECTORY:
            _BY_DIRECTORY[directory] = FeatureCache(directory=directory)
        return _BY_DIRECTORY[directory]


def resolve_cache(cache):
    """The ``cache`` parameter -> a FeatureCache or None.

    ``True``: :func:`default_cache`; ``False``/``None``: no cache; a
    FeatureCache: itself; a path: the process's disk-backed cache on that
    folder; a ``joblib.Memory``: the same, in its ``sktl-features``
    subfolder (``Memory(None)``: no cache).
    """
    if cache is True:
        return _DEFAULT
    if cache is False or cache is None:
        return None
    if isinstance(cache, FeatureCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return _directory_cache(cache)
    if hasattr(cache, "cache") and hasattr(cache, "location"):  # joblib.Memory
        if cache.location is None:
            return None
        return _directory_cache(os.path.join(os.fspath(cache.location), "sktl-features"))
    raise TypeError(f"cache must be a bool, a path, a joblib.Memory or a FeatureCache, "
                    f"got {cache!r}")
