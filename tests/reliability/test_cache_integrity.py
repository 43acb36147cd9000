"""The on-disk feature cache under faults: foreign rows, user files, killed
writers, concurrent writers, read-only folders and replaced image files."""

import os
import signal
import stat
import textwrap
import time

import numpy as np
import pytest
from _procs import DROP_ROOT_FILE_POWERS, finish, spawn
from conftest import TinyNet

import sktl._cache
from sktl import FeatureCache, FeatureExtractor
from sktl._cache import _FORMAT, _checksum, sample_hashes

KEY = b"k" * 16

# Children load sktl/_cache.py alone: importing torch in each would cost
# seconds per child. ``cache_mod`` is the module.
LOAD_CACHE = """
    import importlib.util, os, sys, time
    import numpy as np

    spec = importlib.util.spec_from_file_location("cache_alone", sys.argv[1])
    cache_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cache_mod)
"""


def _spawn_cache(script, *args):
    return spawn(LOAD_CACHE + script, sktl._cache.__file__, *args)


def _extractor(cache):
    return FeatureExtractor(TinyNet, random_state=0, cache=cache)


def _key_folder(directory, key):
    return directory / _FORMAT / key.hex()


def _plant(directory, key, hashes, rows, when_ns):
    """A shard with a valid checksum, named like sktl's, as anyone could write."""
    raw = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), -1)
    path = _key_folder(directory, key) / f"{when_ns:016x}-{0xFEED:08x}.npz"
    np.savez(path, hashes=raw, rows=rows, check=_checksum(raw, rows))
    return path


def _features_in_a_new_process(X, directory):
    """``FeatureExtractor(TinyNet, cache=directory)`` features of X, from a child."""
    np.save(directory / "X.npy", X)
    finish(spawn("""
        import sys
        import numpy as np
        from conftest import TinyNet
        from sktl import FeatureExtractor

        folder, data, out = sys.argv[1:]
        X = np.load(data)
        np.save(out, FeatureExtractor(TinyNet, random_state=0, cache=folder).fit(X).transform(X))
    """, directory, directory / "X.npy", directory / "out.npy"))
    return np.load(directory / "out.npy")


def _temp_files(directory):
    return [p for p in directory.rglob(".*") if p.is_file()]


def _row(i, width=50_000):
    return np.arange(width, dtype=np.float32) + i


def _hash(i):
    return int(i).to_bytes(16, "big")


# -- item 3: rows of another form, and later shards, are never served ---------
BAD_ROWS = {
    "width": lambda true: np.ones((len(true), 5), dtype=np.float32),
    "dtype": lambda true: true.astype(np.float64) + 1,
    "ndim": lambda true: true[:, :, None] + 1,
}


def _poisoned(blobs, directory, forms):
    """Features of X cached under their real key, then replaced by shards of
    the given wrong forms only: ``(X, true features)``."""
    X = blobs[0][:40]
    true = _extractor(False).fit(X).transform(X)
    fe = _extractor(FeatureCache(directory=directory)).fit(X)
    fe.transform(X)  # sktl creates its folder
    for shard in _key_folder(directory, fe._extraction_key).glob("*.npz"):
        shard.unlink()
    for i, form in enumerate(forms):
        _plant(directory, fe._extraction_key, sample_hashes(X), BAD_ROWS[form](true),
               time.time_ns() + i)
    return X, true


@pytest.mark.parametrize("form", list(BAD_ROWS))
def test_rows_of_another_form_are_never_served(blobs, tmp_path, form):
    X, true = _poisoned(blobs, tmp_path, [form])
    cache = FeatureCache(directory=tmp_path)
    got = _extractor(cache).fit(X).transform(X)
    assert got.shape == (len(X), 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, true, rtol=1e-6, atol=1e-7)
    assert cache.misses == len(X)
    # The true rows were stored beside the foreign shard, and are read back.
    again = FeatureCache(directory=tmp_path)
    np.testing.assert_array_equal(_extractor(again).fit(X).transform(X), got)
    assert again.disk_hits == len(X)


def test_rows_of_another_form_are_never_served_in_a_new_process(blobs, tmp_path):
    X, true = _poisoned(blobs, tmp_path, list(BAD_ROWS))
    got = _features_in_a_new_process(X, tmp_path)
    assert got.shape == (len(X), 16)
    np.testing.assert_allclose(got, true, rtol=1e-6, atol=1e-7)


def test_a_later_shard_cannot_replace_stored_rows(blobs, tmp_path):
    X = blobs[0][:40]
    fe = _extractor(FeatureCache(directory=tmp_path)).fit(X)
    stored = fe.transform(X)
    _plant(tmp_path, fe._extraction_key, sample_hashes(X), stored + 1,
           time.time_ns() + 10**9)
    fresh = FeatureCache(directory=tmp_path)
    np.testing.assert_array_equal(_extractor(fresh).fit(X).transform(X), stored)
    assert fresh.disk_hits == len(X)

    np.testing.assert_array_equal(_features_in_a_new_process(X, tmp_path), stored)


def test_the_memory_layer_never_replaces_a_row(tmp_path):
    cache = FeatureCache(directory=tmp_path)
    first, second = np.zeros((1, 4), np.float32), np.ones((1, 4), np.float32)
    cache.store(KEY, [_hash(1)], first)
    cache.store(KEY, [_hash(1)], second)
    np.testing.assert_array_equal(cache.lookup(KEY, [_hash(1)])[0], first[0])
    np.testing.assert_array_equal(FeatureCache(directory=tmp_path).lookup(KEY, [_hash(1)])[0],
                                  first[0])


# -- item 6: sktl deletes only its own files ----------------------------------
def test_user_files_survive_eviction_and_clear(tmp_path):
    rows = np.zeros((10, 100), dtype=np.float32)
    hashes = [_hash(i) for i in range(10)]
    FeatureCache(directory=tmp_path).store(KEY, hashes, rows)  # sktl's folder exists
    mine = [tmp_path / "mine.npz",
            tmp_path / "v1" / ("ab" * 16) / "x.npz",  # an older sktl's, or the user's
            tmp_path / _FORMAT / "notes.npz",
            tmp_path / _FORMAT / "own" / "0000000000000001-00000001.npz",
            _key_folder(tmp_path, KEY) / "mine.npz",
            _key_folder(tmp_path, b"u" * 16) / "x.npz"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, data=np.arange(1000))
    small = FeatureCache(directory=tmp_path, max_disk_bytes=1)
    for b in range(3):  # each write evicts every shard, the new one included
        small.store(KEY, [_hash(100 * b + i) for i in range(10)], rows + b)
    assert small.disk_nbytes == 0
    assert all(path.exists() for path in mine)

    FeatureCache(directory=tmp_path).store(b"j" * 16, hashes, rows)
    assert _key_folder(tmp_path, b"j" * 16).exists()
    FeatureCache(directory=tmp_path).clear(disk=True)
    assert all(path.exists() for path in mine)
    assert not _key_folder(tmp_path, b"j" * 16).exists()  # emptied, then removed
    assert not [p for p in (tmp_path / _FORMAT).glob("*/*.npz") if p not in mine]


def test_a_subfolder_sktl_did_not_create_is_left_alone(tmp_path):
    theirs = tmp_path / _FORMAT
    theirs.mkdir()
    (theirs / "data.csv").write_text("a,b\n")
    before = sorted(tmp_path.rglob("*"))
    with pytest.warns(RuntimeWarning, match="memory only"):
        cache = FeatureCache(directory=tmp_path, max_disk_bytes=1)
    cache.store(KEY, [_hash(1)], np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(cache.lookup(KEY, [_hash(1)])[0], np.ones(4))
    cache.clear(disk=True)
    assert sorted(tmp_path.rglob("*")) == before


# -- item 6: temporary files of killed writers --------------------------------
N_STORES = 20_000
STORE_FOREVER = """
    cache = cache_mod.FeatureCache(directory=sys.argv[2], max_disk_bytes=30 << 20)
    row = lambda i: np.arange(50_000, dtype=np.float32) + i
    for j in range(int(sys.argv[3])):
        ids = range(4 * j, 4 * j + 4)
        cache.store(b"k" * 16, [int(i).to_bytes(16, "big") for i in ids],
                    np.stack([row(i) for i in ids]))
        if j == 0:
            print("ready", flush=True)
"""


@pytest.mark.parametrize("delays", [(0.0, 0.1, 0.3)])
def test_kill_9_mid_write_leaves_no_orphans_and_no_wrong_rows(tmp_path, delays):
    for delay in delays:
        child = _spawn_cache(STORE_FOREVER, tmp_path, N_STORES)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.communicate()
    reader = FeatureCache(directory=tmp_path, max_disk_bytes=30 << 20)
    assert _temp_files(tmp_path / _FORMAT) == []
    got = reader.lookup(KEY, [_hash(i) for i in range(4 * N_STORES)])
    assert any(row is not None for row in got)
    for i, row in enumerate(got):
        assert row is None or np.array_equal(row, _row(i)), i


HANG_MID_WRITE = """
    cache = cache_mod.FeatureCache(directory=sys.argv[2])
    cache.store(b"k" * 16, [b"a" * 16], np.ones((1, 8), np.float32))
    savez = np.savez

    def half_then_hang(fh, **arrays):
        import io
        buf = io.BytesIO()
        savez(buf, **arrays)
        fh.write(buf.getvalue()[:100])
        fh.flush()
        print("writing", flush=True)
        time.sleep(120)

    np.savez = half_then_hang
    cache.store(b"k" * 16, [b"b" * 16], np.ones((1, 8), np.float32))
"""


def test_a_dead_writers_temp_file_is_removed_a_live_ones_kept(tmp_path):
    pytest.importorskip("fcntl")  # elsewhere only an hour-old temp file counts as dead
    child = _spawn_cache(HANG_MID_WRITE, tmp_path)
    try:
        assert child.stdout.readline().strip() == "writing"
        (temp,) = _temp_files(tmp_path / _FORMAT)
        FeatureCache(directory=tmp_path)  # opening the folder
        assert temp.exists()  # its writer is alive
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    reader = FeatureCache(directory=tmp_path)
    assert not temp.exists() and _temp_files(tmp_path / _FORMAT) == []
    a, b = reader.lookup(KEY, [b"a" * 16, b"b" * 16])
    np.testing.assert_array_equal(a, np.ones(8))
    assert b is None


# -- concurrent writers --------------------------------------------------------
# Writer w stores rows ``i + 1000 * w``: like features computed on two GPUs,
# the processes disagree in the last bits; every reader must get one of them,
# the first stored.
TWO_WRITERS = """
    root, me = sys.argv[2], int(sys.argv[3])
    open(os.path.join(root, f"ready-{me}"), "w").close()
    while len([f for f in os.listdir(root) if f.startswith("ready-")]) < 2:
        time.sleep(0.005)
    cache = cache_mod.FeatureCache(directory=os.path.join(root, "cache"))
    ids = np.random.default_rng(me).permutation(range(40 * me, 60 + 40 * me))
    for chunk in np.split(ids, 12):
        cache.store(b"k" * 16, [int(i).to_bytes(16, "big") for i in chunk],
                    np.stack([np.full(6, i + 1000 * me, np.float32) for i in chunk]))
"""

READ_ALL = """
    cache = cache_mod.FeatureCache(directory=sys.argv[2])
    rows = cache.lookup(b"k" * 16, [int(i).to_bytes(16, "big") for i in range(100)])
    np.save(sys.argv[3], np.stack([np.full(6, np.nan, np.float32) if r is None else r
                                   for r in rows]))
"""


def test_two_writers_then_a_reader_get_the_first_row_stored(tmp_path):
    writers = [_spawn_cache(TWO_WRITERS, tmp_path, me) for me in (0, 1)]
    for proc in writers:
        finish(proc)
    folder = _key_folder(tmp_path / "cache", KEY)
    first = {}
    for shard in sorted(folder.glob("*.npz")):  # names sort by time of writing
        with np.load(shard) as parts:
            for h, row in zip(parts["hashes"], parts["rows"]):
                first.setdefault(int.from_bytes(bytes(h), "big"), row)
    assert len(first) == 100  # writer 0 wrote ids 0-59, writer 1 ids 40-99
    finish(_spawn_cache(READ_ALL, tmp_path / "cache", tmp_path / "read.npy"))
    read = np.load(tmp_path / "read.npy")
    in_process = FeatureCache(directory=tmp_path / "cache").lookup(
        KEY, [_hash(i) for i in range(100)])
    for i in range(100):
        assert read[i][0] in (i, i + 1000)  # never a mix of rows
        np.testing.assert_array_equal(read[i], first[i])
        np.testing.assert_array_equal(in_process[i], first[i])


# -- a read-only folder ---------------------------------------------------------
def _set_writable(root, writable):
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~0o222)


def test_a_read_only_folder_gives_correct_features_with_a_warning(blobs, tmp_path):
    X = blobs[0][:40]
    folder = tmp_path / "cache"
    _extractor(FeatureCache(directory=folder)).fit(X[:20]).transform(X[:20])
    np.save(tmp_path / "X.npy", X)
    _set_writable(folder, False)
    try:
        # In a child that, when run as root (as CI is), has given up root's
        # power to write to read-only files: the folder is read-only to it.
        out = finish(spawn(DROP_ROOT_FILE_POWERS + textwrap.dedent("""
            import warnings
            import numpy as np
            from conftest import TinyNet
            from sktl import FeatureCache, FeatureExtractor

            folder, base = sys.argv[1], sys.argv[2]
            try:
                open(os.path.join(folder, "probe"), "w").close()
                print("writable")
                sys.exit(0)
            except PermissionError:
                pass
            X = np.load(os.path.join(base, "X.npy"))
            cache = FeatureCache(directory=folder)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = FeatureExtractor(TinyNet, random_state=0, cache=cache).fit(X).transform(X)
            np.save(os.path.join(base, "got.npy"), got)
            warned = any("could not write" in str(w.message) for w in caught)
            print(cache.disk_hits, warned)
        """), folder, tmp_path))
    finally:
        _set_writable(folder, True)
    if out.split() == ["writable"]:
        pytest.skip("this platform lets the child write to a read-only folder")
    assert out.split() == ["20", "True"], out
    np.testing.assert_allclose(np.load(tmp_path / "got.npy"),
                               _extractor(False).fit(X).transform(X), rtol=1e-6, atol=1e-7)


# -- item 7: image files are keyed by content -----------------------------------
def test_a_replaced_image_file_gets_its_new_features(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(2)]
    path = tmp_path / "image.png"
    other = tmp_path / "other.png"
    Image.fromarray(images[0]).save(path, compress_level=0)  # stored: same length
    Image.fromarray(images[1]).save(other, compress_level=0)
    assert path.stat().st_size == other.stat().st_size

    def features(cache):
        return FeatureExtractor("resnet18", weights=None, random_state=0,
                                cache=cache).fit([str(path)]).transform([str(path)])

    old = features(FeatureCache(directory=tmp_path / "cache"))
    before = path.stat()
    path.write_bytes(other.read_bytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    new = features(FeatureCache(directory=tmp_path / "cache"))
    np.testing.assert_allclose(new, features(False), rtol=1e-5, atol=1e-6)
    assert not np.allclose(new, old)
