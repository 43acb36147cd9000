"""Fashion-MNIST, read from the IDX files of the ``dataset-fashion-mnist``
Debian package."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ._base import _check_choice

__all__ = ["load_fashion_mnist"]

#: Environment variable that overrides the Fashion-MNIST folder.
FASHION_MNIST_ENV = "SKTL_FASHION_MNIST"
#: Folder where the Debian package ``dataset-fashion-mnist`` installs the files.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_PREFIX = {"train": "train", "test": "t10k"}

# IDX type codes -> numpy dtypes (multi-byte types are big-endian).
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an IDX file into an ndarray."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{source} is not an IDX file (bad magic number).")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{source}: unknown IDX data type 0x{code:02x}.")
    dtype = _IDX_DTYPES[code]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"{source}: truncated IDX header.")
    shape = tuple(
        int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    )
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(
            f"{source}: IDX header announces shape {shape} ({expected} bytes "
            f"of data) but the file holds {len(data) - offset}."
        )
    arr = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _read_idx(folder: Path, stem: str) -> np.ndarray:
    gz = folder / f"{stem}.gz"
    if gz.is_file():
        try:
            with gzip.open(gz, "rb") as f:
                data = f.read()
        except (OSError, EOFError) as exc:  # truncated or not gzip at all
            raise ValueError(
                f"{gz} is not a complete gzip file ({exc}); reinstall it with "
                "`apt-get install --reinstall -y dataset-fashion-mnist`.") from exc
        return _parse_idx(data, str(gz))
    raw = folder / stem
    return _parse_idx(raw.read_bytes(), str(raw))


def load_fashion_mnist(split="train", *, path=None):
    """Load Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017).

    70,000 grey 28x28 images of clothing in 10 classes (0 T-shirt/top,
    1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker,
    8 Bag, 9 Ankle boot): 60,000 for training and 10,000 for testing.
    The files are read from the IDX format (gzip or not) with numpy only.

    Parameters
    ----------
    split : {"train", "test"}, default="train"
        Which part to load.
    path : str or path-like, default=None
        Folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.
        When None, the environment variable ``SKTL_FASHION_MNIST`` is used if
        set, else ``/usr/share/datasets/fashion-mnist`` (Debian package
        ``dataset-fashion-mnist``).

    Returns
    -------
    X : ndarray of shape (n_samples, 28, 28), dtype uint8
        Images, 0 (background) .. 255.
    y : ndarray of shape (n_samples,), dtype int64
        Labels 0 .. 9.

    Raises
    ------
    ValueError
        Unknown ``split``, or a malformed file.
    FileNotFoundError
        The files are missing (install them with
        ``apt-get install -y dataset-fashion-mnist``).

    Examples
    --------
    >>> from sktl.datasets import load_fashion_mnist
    >>> X, y = load_fashion_mnist("test")  # doctest: +SKIP
    >>> X.shape, X.dtype, y.shape  # doctest: +SKIP
    ((10000, 28, 28), dtype('uint8'), (10000,))
    """
    _check_choice(split, tuple(_PREFIX), "Fashion-MNIST split")
    if path is None:
        path = os.environ.get(FASHION_MNIST_ENV) or DEFAULT_FASHION_MNIST_DIR
    folder = Path(os.path.expanduser(os.fspath(path)))
    prefix = _PREFIX[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    missing = [
        s
        for s in stems
        if not ((folder / f"{s}.gz").is_file() or (folder / s).is_file())
    ]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST file(s) {', '.join(m + '.gz' for m in missing)} not "
            f"found in {str(folder)!r}. Install them with "
            f"`apt-get install -y dataset-fashion-mnist` (files go to "
            f"{DEFAULT_FASHION_MNIST_DIR}), or set {FASHION_MNIST_ENV} / pass "
            f"path= to a folder that holds them."
        )
    X = _read_idx(folder, stems[0])
    y = _read_idx(folder, stems[1])
    if X.shape[1:] != (28, 28) or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(
            f"Fashion-MNIST files in {str(folder)!r} have the wrong shapes: "
            f"images {X.shape} (expected (n, 28, 28)), labels {y.shape} (expected (n,))."
        )
    if X.dtype != np.uint8 or y.dtype != np.uint8 or (y.size and y.max() > 9):
        raise ValueError(
            f"Fashion-MNIST files in {str(folder)!r} do not hold uint8 pixels and "
            f"labels 0..9 (images {X.dtype}, labels {y.dtype}"
            f"{f', up to {int(y.max())}' if y.size else ''})."
        )
    return X, y.astype(np.int64)
