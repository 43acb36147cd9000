"""Imbalanced classes: SST-2 subsampled to 10:1 positive:negative, with and without class_weight="balanced" (MiniLM).

Data: SST-2 (``load_sentiment("sst2")``). Training set: 2000 positive and
200 negative sentences drawn from the training file (``RandomState(seed)``,
without replacement), for 3 seeds; test set: the full, balanced SST-2 test
file (1821 sentences). Score: balanced accuracy (the mean of the per-class
recalls, %), which a classifier that answers "positive" everywhere gets 50
for.

Settings, side by side on the same draws, each with and without
``class_weight="balanced"`` (``n_samples / (n_classes * count)``: a negative
sentence weighs 10 times a positive one in the loss):

* frozen head: ``TransferClassifier(all-MiniLM-L6-v2, unfreeze=0, lr=1e-3,
  max_epochs=20, batch_size=64)``, the encoder's features computed once
  through the feature cache, a linear head trained on them;
* partial fine-tune: ``unfreeze=2`` (the top two of six layers), ``lr=1e-3``,
  ``backbone_lr=5e-5``, ``max_epochs=2``, ``batch_size=32``, the frozen
  layers run once per sentence (through the cache).

Hyperparameters fixed in advance (common values), the same with and
without weights; nothing was tuned on the test set.

JSON keys: ``balanced_acc_unweighted``, ``balanced_acc_weighted`` (frozen
head; target: weighted higher by >= 5 points), ``balanced_acc_unweighted_finetune``,
``balanced_acc_weighted_finetune`` (``unfreeze=2``), ``*_runs`` (per seed),
``gain`` / ``gain_finetune`` (weighted minus unweighted), fit seconds.
"""

from __future__ import annotations

import time

import numpy as np
from _harness import sst2_pool_and_test

SIZES = {False: {"n_pos": 2000, "n_neg": 200, "seeds": 3, "n_test": None, "epochs_ft": 2},
         True: {"n_pos": 200, "n_neg": 20, "seeds": 1, "n_test": 200, "epochs_ft": 1}}
SETTINGS = {
    "": {"unfreeze": 0, "lr": 1e-3, "max_epochs": 20, "batch_size": 64},
    "_finetune": {"unfreeze": 2, "lr": 1e-3, "backbone_lr": 5e-5, "batch_size": 32},
}


def draw(y, n_pos, n_neg, seed):
    rng = np.random.RandomState(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == 1), n_pos, replace=False),
                           rng.choice(np.flatnonzero(y == 0), n_neg, replace=False)])


def run(quick: bool) -> dict:
    from sklearn.metrics import balanced_accuracy_score

    from sktl import FeatureCache, TransferClassifier

    size = SIZES[bool(quick)]
    X_pool, y_pool, X_test, y_test, encoder = sst2_pool_and_test(size["n_test"])
    cache = FeatureCache(max_bytes=4 << 30)  # frozen outputs shared by both arms
    runs = {f"{arm}{s}": [] for s in SETTINGS for arm in ("unweighted", "weighted")}
    seconds = dict.fromkeys(runs, 0.0)
    for seed in range(size["seeds"]):
        idx = draw(y_pool, size["n_pos"], size["n_neg"], seed)
        X, y = [X_pool[i] for i in idx], y_pool[idx]
        for suffix, params in SETTINGS.items():
            params = dict(params)
            if suffix:
                params["max_epochs"] = size["epochs_ft"]
            for arm, weight in (("unweighted", None), ("weighted", "balanced")):
                clf = TransferClassifier(encoder, class_weight=weight, cache=cache,
                                         random_state=seed, **params)
                start = time.perf_counter()
                clf.fit(X, y)
                seconds[arm + suffix] += time.perf_counter() - start
                score = balanced_accuracy_score(y_test, clf.predict(X_test))
                runs[arm + suffix].append(100.0 * score)
    result = {f"balanced_acc_{name}": float(np.mean(v)) for name, v in runs.items()}
    result.update({f"balanced_acc_{name}_runs": [float(x) for x in v]
                   for name, v in runs.items()})
    result["gain"] = result["balanced_acc_weighted"] - result["balanced_acc_unweighted"]
    result["gain_finetune"] = (result["balanced_acc_weighted_finetune"]
                               - result["balanced_acc_unweighted_finetune"])
    result["target_met"] = bool(result["gain"] >= 5)
    result.update({"fit_seconds": seconds, "seeds": size["seeds"], "n_pos": size["n_pos"],
                   "n_neg": size["n_neg"], "n_test": len(y_test), "quick": bool(quick)})
    return result


def table(result):
    rows = []
    for suffix, name in (("", "frozen head (unfreeze=0)"), ("_finetune", "unfreeze=2")):
        unweighted = result[f"balanced_acc_unweighted{suffix}"]
        weighted = result[f"balanced_acc_weighted{suffix}"]
        rows.append((name, unweighted, weighted, weighted - unweighted))
    return ("setting", "unweighted %", "class_weight='balanced' %", "gain"), rows
