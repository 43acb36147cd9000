"""The on-disk feature cache: restarts, processes, damage, staleness, bounds."""

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pytest
from conftest import TinyNet
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils._param_validation import InvalidParameterError

import sktl
from sktl import FeatureCache, FeatureExtractor, TransferClassifier
from sktl._cache import _FORMAT, resolve_cache

KEY = b"k" * 16


def _env():
    # The child imports sktl and conftest from this checkout, installed or not.
    roots = [str(Path(sktl.__file__).parents[1]), str(Path(__file__).parent)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(roots + [os.environ.get("PYTHONPATH", "")])}


def _python(script, *args):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


def _extract(X, cache, random_state=0):
    return FeatureExtractor(TinyNet, random_state=random_state, cache=cache).fit(X).transform(X)


def _shards(directory):
    return sorted((Path(directory) / _FORMAT).glob("*/*.npz"))


def test_rows_survive_a_new_instance_and_a_new_process(blobs, tmp_path):
    X, _ = blobs
    folder = tmp_path / "features"
    plain = _extract(X, cache=False)
    first = FeatureCache(directory=folder)
    computed = _extract(X, first)
    assert (first.hits, first.misses) == (0, len(X)) and _shards(folder)

    restarted = FeatureCache(directory=folder)
    np.testing.assert_array_equal(_extract(X, restarted), computed)
    assert (restarted.hits, restarted.disk_hits, restarted.misses) == (len(X), len(X), 0)
    np.testing.assert_allclose(computed, plain, rtol=1e-6, atol=1e-7)

    np.save(tmp_path / "X.npy", X)
    child = _python("""
        import sys
        import numpy as np
        from conftest import TinyNet
        from sktl import FeatureExtractor
        from sktl._cache import resolve_cache

        folder, data, out = sys.argv[1:]
        X = np.load(data)
        feats = FeatureExtractor(TinyNet, random_state=0, cache=folder).fit(X).transform(X)
        np.save(out, feats)
        cache = resolve_cache(folder)
        print(cache.hits, cache.disk_hits, cache.misses)
    """, folder, tmp_path / "X.npy", tmp_path / "out.npy")
    assert _finish(child).split() == [str(len(X)), str(len(X)), "0"]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), computed)


def _row(i):
    return np.arange(60, dtype=np.float32).reshape(3, 4, 5) * (i + 1)


# Loads sktl/_cache.py alone: importing torch in every child would triple the
# test's time. The children wait for each other, then race on one key.
CONCURRENT_WORKER = """
    import importlib.util, os, sys, time, warnings
    import numpy as np

    cache_py, root, me, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    spec = importlib.util.spec_from_file_location("cache_alone", cache_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    warnings.simplefilter("error", RuntimeWarning)  # a failed write fails the test
    open(os.path.join(root, "ready-" + me), "w").close()
    while len([f for f in os.listdir(root) if f.startswith("ready-")]) < n:
        time.sleep(0.01)
    row = lambda i: np.arange(60, dtype=np.float32).reshape(3, 4, 5) * (i + 1)
    rng = np.random.default_rng(int(me))
    for folder, bound in [("free", None), ("bounded", 20_000)]:
        cache = mod.FeatureCache(directory=os.path.join(root, folder), max_disk_bytes=bound)
        mine, foreign = set(), 0
        for step in range(80):
            ids = rng.choice(200, size=20, replace=False)
            hashes = [int(i).to_bytes(16, "big") for i in ids]
            got = cache.lookup(b"k" * 16, hashes)
            for i, r in zip(ids, got):
                assert r is None or np.array_equal(r, row(i)), (i, r)
                foreign += r is not None and i not in mine
            new = [i for i, r in zip(ids, got) if r is None]
            if new:
                cache.store(b"k" * 16, [int(i).to_bytes(16, "big") for i in new],
                            np.stack([row(i) for i in new]))
            mine.update(new)
            if step % 2:
                cache.clear()  # the next lookup reads disk, through the index
        print(foreign)
"""


def test_processes_share_a_key_concurrently(tmp_path):
    import sktl._cache

    n = 2
    procs = [_python(CONCURRENT_WORKER, sktl._cache.__file__, tmp_path, me, n)
             for me in range(n)]
    foreign = np.array([_finish(p).split() for p in procs], dtype=int)
    assert foreign[:, 0].sum() > 0  # the processes served each other's rows
    for folder, bound in [("free", None), ("bounded", 20_000)]:
        assert not list((tmp_path / folder / _FORMAT).glob("*/.*.tmp"))
        reader = FeatureCache(directory=tmp_path / folder)
        got = reader.lookup(KEY, [i.to_bytes(16, "big") for i in range(200)])
        for i, row in enumerate(got):
            assert row is None or np.array_equal(row, _row(i))
        if bound is None:
            assert reader.hits == 200
        else:
            assert 0 < reader.disk_nbytes <= bound and reader.misses > 0


def test_damaged_shards_are_skipped_and_deleted(blobs, tmp_path):
    X, _ = blobs
    computed = _extract(X, FeatureCache(directory=tmp_path))
    (good,) = _shards(tmp_path)
    with np.load(good) as shard:
        parts = dict(shard)
    folder = good.parent
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # e.g. a killed writer
    # Named like sktl's shards: files of other names are never read (nor deleted).
    name = iter(f"{i:016x}-00000000.npz" for i in range(1, 100))
    (folder / next(name)).write_bytes(b"")
    (folder / next(name)).write_bytes(os.urandom(5000))
    np.savez(folder / next(name), hashes=parts["hashes"])
    np.savez(folder / next(name), **{**parts, "rows": parts["rows"] + 1})  # bad checksum
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside the rows: bad CRC
    (folder / next(name)).write_bytes(bytes(flipped))
    method = bytearray(data)
    entry = data.index(b"PK\x01\x02")  # first central-directory entry
    method[entry + 10] = 99  # an unknown compression method
    (folder / next(name)).write_bytes(bytes(method))
    damaged = set(_shards(tmp_path))

    cache = FeatureCache(directory=tmp_path)
    np.testing.assert_allclose(_extract(X, cache), computed, rtol=1e-6, atol=1e-7)
    assert (cache.hits, cache.misses) == (0, len(X))
    assert damaged.isdisjoint(_shards(tmp_path)) and len(_shards(tmp_path)) == 1
    again = FeatureCache(directory=tmp_path)
    np.testing.assert_array_equal(_extract(X, again), computed)
    assert again.disk_hits == len(X)


def test_a_shard_is_invisible_to_readers_until_complete(tmp_path, monkeypatch):
    import io

    reader = FeatureCache(directory=tmp_path)
    hashes, rows = _batch(1)
    seen_mid_write = []
    savez = np.savez

    def write_in_two_halves(fh, **arrays):
        buf = io.BytesIO()
        savez(buf, **arrays)
        data = buf.getvalue()
        fh.write(data[: len(data) // 2])
        fh.flush()
        seen_mid_write.append(reader.lookup(KEY, hashes))
        fh.write(data[len(data) // 2:])

    monkeypatch.setattr(np, "savez", write_in_two_halves)
    FeatureCache(directory=tmp_path).store(KEY, hashes, rows)
    monkeypatch.undo()
    assert seen_mid_write == [[None] * len(hashes)]
    np.testing.assert_array_equal(np.stack(reader.lookup(KEY, hashes)), rows)


def test_other_weights_miss_on_disk_too(blobs, tmp_path):
    X, _ = blobs
    _extract(X, FeatureCache(directory=tmp_path), random_state=0)
    cache = FeatureCache(directory=tmp_path)
    feats = _extract(X, cache, random_state=1)
    assert (cache.hits, cache.disk_hits, cache.misses) == (0, 0, len(X))
    np.testing.assert_allclose(feats, _extract(X, False, random_state=1), rtol=1e-6, atol=1e-7)


def _batch(b):
    hashes = [bytes([b, i]) * 8 for i in range(10)]
    return hashes, np.full((10, 100), b, dtype=np.float32)


def test_disk_bound_evicts_least_recently_used_shards(tmp_path):
    probe = FeatureCache(directory=tmp_path / "probe")
    probe.store(KEY, *_batch(0))
    shard = probe.disk_nbytes
    bound = int(3.5 * shard)
    writer = FeatureCache(directory=tmp_path / "c", max_disk_bytes=bound)
    for b in range(3):
        writer.store(KEY, *_batch(b))
    assert writer.disk_nbytes == 3 * shard
    reader = FeatureCache(directory=tmp_path / "c")
    reader.lookup(KEY, _batch(0)[0])  # batch 0 is now the most recently used
    for b in range(3, 5):
        writer.store(KEY, *_batch(b))
        assert writer.disk_nbytes <= bound
    after = FeatureCache(directory=tmp_path / "c")
    found = {b: all(r is not None for r in after.lookup(KEY, _batch(b)[0])) for b in range(5)}
    assert found == {0: True, 1: False, 2: False, 3: True, 4: True}


def test_a_store_larger_than_the_disk_bound_keeps_its_newest_rows(tmp_path):
    small = FeatureCache(directory=tmp_path, max_disk_bytes=20_000)
    small.store(KEY, *_batch(0))  # 10 rows of 400 bytes
    hashes = [bytes([9, i % 256, i // 256]) * 5 + b"x" for i in range(120)]
    rows = np.arange(120 * 100, dtype=np.float32).reshape(120, 100)
    small.store(b"j" * 16, hashes, rows)  # 48 kB: more than the bound
    assert 0 < small.disk_nbytes <= 20_000
    # The newest rows are on disk for a fresh process, not a wiped folder.
    fresh = FeatureCache(directory=tmp_path)
    found = fresh.lookup(b"j" * 16, hashes)
    assert found[-1] is not None and found[0] is None
    np.testing.assert_array_equal(found[-1], rows[-1])


def test_rows_evicted_from_memory_are_read_back_from_disk(tmp_path):
    cache = FeatureCache(max_bytes=3 * 400, directory=tmp_path, max_disk_bytes=1 << 20)
    hashes, rows = _batch(7)
    cache.store(KEY, hashes, rows)
    assert len(cache) == 3
    got = cache.lookup(KEY, hashes)
    np.testing.assert_array_equal(np.stack(got), rows)
    assert (cache.hits, cache.disk_hits) == (10, 7)
    assert "directory=" in repr(cache)
    cache.clear()
    assert (len(cache), cache.hits) == (0, 0) and cache.disk_nbytes > 0
    cache.clear(disk=True)
    assert cache.disk_nbytes == 0 and cache.lookup(KEY, hashes) == [None] * 10


def test_clone_pickle_and_parallel_grid_search_share_the_folder(blobs, tmp_path):
    X, y = blobs
    folder = str(tmp_path / "grid")
    fe = FeatureExtractor(TinyNet, random_state=0, cache=folder)
    assert clone(fe).cache == folder
    assert resolve_cache(pickle.loads(pickle.dumps(fe)).cache) is resolve_cache(folder)
    explicit = FeatureCache(max_bytes=1000, directory=Path(folder))
    restored = pickle.loads(pickle.dumps(explicit))
    assert (restored.directory, restored.max_bytes) == (explicit.directory, 1000)
    assert clone(FeatureExtractor(TinyNet, cache=explicit)).cache is explicit

    pipe = make_pipeline(FeatureExtractor(TinyNet, random_state=0, cache=folder),
                         LogisticRegression())
    GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=2, n_jobs=2).fit(X, y)
    # The workers stored every row on disk; the refit here read them all back.
    shared = resolve_cache(folder)
    assert (shared.disk_hits, shared.misses) == (len(X), 0)
    assert _shards(folder)


def test_joblib_memory_locates_the_cache(blobs, tmp_path):
    X, _ = blobs
    memory = joblib.Memory(tmp_path, verbose=0)
    _extract(X, memory)
    cache = resolve_cache(memory)
    assert cache.directory == str(tmp_path / "sktl-features")
    assert cache.misses == len(X) and _shards(tmp_path / "sktl-features")
    assert resolve_cache(joblib.Memory(None)) is None
    default = sktl.default_cache()
    before = (default.hits, default.misses)
    _extract(X, joblib.Memory(None, verbose=0))
    assert (default.hits, default.misses) == before


@pytest.mark.parametrize("value", [3, 1.5, ["path"], object()])
def test_invalid_cache_values_are_rejected(blobs, value):
    X, y = blobs
    for est in (FeatureExtractor(TinyNet, cache=value), TransferClassifier(TinyNet, cache=value)):
        with pytest.raises(InvalidParameterError, match="cache"):
            est.fit(X, y)
