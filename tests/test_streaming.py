"""Inputs larger than memory: generators, memmaps and folders of images are
read chunk by chunk, with the same results as the in-memory inputs."""

import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from torch import nn

import sktl._streaming as streaming
from sktl import (
    DistillationClassifier,
    FeatureExtractor,
    SubdomainEnsembleClassifier,
    TransferClassifier,
    TransferRegressor,
    iter_chunks,
    transform_to_memmap,
)
from sktl._streaming import image_files, is_stream


def _mlp(width=16):
    return nn.Sequential(nn.Linear(5, width), nn.ReLU())


def _memmap(tmp_path, X):
    path = tmp_path / "X.npy"
    np.save(path, X)
    return np.load(path, mmap_mode="r")


def test_is_stream():
    assert is_stream(iter([1, 2])) and is_stream(x for x in "ab")
    assert is_stream(map(str, range(3)))
    for in_memory in ([1], ("a",), np.zeros(3), "text", range(3)):
        assert not is_stream(in_memory)


def test_iter_chunks_of_every_kind(tmp_path):
    X = np.arange(10).reshape(5, 2)
    assert [c.tolist() for c in iter_chunks(X, 2)] == [[[0, 1], [2, 3]], [[4, 5], [6, 7]],
                                                       [[8, 9]]]
    assert list(iter_chunks((i for i in range(5)), 2)) == [[0, 1], [2, 3], [4]]
    mm = _memmap(tmp_path, X)
    chunks = list(iter_chunks(mm, 4))
    assert not isinstance(chunks[0], np.memmap)  # copied into memory
    assert_array_equal(np.concatenate(chunks), X)
    with pytest.raises(ValueError, match="chunk_size"):
        next(iter_chunks([1], 0))


def test_generator_of_texts_equals_list(minilm_dir):
    texts = [f"sample {i}: {'a fine' if i % 2 else 'an awful'} film" + "!" * (i % 7)
             for i in range(24)]
    fe = FeatureExtractor(minilm_dir, batch_size=8, cache=False).fit(texts[:1])
    expected = fe.transform(texts)
    assert_allclose(fe.transform(t for t in texts), expected, atol=1e-5)
    # fit_transform reads the generator once, its first text included.
    assert_allclose(FeatureExtractor(minilm_dir, batch_size=8, cache=False)
                    .fit_transform(t for t in texts), expected, atol=1e-5)


def test_generator_is_read_lazily(monkeypatch, blobs):
    X, _ = blobs
    monkeypatch.setattr(streaming, "OBJECT_CHUNK", 32)
    pulled, seen = [], []

    def rows():
        for i, row in enumerate(np.tile(X, (3, 1))):  # 360 rows
            pulled.append(i)
            yield row

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(5, 4)

        def forward(self, x):
            seen.append(len(pulled))
            return self.linear(x)

    fe = FeatureExtractor(Probe(), batch_size=8, cache=False).fit(X)
    expected = np.tile(fe.transform(X), (3, 1))
    seen.clear()
    out = fe.transform(rows())
    assert out.shape == (360, 4)
    assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    # Batch b ran when at most the chunk it belongs to had been read.
    assert len(seen) == 360 // 8
    for b, n_pulled in enumerate(seen):
        assert n_pulled <= (b // 4 + 1) * 32


def test_memmap_equals_array(tmp_path, blobs):
    X, y = blobs
    mm = _memmap(tmp_path, X)
    fe = FeatureExtractor(_mlp(), random_state=0, batch_size=16, cache=False).fit(mm)
    assert_array_equal(fe.transform(mm), fe.transform(X))
    clf = TransferClassifier(_mlp(), unfreeze="all", max_epochs=3, random_state=0).fit(X, y)
    assert_array_equal(clf.predict_proba(mm), clf.predict_proba(X))
    assert clf.score(mm, y) == clf.score(X, y)


def test_image_memmap_and_folder_of_pngs(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    images = rng.randint(0, 255, size=(7, 32, 32, 3), dtype=np.uint8)
    folder = tmp_path / "images"
    for i, image in enumerate(images):  # nested, names sorting as the rows
        sub = folder / ("a" if i < 4 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(sub / f"{i:03d}.png")
    (folder / "notes.txt").write_text("not an image")
    assert [p[-7:] for p in image_files(folder)] == [f"{i:03d}.png" for i in range(7)]
    fe = FeatureExtractor("resnet18", weights=None, random_state=0, batch_size=4,
                          cache=False).fit(images)
    expected = fe.transform(images)
    assert_allclose(fe.transform(str(folder)), expected, rtol=1e-5, atol=1e-5)
    assert_allclose(fe.transform(folder), expected, rtol=1e-5, atol=1e-5)  # a Path
    assert_array_equal(fe.transform(_memmap(tmp_path, images)), expected)
    y = np.array([0, 1] * 3 + [0])
    clf = TransferClassifier("resnet18", weights=None, random_state=0, max_epochs=1,
                             batch_size=4).fit(images, y)
    assert_allclose(clf.predict_proba(folder), clf.predict_proba(images), rtol=1e-5,
                    atol=1e-6)


def test_every_estimator_predicts_from_a_generator(blobs):
    X, y = blobs
    fast = {"unfreeze": "all", "max_epochs": 3, "random_state": 0}
    clf = TransferClassifier(_mlp(), **fast).fit(X, y)
    reg = TransferRegressor(_mlp(), **fast).fit(X, X[:, 0])
    distil = DistillationClassifier(clf, TransferClassifier(_mlp(), **fast)).fit(X, y)
    ensemble = SubdomainEnsembleClassifier(LogisticRegression(max_iter=500),
                                           random_state=0).fit(X, y, groups=np.arange(120) % 2)
    pipe = make_pipeline(FeatureExtractor(_mlp(), random_state=0),
                         LogisticRegression(max_iter=500)).fit(X, y)
    for est in (clf, distil, ensemble, pipe):
        assert_allclose(est.predict_proba(iter(X)), est.predict_proba(X), rtol=1e-6,
                        atol=1e-7)
        assert_array_equal(est.predict(row for row in X), est.predict(X))
    assert_allclose(reg.predict(iter(X)), reg.predict(X), rtol=1e-6)
    assert_allclose(clf.decision_function(iter(X)), clf.decision_function(X), rtol=1e-6)


def _peak_bytes(run):
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(streaming, "OBJECT_CHUNK", 256)
    fe = FeatureExtractor(_mlp(64), random_state=0, batch_size=64, cache=False)
    fe.fit(np.zeros((1, 5), dtype=np.float32))

    def rows(n):
        rng = np.random.RandomState(0)
        for _ in range(n):
            yield rng.normal(size=5).astype(np.float32)

    def run(n):
        out = transform_to_memmap(fe, rows(n), tmp_path / f"f{n}.npy")
        assert out.shape == (n, 64)

    small, large = _peak_bytes(lambda: run(2_000)), _peak_bytes(lambda: run(20_000))
    # The 20,000 rows' features alone take 5 MiB; the peak stays near the
    # small run's (a chunk and its output).
    assert large < 1.5 * small + 256 * 1024, (small, large)
    assert large < 20_000 * 64 * 4 / 4


def test_transform_to_memmap(tmp_path, blobs):
    X, y = blobs
    clf = TransferClassifier(_mlp(), unfreeze="all", max_epochs=2, random_state=0).fit(X, y)
    out = transform_to_memmap(clf, iter(X), tmp_path / "proba.npy", method="predict_proba",
                              chunk_size=25)
    assert isinstance(out, np.memmap) and out.shape == (120, 3)
    assert_allclose(out, clf.predict_proba(X), rtol=1e-6, atol=1e-7)
    assert_allclose(np.load(tmp_path / "proba.npy"), out)
    strings = TransferClassifier(_mlp(), max_epochs=1, random_state=0).fit(
        X, np.array(["a", "b", "c"])[y])
    with pytest.raises(TypeError, match="strings"):
        transform_to_memmap(strings, X, tmp_path / "labels.npy", method="predict")
    assert not (tmp_path / "labels.npy").exists()
    with pytest.raises(ValueError, match="empty"):
        transform_to_memmap(clf, iter([]), tmp_path / "empty.npy", method="predict")
