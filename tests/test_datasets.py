"""Tests of sktl.datasets on the real data (no network needed)."""

import gzip
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sktl import datasets
from sktl.datasets import (
    ChecksumError,
    _base,
    get_data_home,
    load_fashion_mnist,
    load_mnist_usps,
    load_office_caltech,
    load_sentiment,
)

# The shared data folder: SKTL_DATA if set, else <project>/../shared/data.
DATA_HOME = Path(
    os.environ.get("SKTL_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
).resolve()
FASHION_DIR = Path(
    os.environ.get("SKTL_FASHION_MNIST") or "/usr/share/datasets/fashion-mnist"
)

needs_data = pytest.mark.skipif(
    not DATA_HOME.is_dir(),
    reason=f"shared benchmark data folder {DATA_HOME} does not exist "
    "(set SKTL_DATA to the folder holding SHA256SUMS)",
)
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not found in {FASHION_DIR} "
    "(apt-get install -y dataset-fashion-mnist)",
)

DSLR = "office_caltech10_surf/dslr_SURF_L10.mat"


@pytest.fixture(autouse=True)
def _fresh_checksum_cache():
    _base._clear_checksum_cache()
    yield
    _base._clear_checksum_cache()


def _copy_into(tmp_home, relpath):
    dst = tmp_home.joinpath(*relpath.split("/"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA_HOME / relpath, dst)
    return dst


# --------------------------------------------------------------------------
# data_home resolution


def test_get_data_home_argument(tmp_path):
    assert get_data_home(tmp_path) == tmp_path.absolute()
    assert get_data_home(str(tmp_path)) == tmp_path.absolute()


def test_get_data_home_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SKTL_DATA", str(tmp_path / "from_env"))
    assert get_data_home() == (tmp_path / "from_env").absolute()
    # An explicit argument wins over the environment variable.
    assert get_data_home(tmp_path / "arg") == (tmp_path / "arg").absolute()


def test_get_data_home_env_relative(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKTL_DATA", "rel/data")
    home = get_data_home()
    assert home.is_absolute()
    assert home == (tmp_path / "rel" / "data").absolute()


def test_get_data_home_default(monkeypatch, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.delenv("SKTL_DATA", raising=False)
    home = get_data_home()
    assert home.is_absolute()
    assert home == (tmp_path / "shared" / "data").absolute()
    # An empty variable counts as unset.
    monkeypatch.setenv("SKTL_DATA", "")
    assert get_data_home() == home


def test_checksums_match_shipped_sha256sums():
    sums = DATA_HOME / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip(f"{sums} does not exist")
    listed = {}
    for line in sums.read_text().splitlines():
        digest, name = line.split()
        listed[name.removeprefix("./")] = digest
    assert listed == _base.CHECKSUMS
    assert set(_base.URLS) == set(_base.CHECKSUMS)


# --------------------------------------------------------------------------
# sentiment


@needs_data
@pytest.mark.parametrize(
    "name, split, n, n_classes",
    [
        ("sst2", "train", 6920, 2),
        ("sst2", "dev", 872, 2),
        ("sst2", "test", 1821, 2),
        ("sst5", "train", 8544, 5),
        ("sst5", "dev", 1101, 5),
        ("sst5", "test", 2210, 5),
        ("cr", "all", 3775, 2),
        ("imdb", "all", 2000, 2),
    ],
)
def test_load_sentiment_sizes(name, split, n, n_classes):
    texts, y = load_sentiment(name, split, data_home=DATA_HOME)
    assert isinstance(texts, list) and len(texts) == n
    assert all(isinstance(t, str) and t == t.strip() for t in texts)
    # CR has 4 label-only lines (empty sentences), kept to match its 3775.
    assert sum(t == "" for t in texts) == (4 if name == "cr" else 0)
    assert isinstance(y, np.ndarray) and y.dtype == np.int64 and y.shape == (n,)
    assert set(np.unique(y)) == set(range(n_classes))


@needs_data
def test_load_sentiment_defaults_and_content():
    texts, y = load_sentiment("SST2", data_home=DATA_HOME)  # default: train
    assert len(texts) == 6920
    assert texts[0].startswith("a stirring , funny and finally transporting")
    assert y[0] == 1
    texts, _ = load_sentiment("cr", data_home=DATA_HOME)  # default: all
    assert len(texts) == 3775
    texts, y = load_sentiment("imdb", data_home=DATA_HOME)
    assert texts[0].startswith("This movie captures the essence")
    assert np.bincount(y).tolist() == [1000, 1000]
    # Accented words are decoded correctly (the files hold UTF-8 bytes).
    dev, _ = load_sentiment("sst2", "dev", data_home=DATA_HOME)
    assert any("amélie" in t for t in dev)
    assert not any("Ã" in t for t in dev)


@needs_data
def test_load_sentiment_bunch():
    bunch = load_sentiment("sst5", "dev", data_home=DATA_HOME, return_X_y=False)
    assert len(bunch.data) == 1101 and bunch.target.shape == (1101,)
    assert len(bunch.target_names) == 5
    assert bunch["filename"].endswith("stsa.fine.dev")


def test_load_sentiment_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="'sst2'.*'sst5'.*'cr'.*'imdb'"):
        load_sentiment("yelp", data_home=tmp_path)
    with pytest.raises(ValueError, match="valid splits are: 'all'"):
        load_sentiment("cr", "train", data_home=tmp_path)
    with pytest.raises(ValueError, match="valid splits are: 'all'"):
        load_sentiment("imdb", "test", data_home=tmp_path)
    with pytest.raises(ValueError, match="'train', 'dev', 'test'"):
        load_sentiment("sst2", "all", data_home=tmp_path)


# --------------------------------------------------------------------------
# Office-Caltech10 and MNIST vs USPS


@needs_data
@pytest.mark.parametrize(
    "domain, alias, n",
    [
        ("amazon", "A", 958),
        ("caltech", "c", 1123),
        ("dslr", "D", 157),
        ("webcam", "w", 295),
    ],
)
def test_load_office_caltech(domain, alias, n):
    X, y = load_office_caltech(domain, data_home=DATA_HOME)
    assert X.shape == (n, 800) and X.dtype == np.float64
    assert y.shape == (n,) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))
    np.testing.assert_allclose(X.mean(axis=0), 0.0, atol=1e-10)
    std = X.std(axis=0)
    assert np.all(np.isclose(std, 1.0) | np.isclose(std, 0.0))
    assert np.isclose(std, 1.0).sum() > 700
    X2, y2 = load_office_caltech(alias, data_home=DATA_HOME)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)


@needs_data
def test_load_office_caltech_raw():
    X, y = load_office_caltech("dslr", data_home=DATA_HOME, preprocess=False)
    assert X.dtype == np.float64 and X.shape == (157, 800)
    assert np.all(X >= 0) and np.array_equal(X, np.round(X))
    assert y.min() == 0 and y.max() == 9
    # preprocess=True is exactly L1 row normalisation then z-scoring.
    P = X / X.sum(axis=1, keepdims=True)
    std = P.std(axis=0)
    std[std == 0] = 1
    Z, _ = load_office_caltech("dslr", data_home=DATA_HOME)
    np.testing.assert_allclose(Z, (P - P.mean(axis=0)) / std)


def test_load_office_caltech_bad_domain(tmp_path):
    with pytest.raises(ValueError, match="'amazon', 'caltech', 'dslr', 'webcam'"):
        load_office_caltech("imagenet", data_home=tmp_path)


@needs_data
def test_load_mnist_usps():
    Xs, ys, Xt, yt = load_mnist_usps(data_home=DATA_HOME)
    assert Xs.shape == (2000, 256) and Xt.shape == (1800, 256)
    assert ys.shape == (2000,) and yt.shape == (1800,)
    assert Xs.dtype == Xt.dtype == np.float64
    assert ys.dtype == yt.dtype == np.int64
    assert set(np.unique(ys)) == set(np.unique(yt)) == set(range(10))
    np.testing.assert_allclose(np.linalg.norm(Xs, axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(Xt, axis=1), 1.0)
    # Raw pixels are in [0, 1]; normalisation only rescales the rows.
    Rs, rys, Rt, _ = load_mnist_usps(data_home=DATA_HOME, normalize=False)
    assert Rs.min() >= 0 and Rs.max() <= 1 and Rt.min() >= 0 and Rt.max() <= 1
    np.testing.assert_allclose(Rs / np.linalg.norm(Rs, axis=1, keepdims=True), Xs)
    np.testing.assert_array_equal(rys, ys)
    # Published JDA baseline: 1-NN MNIST -> USPS on unit-norm samples, 65.94 %.
    d = (Xt**2).sum(1)[:, None] - 2 * Xt @ Xs.T + (Xs**2).sum(1)[None, :]
    assert round(100 * np.mean(ys[d.argmin(axis=1)] == yt), 2) == 65.94


# --------------------------------------------------------------------------
# checksums, missing files, download


@needs_data
def test_checksum_mismatch_detected(tmp_path):
    path = _copy_into(tmp_path, DSLR)
    load_office_caltech("dslr", data_home=tmp_path)  # intact copy loads
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # new mtime
    with pytest.raises(ChecksumError) as info:
        load_office_caltech("dslr", data_home=tmp_path)
    msg = str(info.value)
    assert str(path) in msg
    assert _base.CHECKSUMS[DSLR] in msg
    assert _base._sha256(path) in msg
    assert "SKTL_DATA" in msg and "download" in msg
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)


@needs_data
def test_checksum_mismatch_sentiment(tmp_path):
    rel = "sentiment/sst2/stsa.binary.dev"
    path = _copy_into(tmp_path, rel)
    with open(path, "ab") as f:
        f.write(b"1 an extra line\n")
    with pytest.raises(ChecksumError, match="stsa.binary.dev"):
        load_sentiment("sst2", "dev", data_home=tmp_path)


@needs_data
def test_checksum_cached(tmp_path, monkeypatch):
    _copy_into(tmp_path, DSLR)
    calls = []
    real = _base._sha256
    monkeypatch.setattr(_base, "_sha256", lambda p: calls.append(p) or real(p))
    load_office_caltech("dslr", data_home=tmp_path)
    load_office_caltech("dslr", data_home=tmp_path, preprocess=False)
    assert len(calls) == 1
    # Touching the file invalidates the cache entry.
    os.utime(tmp_path / DSLR, ns=(2_000_000_000, 2_000_000_000))
    load_office_caltech("dslr", data_home=tmp_path)
    assert len(calls) == 2


def test_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_office_caltech("webcam", data_home=tmp_path)
    msg = str(info.value)
    expected = tmp_path / "office_caltech10_surf" / "webcam_SURF_L10.mat"
    assert str(expected.absolute()) in msg
    assert "SKTL_DATA" in msg and "download_if_missing=True" in msg
    with pytest.raises(FileNotFoundError, match="download_if_missing=True"):
        load_mnist_usps(data_home=tmp_path)
    with pytest.raises(FileNotFoundError, match="stsa.fine.test"):
        load_sentiment("sst5", "test", data_home=tmp_path)


def test_missing_file_uses_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SKTL_DATA", str(tmp_path / "env_home"))
    with pytest.raises(FileNotFoundError, match="env_home"):
        load_sentiment("cr")


@needs_data
def test_download_verifies_then_moves(tmp_path, monkeypatch):
    rel = "sentiment/sst2/stsa.binary.dev"
    content = (DATA_HOME / rel).read_bytes()
    urls = []

    def fake_open(url, timeout):
        urls.append(url)
        return io.BytesIO(content)

    monkeypatch.setattr(_base, "_open_url", fake_open)
    texts, y = load_sentiment(
        "sst2", "dev", data_home=tmp_path, download_if_missing=True
    )
    assert len(texts) == 872 and y.shape == (872,)
    assert urls == list(_base.URLS[rel])
    assert urls[0].startswith("https://raw.githubusercontent.com/harvardnlp/")
    target = tmp_path / "sentiment" / "sst2" / "stsa.binary.dev"
    assert target.read_bytes() == content
    assert sorted(p.name for p in target.parent.iterdir()) == ["stsa.binary.dev"]


def test_download_corrupt_is_not_kept(tmp_path, monkeypatch):
    calls = []

    def fake_open(url, timeout):
        calls.append(url)
        return io.BytesIO(b"not the right bytes")

    monkeypatch.setattr(_base, "_open_url", fake_open)
    with pytest.raises(OSError, match="does not match expected"):
        load_office_caltech("amazon", data_home=tmp_path, download_if_missing=True)
    assert len(calls) == len(_base.URLS["office_caltech10_surf/amazon_SURF_L10.mat"])
    folder = tmp_path / "office_caltech10_surf"
    assert list(folder.iterdir()) == []  # neither the file nor a temp file


def test_download_network_error(tmp_path, monkeypatch):
    def fake_open(url, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(_base, "_open_url", fake_open)
    with pytest.raises(OSError, match="network unreachable"):
        load_mnist_usps(data_home=tmp_path, download_if_missing=True)
    assert list((tmp_path / "digits").iterdir()) == []


def test_a_cut_download_tries_the_next_mirror(tmp_path, monkeypatch):
    import http.client

    rel = "office_caltech10_surf/amazon_SURF_L10.mat"
    calls = []

    class Cut(io.BytesIO):
        def read(self, *args):
            raise http.client.IncompleteRead(b"abc", 7)

    def fake_open(url, timeout):
        calls.append(url)
        return Cut()

    monkeypatch.setattr(_base, "_open_url", fake_open)
    with pytest.raises(OSError, match="IncompleteRead") as info:
        load_office_caltech("amazon", data_home=tmp_path, download_if_missing=True)
    assert len(_base.URLS[rel]) > 1 and calls == list(_base.URLS[rel])  # every mirror tried
    assert "SKTL_DATA" in str(info.value)
    assert list((tmp_path / "office_caltech10_surf").iterdir()) == []


def test_download_without_url(tmp_path, monkeypatch):
    monkeypatch.setitem(_base.URLS, "sentiment/cr/custrev.all", ())
    with pytest.raises(OSError, match="No public download location"):
        load_sentiment("cr", data_home=tmp_path, download_if_missing=True)


# --------------------------------------------------------------------------
# Fashion-MNIST


@needs_fashion
def test_load_fashion_mnist():
    X, y = load_fashion_mnist("train", path=FASHION_DIR)
    assert X.shape == (60000, 28, 28) and X.dtype == np.uint8
    assert y.shape == (60000,) and y.dtype == np.int64
    assert np.bincount(y).tolist() == [6000] * 10
    Xt, yt = load_fashion_mnist("test")
    assert Xt.shape == (10000, 28, 28) and yt.shape == (10000,)
    assert np.bincount(yt).tolist() == [1000] * 10
    assert X.max() == 255 and X.min() == 0


def _write_idx(path, arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_load_fashion_mnist_env_and_parser(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    monkeypatch.setenv("SKTL_FASHION_MNIST", str(tmp_path))
    X, y = load_fashion_mnist("test")
    np.testing.assert_array_equal(X, images)
    np.testing.assert_array_equal(y, labels)
    assert X.dtype == np.uint8 and y.dtype == np.int64
    # Truncated data is rejected.
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + np.asarray([5], ">u4").tobytes() + b"\x01")
    with pytest.raises(ValueError, match="IDX header"):
        load_fashion_mnist("test")
    # Labels beyond the ten classes, a wrong image shape, a cut gzip file.
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([3, 1, 42, 1, 5]))
    with pytest.raises(ValueError, match="labels 0..9"):
        load_fashion_mnist("test")
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:, :27])
    with pytest.raises(ValueError, match=r"expected \(n, 28, 28\)"):
        load_fashion_mnist("test")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    data = (tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a complete gzip file"):
        load_fashion_mnist("test")


def test_load_fashion_mnist_missing(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"
    ):
        load_fashion_mnist("train", path=tmp_path)


def test_load_fashion_mnist_bad_split():
    with pytest.raises(ValueError, match="'train', 'test'"):
        load_fashion_mnist("valid")


def test_public_api():
    for name in datasets.__all__:
        assert getattr(datasets, name).__doc__
