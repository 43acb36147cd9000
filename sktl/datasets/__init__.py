"""Loaders for the real benchmark data sets used by sktl.

Files are looked up under a data folder (see :func:`get_data_home`: the
``data_home`` argument, else the ``SKTL_DATA`` environment variable, else
``../shared/data``) and their SHA-256 is verified on first use in a process.
Missing files can be downloaded from public sources with
``download_if_missing=True``.

Fashion-MNIST is read from the Debian package ``dataset-fashion-mnist``.
"""

from ._base import Bunch, ChecksumError, get_data_home
from ._domain import load_mnist_usps, load_office_caltech
from ._fashion_mnist import load_fashion_mnist
from ._scenes import make_fashion_scenes
from ._sentiment import load_sentiment

__all__ = [
    "Bunch",
    "ChecksumError",
    "get_data_home",
    "load_fashion_mnist",
    "load_mnist_usps",
    "load_office_caltech",
    "load_sentiment",
    "make_fashion_scenes",
]
