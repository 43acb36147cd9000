"""Content-addressed feature rows shared by clones, CV folds and grid points.

A row is keyed by *what produced it* (the backbone's recipe and a
fingerprint of its weights, the layer, pooling and preprocessing) and by a
hash of the sample's content. Two folds of a cross-validation, or two
grid-search candidates that differ only in the head's hyperparameters, ask
for the same rows and get them without running the backbone again; a
fine-tuned backbone has another fingerprint and never reads stale rows.

With a ``directory`` the rows are also kept on disk, so they outlive the
process: a notebook restart or the worker processes of ``n_jobs>1`` read
them back instead of running the backbone again. sktl writes and deletes
only its own files there (see :class:`FeatureCache`, "Trust model").
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
import time
import warnings
from collections import OrderedDict, defaultdict, namedtuple

try:
    import fcntl
except ImportError:  # Windows: temporary files of dead writers are told by age
    fcntl = None

import numpy as np
from sklearn.utils._param_validation import HasMethods

__all__ = [
    "CACHE_CONSTRAINT",
    "FeatureCache",
    "RowSpec",
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
        # By content, not by path, size and time: a file replaced by another
        # of the same size and time (a copy, an archive extracted again) must
        # not get the old rows. Reading the bytes costs little next to
        # decoding them and a forward pass.
        h.update(b"f")
        with open(x, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    elif hasattr(x, "tobytes") and hasattr(x, "mode"):  # PIL image
        h.update(f"i{x.mode}{x.size}".encode())
        h.update(x.tobytes())
    else:
        arr = np.ascontiguousarray(x)
        h.update(f"a{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.digest()


def sample_hashes(X):
    """One content hash per sample (row of an array, text, image, or file: its bytes)."""
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


class RowSpec(namedtuple("RowSpec", "dtype shape")):
    """The form of every row of one extraction key.

    Parameters
    ----------
    dtype : dtype-like
        The rows' dtype.
    shape : tuple of int or None
        The shape of one row, ``None`` where a length varies (the tokens of
        a sentence's token states: ``(None, hidden_size)``).

    Rows of another form (read from a foreign or damaged file, or kept
    under an earlier spec) are not rows of the key: the cache discards them
    as misses.
    """

    __slots__ = ()

    def __new__(cls, dtype, shape):
        return super().__new__(cls, np.dtype(dtype).str,
                               tuple(None if n is None else int(n) for n in shape))

    @classmethod
    def of(cls, dtype, shape):
        """The form a row of ``dtype`` and ``shape`` pins when the caller gave
        none: its dtype, number of dimensions and last width (the only
        length known to be fixed: token states vary in length)."""
        return cls(dtype, (None,) * (len(shape) - 1) + tuple(shape[-1:]))

    def matches(self, dtype, shape):
        return (np.dtype(dtype).str == self.dtype and len(shape) == len(self.shape)
                and all(n is None or n == m for n, m in zip(self.shape, shape)))


#: Subfolder of a cache directory holding sktl's files, in the current
#: format. A new format gets a new name, so files of an older one are never
#: misread (nor deleted: they are not this format's files).
_FORMAT = "sktl-features-v2"
#: Written by sktl when it creates ``_FORMAT``: sktl writes and deletes files
#: only below a folder carrying it. A CACHEDIR.TAG also tells backup tools
#: (https://bford.info/cachedir/) that the folder needs no backup.
_MARKER = "CACHEDIR.TAG"
_MARKER_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
                "# This folder is a feature cache created by sktl (FeatureCache).\n"
                "# sktl deletes only its own files here: <key>/<shard>.npz.\n")
#: Names of sktl's own files: one folder per extraction key (its hex digest),
#: shards (time of writing, random part) and temporary files of writers.
_KEY_FOLDER = re.compile(r"[0-9a-f]+")
_SHARD = re.compile(r"[0-9a-f]{16}-[0-9a-f]{8}\.npz")
_TEMP = re.compile(r"\.[0-9a-f]{16}\.tmp")
#: Without ``fcntl`` a temporary file this old belongs to a writer that died.
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


def _header(shard, name):
    """``(shape, dtype)`` of array ``name`` of an open ``.npz``, from its
    header: the form of a shard's rows is checked without reading them."""
    with shard.zip.open(f"{name}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, _, dtype = read(fh)
    return shape, dtype


def _remove(path):
    try:
        os.remove(path)
    except OSError:  # already gone (another process), or still open on Windows
        pass


def _set_mtime(path, ns):
    # Explicit, precise times: the kernel stamps files with a coarse clock
    # (a few ms), too coarse to order shards written or read in a burst.
    os.utime(path, ns=(ns, ns))


def _names(folder, pattern):
    """Names in ``folder`` matching ``pattern`` (none if it is gone)."""
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries if pattern.fullmatch(e.name)}
    except OSError:  # no folder yet, or removed by another process's eviction
        return set()


def _remove_if_orphan(path):
    """Delete the temporary file ``path`` if its writer is dead.

    A writer holds an exclusive ``flock`` on its temporary file until it has
    renamed it, and the system releases it when the writer dies: getting the
    lock proves the file an orphan. The file is deleted while the lock is
    held, and a writer checks after locking that its file is still there, so
    a live writer's file is never lost.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError:  # renamed into place or removed meanwhile
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live writer's
                return
            except OSError:  # no locks on this file system: go by age
                pass
            else:
                _remove(path)
                return
        if time.time() - os.fstat(fd).st_mtime > _STALE_TMP_SECONDS:
            _remove(path)
    finally:
        os.close(fd)


class _DiskStore:
    """The on-disk layer of a :class:`FeatureCache`.

    ``root/<key hex>/<shard>.npz``: a shard holds the rows of one ``store``
    call (``hashes``: uint8 of shape (n, 16), ``rows``: shape (n, ...), and
    a checksum of both). It is written to a hidden temporary file and
    published with ``os.replace``, so readers of any process see whole shards
    only, and concurrent writers never collide (names are unique). Damaged
    shards are skipped and deleted; shards whose rows have another form than
    the key's (see :class:`RowSpec`) are skipped. The first row stored for a
    sample wins: shards are indexed oldest first and a later one never
    replaces a row, so every process reads the same row. The in-process
    index remembers which shards were read and where each row lives, so a
    lookup reads only new shards, or the shard of a row the memory layer has
    evicted.

    ``root`` is sktl's only if it carries the marker :data:`_MARKER`, written
    when sktl creates it (or finds it empty); files are written, evicted and
    cleared only there, and only those matching sktl's names. Opening it
    removes the temporary files of writers that died.
    """

    def __init__(self, root, max_bytes):
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._forms = {}  # key -> the RowSpec its index was built for
        self._seen = {}  # key -> names of the shards already indexed
        self._where = {}  # key -> {sample hash: name of the shard holding its row}
        self._touched = {}  # shard path -> time.monotonic() of our last utime

    def open(self):
        """Whether ``root`` is sktl's to use (warns if not); removes orphans.

        A missing folder is created, marked, by the first write; an empty one
        is marked now. A folder with files but no marker is someone else's:
        the cache then keeps rows in memory only.
        """
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return True
        except OSError as exc:
            reason = str(exc)
        else:
            if names and _MARKER not in names:
                reason = f"it holds files and no {_MARKER} written by sktl"
            else:
                try:
                    if not names:
                        self._mark()
                    for folder in self._key_folders():
                        for name in _names(folder, _TEMP):
                            _remove_if_orphan(os.path.join(folder, name))
                    return True
                except OSError as exc:
                    reason = str(exc)
        warnings.warn(f"FeatureCache does not use the folder {self.root} ({reason}): "
                      "rows are kept in memory only.", RuntimeWarning, stacklevel=3)
        return False

    def _mark(self):
        os.makedirs(self.root, exist_ok=True)
        try:
            fd = os.open(os.path.join(self.root, _MARKER),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # marked by another process meanwhile
            return
        with os.fdopen(fd, "w") as fh:
            fh.write(_MARKER_TEXT)

    def _folder(self, key):
        return os.path.join(self.root, key.hex())

    def _key_folders(self):
        return [os.path.join(self.root, name) for name in _names(self.root, _KEY_FOLDER)]

    def lookup(self, key, hashes, spec):
        """``({hash: row}, spec)`` for those of ``hashes`` found on disk.

        Only rows of form ``spec`` are read; with ``spec=None`` (no form
        known yet) the oldest shard of the key pins it, and is returned.
        """
        wanted = set(hashes)
        with self._lock:
            if spec is None:
                spec = self._forms.get(key)
            elif self._forms.get(key) not in (None, spec):
                self._forget(key, set(self._seen.get(key, ())))  # index anew
            if spec is not None:
                self._forms[key] = spec
            found = self._index_new_shards(key, wanted)
            index = self._where.get(key, {})
            by_shard = defaultdict(set)
            for h in wanted.difference(found):
                if h in index:
                    by_shard[index[h]].add(h)
            for name, shard_hashes in by_shard.items():
                found.update(self._read(key, name, shard_hashes))
            return found, self._forms.get(key)

    def _index_new_shards(self, key, wanted):
        names = _names(self._folder(key), _SHARD)
        seen = self._seen.setdefault(key, set())
        self._forget(key, seen - names)  # evicted by some process
        index = self._where.setdefault(key, {})
        found = {}
        # Oldest first (names start with the time of writing), and a hash
        # already indexed keeps its shard: the first row stored wins.
        for name in sorted(names - seen):
            seen.add(name)
            for h, row in self._load(key, name, wanted):
                if index.setdefault(h, name) == name and row is not None:
                    found[h] = row
        return found

    def _read(self, key, name, wanted):
        rows = {h: row for h, row in self._load(key, name, wanted) if row is not None}
        if not rows:  # gone or damaged since it was indexed
            self._forget(key, {name})
        return rows

    def _load(self, key, name, wanted):
        """``(hash, row or None)`` pairs of a shard, rows only for ``wanted``;
        nothing if the shard is gone (evicted), damaged (then deleted) or
        holds rows of another form than the key's."""
        path = os.path.join(self._folder(key), name)
        try:
            with np.load(path, allow_pickle=False) as shard:
                raw = shard["hashes"]
                hashes = _split_hashes(raw)
                shape, dtype = _header(shard, "rows")
                if shape[:1] != (len(hashes),):
                    raise ValueError("not one row per hash")
                spec = self._forms.setdefault(key, RowSpec.of(dtype, shape[1:]))
                if not spec.matches(dtype, shape[1:]):
                    return []
                if wanted.isdisjoint(hashes):
                    return [(h, None) for h in hashes]
                rows, check = shard["rows"], shard["check"]
            if not np.array_equal(check, _checksum(raw, rows)):
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
                    for h in part:
                        index.setdefault(h, name)
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

    def _open_temp(self, folder):
        """A new temporary file in ``folder`` (created if missing, with a
        marked root), opened for writing and locked while the writer lives."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        for attempt in range(3):
            path = os.path.join(folder, f".{secrets.token_hex(8)}.tmp")
            try:
                os.mkdir(folder)
            except FileExistsError:
                pass
            except FileNotFoundError:  # no root (first write, or deleted): mark it
                self._mark()
                os.makedirs(folder, exist_ok=True)
            try:
                fd = os.open(path, flags, 0o666)
            except FileNotFoundError:
                # Another process's eviction removed the empty folder meanwhile.
                if attempt == 2:
                    raise
                continue
            if fcntl is None:
                return fd, path
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # waits only for an opener's check
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    return fd, path
            except FileNotFoundError:
                pass  # an opener took it for an orphan before we locked it
            except OSError:  # no locks on this file system: openers go by age
                return fd, path
            os.close(fd)
        raise OSError(f"could not create a temporary file in {folder}")

    def _write(self, key, hashes, rows):
        raw = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), -1)
        folder = self._folder(key)
        fd, tmp = self._open_temp(folder)
        try:
            # The descriptor stays open until the file is renamed: its lock
            # tells openers that the writer is alive (see _remove_if_orphan).
            with os.fdopen(fd, "wb", closefd=False) as fh:
                np.savez(fh, hashes=raw, rows=rows, check=_checksum(raw, rows))
            now = time.time_ns()
            _set_mtime(tmp, now)
            # Time first: names sort by age, which orders the shards of a key
            # (the first row stored wins) and breaks mtime ties in eviction.
            name = f"{now:016x}-{secrets.token_hex(4)}.npz"
            if fcntl is None:  # Windows cannot rename an open file
                os.close(fd)
                fd = None
            os.replace(tmp, os.path.join(folder, name))
        except BaseException:
            _remove(tmp)
            raise
        finally:
            if fd is not None:
                os.close(fd)
        return name

    def _scan(self):
        """``(mtime_ns, path, size)`` of every shard of sktl's."""
        shards = []
        for folder in self._key_folders():
            for name in _names(folder, _SHARD):
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:  # removed meanwhile by another process
                    continue
                shards.append((st.st_mtime_ns, path, st.st_size))
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
        _remove_empty(emptied)

    def clear(self):
        """Delete every shard (and emptied key folder); other files stay."""
        with self._lock:
            for _, path, _ in self._scan():
                _remove(path)
            _remove_empty(self._key_folders())
            self._seen.clear()
            self._where.clear()
            self._touched.clear()


def _remove_empty(folders):
    for folder in folders:
        try:
            os.rmdir(folder)  # only succeeds once the key has no file left
        except OSError:
            pass


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
        Also keep every row on disk under this folder (in a
        ``sktl-features-v2`` subfolder that sktl creates and marks with a
        ``CACHEDIR.TAG`` file, one folder per extraction key), so rows
        survive the process: a new :class:`FeatureCache` on the same folder,
        after a notebook restart or in a worker process of ``n_jobs>1``,
        reads them back. Several processes may share the folder: files are
        published atomically, damaged files are skipped and deleted, rows of
        another dtype or shape than the key's are never served, and the
        first row stored for a sample is the one every process reads.
        Temporary files of writers that died are removed by the next
        :class:`FeatureCache` opened on the folder. Rows of other weights
        have another key and are never read. sktl writes and deletes only
        its own files: anything else in the folder is left alone, and a
        ``sktl-features-v2`` subfolder sktl did not create (not empty, no
        marker) is not used (a warning; rows are then kept in memory only).
    max_disk_bytes : int or None, default=None
        Size of sktl's files on disk, ``None`` meaning ``max_bytes``. After
        each write the least recently used of them (by modification time,
        refreshed on reads) are deleted until they fit.
    prefix : bool, default=True
        Also keep what the frozen blocks of a partial fine-tune output
        (``0 < unfreeze < n_blocks``): the fit runs them once per sample and
        trains the unfrozen top on their stored output, instead of running
        them every epoch. ``False``: such fits run through their frozen
        blocks every epoch (frozen features of ``unfreeze=0`` are still
        kept).

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

    **Trust model.** A cache folder is trusted like ``joblib.Memory``'s: use
    a folder you own, that no one else can write to. The checks above
    (checksum, dtype and shape of rows, first row wins) guard against
    accidents (a full disk, a killed process, a copy cut short) and
    concurrent writers, not against an attacker who can write to the
    folder: such a person can write files that pass every check, and so
    choose the features (thus the predictions) of samples they know.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sktl import FeatureCache
    >>> from sktl._cache import RowSpec
    >>> folder = tempfile.TemporaryDirectory()
    >>> cache = FeatureCache(directory=folder.name)
    >>> key, hashes = b"k" * 16, [b"a" * 16, b"b" * 16]
    >>> cache.store(key, hashes, np.ones((2, 3), dtype=np.float32))
    >>> restarted = FeatureCache(directory=folder.name)  # e.g. after a restart
    >>> restarted.lookup(key, hashes + [b"c" * 16], like=RowSpec(np.float32, (3,)))
    [array([1., 1., 1.], dtype=float32), array([1., 1., 1.], dtype=float32), None]
    >>> restarted.hits, restarted.disk_hits, restarted.misses
    (2, 2, 1)
    >>> restarted.lookup(key, hashes, like=RowSpec(np.float32, (4,)))  # another form
    [None, None]
    >>> restarted.clear(disk=True)
    >>> folder.cleanup()
    """

    def __init__(self, max_bytes=1 << 30, directory=None, max_disk_bytes=None, prefix=True):
        self.max_bytes = max_bytes
        self.prefix = prefix
        # Absolute, so that worker processes and later cwd changes agree on it.
        self.directory = (None if directory is None
                          else os.path.abspath(os.path.expanduser(os.fspath(directory))))
        self.max_disk_bytes = max_disk_bytes
        self._disk = None
        if self.directory is not None:
            disk_bytes = max_bytes if max_disk_bytes is None else max_disk_bytes
            disk = _DiskStore(os.path.join(self.directory, _FORMAT), disk_bytes)
            self._disk = disk if disk.open() else None
        self._rows = OrderedDict()
        self._specs = {}  # key -> RowSpec of its rows
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
                "max_disk_bytes": self.max_disk_bytes, "prefix": self.prefix}

    def __setstate__(self, state):
        self.__init__(**state)

    def __repr__(self):
        args = [f"max_bytes={self.max_bytes}"]
        if self.directory is not None:
            args.append(f"directory={self.directory!r}")
        if self.max_disk_bytes is not None:
            args.append(f"max_disk_bytes={self.max_disk_bytes}")
        if not self.prefix:
            args.append("prefix=False")
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
            process sharing it (sktl's files only: other files in the
            folder stay). By default the files are kept.
        """
        with self._lock:
            self._rows.clear()
            self._specs.clear()
            self._bytes = 0
            self.hits = self.misses = self.disk_hits = 0
        if disk and self._disk is not None:
            self._disk.clear()

    def lookup(self, key, hashes, like=None):
        """Cached rows for ``hashes`` (``None`` where missing).

        Rows missing in memory are looked up on disk; those found there are
        put in memory and count as hits (and ``disk_hits``).

        Parameters
        ----------
        key : bytes
            What produced the rows (see :func:`extraction_key`).
        hashes : list of bytes
            The samples' content hashes (see :func:`sample_hashes`).
        like : RowSpec or None, default=None
            The form of the key's rows: rows of another dtype or shape are
            misses. ``None``: the form of the first row this cache stored
            or read for the key (dtype, number of dimensions and last
            width), which keeps rows of two forms from being mixed but
            cannot tell which is right; sktl's estimators always pass it.
        """
        with self._lock:
            if like is not None:
                self._specs[key] = like
            spec = self._specs.get(key)
            out = [self._get(key, h, spec) for h in hashes]
        missing = [i for i, row in enumerate(out) if row is None]
        from_disk = {}
        if self._disk is not None:
            self._disk.touch(key, [h for h, row in zip(hashes, out) if row is not None])
            if missing:
                from_disk, spec = self._disk.lookup(key, [hashes[i] for i in missing], spec)
                for i in missing:
                    out[i] = from_disk.get(hashes[i])
        with self._lock:
            if from_disk:
                self._specs.setdefault(key, spec)
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
            if rows:
                self._specs.setdefault(key, RowSpec.of(rows[0].dtype, rows[0].shape))
            self._remember(key, zip(hashes, rows))
        if self._disk is not None:
            self._disk.store(key, hashes, rows)

    def _get(self, key, h, spec):
        row = self._rows.get((key, h))
        if row is None:
            return None
        if spec is not None and not spec.matches(row.dtype, row.shape):
            # Kept under another form (an earlier ``like``): not a row of the key.
            del self._rows[key, h]
            self._bytes -= row.nbytes
            return None
        self._rows.move_to_end((key, h))
        return row

    def _remember(self, key, pairs):
        for h, row in pairs:
            if (key, h) in self._rows:  # the first row stored wins
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
