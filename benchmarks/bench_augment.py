"""Train-time augmentation: Fashion-MNIST classes 0-4 -> 5-9 with 5 labels per class, ResNet-18, with and without flips and crops.

Data (``load_fashion_mnist``): a source of 2000 training images of classes
0-4; per seed, 5 training images of each target class 5-9
(``RandomState(seed)``); the first 1000 test images of classes 5-9.

Source model: ``TransferClassifier("resnet18", weights=None,
unfreeze="all", max_epochs=2, lr=3e-3, backbone_lr=3e-3, batch_size=64,
random_state=0)`` fitted on the source (as in the integration test). Target
models: ``TransferClassifier(source, unfreeze=1, max_epochs=30, lr=1e-2,
random_state=seed)``, with ``augment=None`` (the frozen blocks run once per
image, through the feature cache, and the top block trains on their
outputs) and with ``augment=FlipCrop()``: each image of a training batch
flipped horizontally with probability 1/2 and cropped at a random offset of
up to 3 pixels (28x28 images, zero-padded by 3), applied before the
backbone's normalisation; augmented images change what the frozen blocks
output, so that fit runs every batch through the whole network. 3 seeds.

JSON keys: ``acc_plain``, ``acc_augmented`` (mean target test accuracy, %;
target: augmented higher), ``*_runs`` (per seed), ``epoch_time_ratio``
(median duration of one augmented epoch, which runs through the frozen
blocks, over that of one plain epoch, which trains on their stored
outputs; skorch's per-epoch ``dur``), ``epoch_seconds``, fit seconds (the
plain fit's include computing the frozen outputs once).
"""

from __future__ import annotations

import time

import numpy as np
import torch

SIZES = {False: {"n_source": 2000, "per_class": 5, "n_test": 1000, "seeds": 3, "epochs": 30,
                 "source_epochs": 2},
         True: {"n_source": 300, "per_class": 5, "n_test": 200, "seeds": 1, "epochs": 3,
                "source_epochs": 1}}


class FlipCrop:
    """Random horizontal flip and random crop (padding 3), per image."""

    def __init__(self, pad=3):
        self.pad = pad

    def __call__(self, batch):
        n, _, h, w = batch.shape
        flip = torch.rand(n) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        padded = torch.nn.functional.pad(batch, [self.pad] * 4)
        dy = torch.randint(0, 2 * self.pad + 1, (n,))
        dx = torch.randint(0, 2 * self.pad + 1, (n,))
        return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def run(quick: bool) -> dict:
    from sktl import FeatureCache, TransferClassifier
    from sktl.datasets import load_fashion_mnist

    size = SIZES[bool(quick)]
    X, y = load_fashion_mnist("train")
    X_test, y_test = load_fashion_mnist("test")
    rng = np.random.RandomState(0)
    source_idx = rng.choice(np.flatnonzero(y < 5), size["n_source"], replace=False)
    test_idx = np.flatnonzero(y_test >= 5)[: size["n_test"]]
    X_test, y_test = X_test[test_idx], y_test[test_idx]
    source = TransferClassifier("resnet18", weights=None, unfreeze="all",
                                max_epochs=size["source_epochs"], lr=3e-3, backbone_lr=3e-3,
                                batch_size=64, random_state=0).fit(X[source_idx], y[source_idx])
    runs = {"plain": [], "augmented": []}
    seconds = {"plain": [], "augmented": []}
    epochs = {"plain": [], "augmented": []}  # skorch's per-epoch durations
    for seed in range(size["seeds"]):
        draw = np.random.RandomState(seed)
        few = np.concatenate([draw.choice(np.flatnonzero(y == c), size["per_class"],
                                          replace=False) for c in range(5, 10)])
        for name, augment in (("plain", None), ("augmented", FlipCrop())):
            clf = TransferClassifier(source, unfreeze=1, max_epochs=size["epochs"], lr=1e-2,
                                     augment=augment, cache=FeatureCache(),
                                     random_state=seed)
            start = time.perf_counter()
            clf.fit(X[few], y[few])
            seconds[name].append(time.perf_counter() - start)
            epochs[name] += list(clf.history_[:, "dur"])
            runs[name].append(100.0 * clf.score(X_test, y_test))
    per_epoch = {k: float(np.median(v)) for k, v in epochs.items()}
    return {"acc_plain": float(np.mean(runs["plain"])),
            "acc_augmented": float(np.mean(runs["augmented"])),
            "acc_plain_runs": [float(r) for r in runs["plain"]],
            "acc_augmented_runs": [float(r) for r in runs["augmented"]],
            "epoch_time_ratio": float(per_epoch["augmented"] / per_epoch["plain"]),
            "epoch_seconds": per_epoch,
            "target_met": bool(np.mean(runs["augmented"]) > np.mean(runs["plain"])),
            "fit_seconds": {k: [float(s) for s in v] for k, v in seconds.items()},
            "seeds": size["seeds"], "epochs": size["epochs"], "quick": bool(quick)}


def table(result):
    rows = [("plain (frozen block outputs cached)", result["acc_plain"]),
            ("augmented (flips, crops)", result["acc_augmented"]),
            ("epoch time, augmented / plain", result["epoch_time_ratio"])]
    return ("arm", "value"), rows
