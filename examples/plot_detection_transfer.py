"""
Object-detector transfer: from day scenes to night scenes
=========================================================

A detector trained on "day" scenes (dark Fashion-MNIST items on light, clean
backgrounds) finds almost nothing at "night" (faint items on dark, noisy
backgrounds). With a few labelled night scenes, ``TransferDetector`` adapts
it: its *new layers* (SSD head and extra layers) are retrained while the
base network stays frozen, and the frozen blocks' BatchNorm statistics are
re-estimated on the night images (``adapt_batchnorm=True``). We compare it
with the same detector trained from scratch on those night scenes and with
fine-tuning every layer, then look at the boxes each one predicts and at
their learning curves.

The scenes are built from the real Fashion-MNIST images of the Debian
package ``dataset-fashion-mnist``; nothing is downloaded (torchvision's COCO
weights are not used: the day detector is trained from random weights and
plays the part of the pretrained model). Sizes are small so that this runs
in about two minutes on two CPU cores; ``python benchmarks/run.py detection``
runs the full-size comparison.
"""

import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from sktl.datasets import make_fashion_scenes
from sktl import TransferDetector

NAMES = {1: "trouser", 7: "sneaker", 8: "bag"}
scenes = {"canvas_size": 96, "item_size": (24, 40), "max_items": 3,
          "classes": list(NAMES)}
day_X, day_y = make_fashion_scenes(200, environment="day", random_state=0, **scenes)
night_X, night_y = make_fashion_scenes(32, environment="night", random_state=1, **scenes)
test_X, test_y = make_fashion_scenes(100, environment="night", split="test",
                                     random_state=2, **scenes)

# %%
# Step 1, pretrain on the source: an SSDlite detector (MobileNetV3) trained
# on day scenes. ``min_size=96`` keeps the scenes at their own size.
day = TransferDetector("ssdlite320_mobilenet_v3_large", weights=None, unfreeze="all",
                       min_size=96, lr=3e-3, max_epochs=10, random_state=0)
day.fit(day_X, day_y)

# %%
# Step 2, fine-tune on the target: each detector sees the same 32 labelled
# night scenes for 30 epochs. ``TransferDetector(day, ...)`` starts from the
# fitted day detector (which is never modified).
night = {"lr": 3e-3, "max_epochs": 30, "random_state": 0}
detectors = {
    "day detector, unadapted": day,
    "scratch on 32 night scenes": TransferDetector(
        "ssdlite320_mobilenet_v3_large", weights=None, unfreeze="all", min_size=96,
        **night),
    "day -> night, new layers": TransferDetector(day, unfreeze=0, adapt_batchnorm=True,
                                                 **night),
    "day -> night, all layers": TransferDetector(day, unfreeze="all",
                                                 **{**night, "lr": 1e-3}),
}
for name, detector in detectors.items():
    if detector is not day:
        detector.fit(night_X, night_y)
    print(f"{name:>28}: night mAP@0.5 = {detector.score(test_X, test_y):.3f}")

# %%
# Detections on three night test scenes (score >= 0.3). Green: ground truth;
# orange: predicted boxes with their class and score.
shown = [0, 1, 2]
fig, axes = plt.subplots(len(shown), len(detectors), figsize=(11, 8.5))
for col, (name, detector) in enumerate(detectors.items()):
    detector.set_params(score_threshold=0.3)
    predictions = detector.predict([test_X[i] for i in shown])
    for row, (i, pred) in enumerate(zip(shown, predictions)):
        ax = axes[row, col]
        ax.imshow(test_X[i])
        for x1, y1, x2, y2 in test_y[i]["boxes"]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                   edgecolor="limegreen", linewidth=1.5))
        for (x1, y1, x2, y2), label, score in zip(pred["boxes"], pred["labels"],
                                                  pred["scores"]):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                   edgecolor="orange", linewidth=1.5))
            ax.text(x1, y1 - 1, f"{NAMES[int(label)]} {score:.2f}", color="orange",
                    fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        if row == 0:
            ax.set_title(name, fontsize=9)
fig.tight_layout()
plt.show()

# %%
# Learning curves on the night scenes: the training loss (sum of the SSD
# classification and box-regression losses) per epoch, kept by each
# detector in ``history_``. Starting from the day detector, training starts
# lower and ends lower than from scratch.
fig, ax = plt.subplots(figsize=(6, 3.6))
for name, detector in list(detectors.items())[1:]:
    ax.plot(range(1, len(detector.history_) + 1), detector.history_[:, "train_loss"],
            label=name)
ax.set_xlabel("epoch")
ax.set_ylabel("training loss")
ax.set_yscale("log")
ax.legend()
fig.tight_layout()
plt.show()
