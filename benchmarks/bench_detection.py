"""Object-detector transfer from day to night scenes (SSDlite, mAP@0.5).

Data: :func:`sktl.datasets.make_fashion_scenes`, 96x96 canvases with one to
three real Fashion-MNIST items (24 to 40 pixels) of three classes (trouser,
sneaker, bag), in two environments: "day" (dark items on light, clean
backgrounds) and "night" (faint items on dark, noisy backgrounds). Day and
night training scenes take their items from the Fashion-MNIST training
split; the test scenes from its test split.

Protocol (hyperparameters fixed before the first full run):

1. **Day detector** ("pretrain on the source"): ``TransferDetector(
   "ssdlite320_mobilenet_v3_large", weights=None, unfreeze="all",
   min_size=96)`` trained on ``n_day`` day scenes. torchvision's COCO
   weights cannot be downloaded here, so the day detector is trained from
   random weights; it plays the part of the pretrained model.
2. **Few labelled night scenes**: ``n_night`` scenes, drawn ``n_draws``
   times (different seeds); every figure is the mean over the draws.
3. Three detectors per draw, each ``night_epochs`` epochs on those scenes:

   * ``scratch``: the same architecture from random weights, every layer
     trained (``map_scratch_few_night``);
   * ``adapted``: the day detector with its new layers retrained (SSD head
     and extra layers, ``unfreeze=0``: the classic recipe, base network
     frozen) and the frozen blocks' BatchNorm statistics re-estimated on
     the night scenes (``adapt_batchnorm=True``) (``map_adapted_night``);
   * ``adapted_all``: the day detector with every layer fine-tuned
     (``unfreeze="all"``), for comparison (``map_adapted_all_night``).

   Also reported: the unadapted day detector on night scenes
   (``map_day_on_night``) and on day scenes (``map_day_on_day``), and the
   new-layers recipe without the BatchNorm re-estimation
   (``map_adapted_night_no_adabn``).

Score: ``TransferDetector.score``, mAP at IoU 0.5 (torchmetrics), on
``n_test`` night test scenes, in [0, 1].

JSON keys: ``map_scratch_few_night``, ``map_day_on_night``,
``map_adapted_night`` (targets: adapted > both others), plus the ones above
and fit times in seconds.
"""

from __future__ import annotations

import time

import numpy as np

CLASSES = (1, 7, 8)  # trouser, sneaker, bag
SCENES = {"canvas_size": 96, "item_size": (24, 40), "max_items": 3, "classes": CLASSES}
MODEL = "ssdlite320_mobilenet_v3_large"
SIZES = {False: {"n_day": 400, "day_epochs": 15, "n_night": 32, "night_epochs": 30,
                 "n_draws": 3, "n_test": 200},
         True: {"n_day": 40, "day_epochs": 2, "n_night": 8, "night_epochs": 2,
                "n_draws": 1, "n_test": 20}}


def _scenes(n, environment, split, seed):
    from sktl.datasets import make_fashion_scenes

    return make_fashion_scenes(n, environment=environment, split=split,
                               random_state=seed, **SCENES)


def _timed_fit(detector, images, targets):
    start = time.perf_counter()
    detector.fit(images, targets)
    return detector, time.perf_counter() - start


def run(quick):
    from sktl import TransferDetector

    size = SIZES[quick]
    day_X, day_y = _scenes(size["n_day"], "day", "train", 0)
    day_test = _scenes(size["n_test"], "day", "test", 1)
    night_test = _scenes(size["n_test"], "night", "test", 2)

    day, day_time = _timed_fit(
        TransferDetector(MODEL, weights=None, unfreeze="all", min_size=96, lr=3e-3,
                         max_epochs=size["day_epochs"], random_state=0), day_X, day_y)
    night = {"lr": 3e-3, "max_epochs": size["night_epochs"], "random_state": 0}
    recipes = {
        "scratch": lambda: TransferDetector(MODEL, weights=None, unfreeze="all",
                                            min_size=96, **night),
        "adapted": lambda: TransferDetector(day, unfreeze=0, adapt_batchnorm=True, **night),
        "adapted_no_adabn": lambda: TransferDetector(day, unfreeze=0, **night),
        "adapted_all": lambda: TransferDetector(day, unfreeze="all",
                                                **{**night, "lr": 1e-3}),
    }
    scores = {name: [] for name in recipes}
    times = {name: [] for name in recipes}
    for draw in range(size["n_draws"]):
        night_X, night_y = _scenes(size["n_night"], "night", "train", 100 + draw)
        for name, make in recipes.items():
            detector, seconds = _timed_fit(make(), night_X, night_y)
            scores[name].append(detector.score(*night_test))
            times[name].append(seconds)
            print(f"draw {draw}: {name} mAP@0.5 {scores[name][-1]:.3f} "
                  f"({seconds:.0f} s)", flush=True)

    def mean(values):
        return round(float(np.mean(values)), 4)

    return {
        "map_scratch_few_night": mean(scores["scratch"]),
        "map_day_on_night": round(day.score(*night_test), 4),
        "map_adapted_night": mean(scores["adapted"]),
        "map_adapted_night_no_adabn": mean(scores["adapted_no_adabn"]),
        "map_adapted_all_night": mean(scores["adapted_all"]),
        "map_day_on_day": round(day.score(*day_test), 4),
        "map_per_draw": {k: [round(v, 4) for v in vals] for k, vals in scores.items()},
        "day_fit_s": round(day_time, 1),
        "night_fit_s": {k: round(float(np.mean(v)), 1) for k, v in times.items()},
        **size,
        "model": MODEL,
    }
