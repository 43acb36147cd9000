"""Inputs larger than memory, read chunk by chunk.

A *stream* is an input that sktl never materialises: an iterator or
generator of samples (texts, image paths, PIL images, array rows), an
iterable without a length, a ``numpy.memmap``, or the path of a folder of
image files. ``transform``/``predict``/``predict_proba`` read it
``chunk_size`` samples at a time, run the in-memory code path on each chunk
(the same validation and batching as for a list or an array), and keep only
the outputs. Peak memory is then bounded by the chunk, the model and the
output, whatever the number of samples; :func:`transform_to_memmap` writes
the output to disk as well, for outputs that would not fit in memory either.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "default_chunk_size",
    "image_files",
    "is_dask_collection",
    "is_stream",
    "iter_chunks",
    "map_chunks",
    "stream_head",
    "transform_to_memmap",
]

#: File name endings read as images when a folder is passed as ``X``.
IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif",
                              ".tiff", ".webp"})
#: Samples per chunk of texts, paths and other Python objects.
OBJECT_CHUNK = 4096
#: Bytes per chunk of a memory-mapped array (rows are copied into memory).
ARRAY_CHUNK_BYTES = 64 << 20
#: At most this many rows per chunk, however narrow the rows.
MAX_CHUNK_ROWS = 65536


def is_dask_collection(X):
    """A dask array, dataframe, series or bag (checked without importing dask)."""
    return hasattr(X, "__dask_graph__") and callable(X.__dask_graph__)


def _is_folder(X):
    return isinstance(X, (str, os.PathLike)) and os.path.isdir(X)


def is_stream(X):
    """Whether ``X`` is read chunk by chunk rather than as a whole.

    True for a ``numpy.memmap``, an iterator or generator, an iterable with
    no length and no indexing (and no ``__array__``), and the path of a
    folder (read as the image files under it). Lists, tuples, arrays,
    pandas objects and array-likes stay on the in-memory path.
    """
    if isinstance(X, np.memmap):
        return X.ndim >= 1
    if _is_folder(X):
        return True
    if isinstance(X, (str, bytes, np.ndarray)) or hasattr(X, "__array__") \
            or is_dask_collection(X) or hasattr(X, "iloc"):
        return False
    if isinstance(X, Iterator):
        return True
    return isinstance(X, Iterable) and not hasattr(X, "__len__") \
        and not hasattr(X, "__getitem__")


def _one_shot(X):
    """An iterator: reading it consumes it (unlike memmaps and folders)."""
    return not isinstance(X, np.memmap) and not _is_folder(X) and isinstance(X, Iterator)


def image_files(folder):
    """The image files under ``folder``, in a fixed order.

    Sub-folders are walked depth first; names are sorted in each folder,
    so the order (the order of the rows of ``transform``/``predict``) is
    reproducible. Files whose name does not end with one of
    :data:`IMAGE_EXTENSIONS` (any case) are skipped.

    Parameters
    ----------
    folder : str or os.PathLike
        A folder of images, e.g. an ``ImageFolder`` layout (one sub-folder
        per class).

    Yields
    ------
    path : str
        Path of one image file.

    Raises
    ------
    NotADirectoryError
        If ``folder`` is not a folder.
    """
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"Not a folder: {os.fspath(folder)!s}")
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield os.path.join(root, name)


def default_chunk_size(X, batch_size=32):
    """Samples per chunk: a multiple of ``batch_size`` (so that arrays are
    batched exactly as on the in-memory path), about
    :data:`ARRAY_CHUNK_BYTES` of a memory-mapped array, else
    :data:`OBJECT_CHUNK` samples."""
    batch_size = max(int(batch_size), 1)
    if isinstance(X, np.ndarray) and X.ndim >= 1 and X.shape[0]:
        row = max(int(X.dtype.itemsize * np.prod(X.shape[1:], dtype=np.int64)), 1)
        rows = min(max(ARRAY_CHUNK_BYTES // row, 1), MAX_CHUNK_ROWS)
    else:
        rows = OBJECT_CHUNK
    return max(rows // batch_size, 1) * batch_size


def _release(X):
    """Drop the pages of a read-only or shared memmap from this process.

    Pages of a file mapping read once stay in the process's resident set
    (RSS) until the kernel needs them; giving them back after each chunk
    keeps the RSS of a pass over a large memmap flat. The data stays in
    the page cache; nothing is lost (``mode="c"`` copies are left alone).
    """
    mm = getattr(X, "_mmap", None)
    if mm is None or getattr(X, "mode", "c") == "c" or not hasattr(mm, "madvise") \
            or not hasattr(mmap, "MADV_DONTNEED"):
        return
    with contextlib.suppress(OSError, ValueError):
        mm.madvise(mmap.MADV_DONTNEED)


def iter_chunks(X, chunk_size=OBJECT_CHUNK):
    """Split ``X`` into in-memory chunks of at most ``chunk_size`` samples.

    Parameters
    ----------
    X : iterable, array, memmap or folder path
        A list, array or pandas object is sliced; a ``numpy.memmap`` is
        copied ``chunk_size`` rows at a time (its pages released after
        each chunk); an iterator or generator is read lazily, one chunk
        only when the previous one has been used; a folder path yields the
        paths of its image files (see :func:`image_files`).
    chunk_size : int, default=4096
        Samples per chunk.

    Yields
    ------
    chunk : list or ndarray
        Up to ``chunk_size`` consecutive samples, as a list (texts, paths,
        images) or an array (rows of an array).
    """
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
    if _is_folder(X):
        X = image_files(X)
    if isinstance(X, np.ndarray):
        for start in range(0, X.shape[0], chunk_size):
            chunk = np.array(X[start:start + chunk_size])
            if isinstance(X, np.memmap):
                _release(X)
            yield chunk
        return
    if hasattr(X, "iloc"):
        for start in range(0, len(X), chunk_size):
            yield X.iloc[start:start + chunk_size]
        return
    if hasattr(X, "__len__") and hasattr(X, "__getitem__") and not isinstance(X, str):
        for start in range(0, len(X), chunk_size):
            yield list(X[start:start + chunk_size])
        return
    iterator = iter(X)
    while True:
        chunk = list(itertools.islice(iterator, chunk_size))
        if not chunk:
            return
        yield chunk


def stream_head(X, n=1):
    """The first ``n`` samples of a stream, and the stream to read after.

    Memmaps and folders can be read again, so they are returned unchanged;
    an iterator is consumed, so the returned stream puts the head back in
    front of what is left.

    Returns
    -------
    head : list or ndarray
        At most ``n`` samples, in memory.
    X : stream
        The whole input, to read from its start.
    """
    if _one_shot(X):
        head = list(itertools.islice(X, n))
        return head, itertools.chain(head, X)
    return next(iter_chunks(X, n), []), X


def _stream_length(X):
    if isinstance(X, np.ndarray):
        return int(X.shape[0])
    hint = getattr(X, "__length_hint__", None)
    if callable(hint):
        with contextlib.suppress(TypeError):
            n = int(hint())
            return n if n > 0 else None
    return None


def map_chunks(func, X, *, chunk_size, progress=False, desc=None):
    """``func`` applied to each chunk of ``X``; the outputs concatenated.

    Parameters
    ----------
    func : callable
        Maps an in-memory chunk to an array with one row per sample (or a
        list with one entry per sample).
    X : stream
        See :func:`iter_chunks`.
    chunk_size : int
        Samples per chunk.
    progress : bool, default=False
        Show a progress bar counting samples (no total for a generator).
    desc : str, optional
        Label of the progress bar.

    Returns
    -------
    ndarray or list
        Rows of every chunk, in input order.

    Raises
    ------
    ValueError
        If ``X`` holds no sample.
    """
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=_stream_length(X), desc=desc, unit="sample")
    outputs = []
    try:
        for chunk in iter_chunks(X, chunk_size):
            outputs.append(func(chunk))
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if not outputs:
        raise ValueError("Found an empty input (0 samples); at least 1 is required.")
    if isinstance(outputs[0], list):
        return [row for out in outputs for row in out]
    return np.concatenate(outputs, axis=0)


# -- .npy files written row block by row block ------------------------------------
#: Bytes reserved for the .npy header, whatever the final number of rows.
_NPY_HEADER_BYTES = 256


def _npy_header(dtype, shape):
    body = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                 "fortran_order": False, "shape": tuple(shape)})
    prefix = b"\x93NUMPY\x01\x00"
    pad = _NPY_HEADER_BYTES - len(prefix) - 2 - len(body) - 1
    if pad < 0:
        raise ValueError(f"Output rows of shape {shape[1:]} are too wide for a .npy header.")
    text = (body + " " * pad + "\n").encode("latin1")
    return prefix + struct.pack("<H", len(text)) + text


def transform_to_memmap(estimator, X, filename, *, method="transform", chunk_size=None,
                        verbose=0):
    """Write ``estimator.method(X)`` to a ``.npy`` file, chunk by chunk.

    The input is read ``chunk_size`` samples at a time and each chunk's
    output is appended to the file, so neither the input nor the output
    is ever held in memory as a whole: this is the way to embed more
    samples than fit in memory. The result opens as a read-only memmap
    (and later with ``numpy.load(filename, mmap_mode="r")``).

    Parameters
    ----------
    estimator : fitted estimator
        Any fitted estimator or pipeline with ``method``, e.g. a
        :class:`~sktl.FeatureExtractor` or a classifier.
    X : iterable, array, memmap or folder path
        The inputs (see :func:`iter_chunks`): a generator of texts or image
        paths, a ``numpy.memmap``, a folder of images, or an in-memory
        list or array.
    filename : str or os.PathLike
        The ``.npy`` file to write (replaced if it exists).
    method : str, default="transform"
        The method to apply: ``"transform"``, ``"predict_proba"``,
        ``"decision_function"``, ``"predict"`` (numeric labels only).
    chunk_size : int, optional
        Samples per chunk; by default a multiple of the estimator's
        ``batch_size`` (4096 texts or paths, about 64 MiB of array rows).
    verbose : int, default=0
        ``1`` shows a progress bar counting samples.

    Returns
    -------
    numpy.memmap
        The output, one row per sample, opened read-only.

    Raises
    ------
    TypeError
        If the method returns non-numeric values (e.g. string labels).
    ValueError
        If ``X`` is empty, or chunks return rows of different shapes.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sktl import FeatureExtractor, transform_to_memmap
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 255, size=(10, 32, 32, 3), dtype=np.uint8)
    >>> fe = FeatureExtractor("resnet18", weights=None, random_state=0).fit(images[:1])
    >>> path = os.path.join(tempfile.mkdtemp(), "features.npy")
    >>> out = transform_to_memmap(fe, (image for image in images), path, chunk_size=4)
    >>> out.shape
    (10, 512)
    >>> np.allclose(out, fe.transform(images), atol=1e-5)
    True
    """
    func = getattr(estimator, method)
    if chunk_size is None:
        chunk_size = default_chunk_size(X, getattr(estimator, "batch_size", 32))
    bar = None
    if verbose:
        from tqdm.auto import tqdm

        bar = tqdm(total=_stream_length(X), desc=method, unit="sample")
    n, dtype, row_shape = 0, None, None
    try:
        with open(filename, "wb") as fh:
            fh.write(b"\0" * _NPY_HEADER_BYTES)
            for chunk in iter_chunks(X, chunk_size):
                out = np.asarray(func(chunk))
                if out.dtype.kind not in "biufc":
                    raise TypeError(
                        f"{type(estimator).__name__}.{method} returned {out.dtype} values "
                        "(Python objects or strings), which a .npy memmap of fixed width "
                        "cannot hold; use numeric outputs (e.g. predict_proba).")
                if dtype is None:
                    dtype, row_shape = out.dtype, out.shape[1:]
                elif out.shape[1:] != row_shape:
                    raise ValueError(f"Chunks returned rows of shapes {row_shape} and "
                                     f"{out.shape[1:]}.")
                fh.write(np.ascontiguousarray(out, dtype=dtype).tobytes())
                n += out.shape[0]
                if bar is not None:
                    bar.update(out.shape[0])
            if dtype is None:
                raise ValueError("Found an empty input (0 samples); at least 1 is required.")
            fh.seek(0)
            fh.write(_npy_header(dtype, (n, *row_shape)))
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(filename)
        raise
    finally:
        if bar is not None:
            bar.close()
    return np.load(filename, mmap_mode="r")
