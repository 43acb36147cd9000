"""
Grid-search the freeze depth on Fashion-MNIST
==============================================

Pretrain a ResNet-18 on Fashion-MNIST classes 0-4 (the source), then transfer
it to classes 5-9 with 10 labels per class (the target), letting
``GridSearchCV`` choose how many backbone blocks to fine-tune. Needs the
Debian package ``dataset-fashion-mnist``; runs in a few minutes on a CPU.
"""

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from sktl import TransferClassifier
from sktl.datasets import load_fashion_mnist

X, y = load_fashion_mnist("train")
X_test, y_test = load_fashion_mnist("test")
rng = np.random.RandomState(0)

# 1. prepare: a source task and a few-label target task
source_idx = rng.choice(np.flatnonzero(y < 5), 2000, replace=False)
few = np.concatenate([rng.choice(np.flatnonzero(y == c), 10, replace=False) for c in range(5, 10)])
test = np.flatnonzero(y_test >= 5)

# 2. pretrain on the source
source = TransferClassifier("resnet18", weights=None, unfreeze="all", max_epochs=2,
                            lr=3e-3, backbone_lr=3e-3, batch_size=64, random_state=0)
source.fit(X[source_idx], y[source_idx])

# 3. fine-tune on the target, the freeze depth chosen by cross-validation
depths, rates = [0, 1, 2], [3e-3, 1e-2]
search = GridSearchCV(
    TransferClassifier(backbone=source, max_epochs=30, random_state=0),
    {"unfreeze": depths, "lr": rates},
    cv=StratifiedKFold(2, shuffle=True, random_state=0),
).fit(X[few], y[few])

# cv_results_ lists the candidates in ParameterGrid's order (lr varies
# slowest), so pick each cell by its parameters rather than reshaping.
results = search.cv_results_
scores = np.array([[results["mean_test_score"][(results["param_unfreeze"] == d)
                                               & (results["param_lr"] == r)][0]
                    for r in rates] for d in depths])
print("mean CV accuracy (rows: unfreeze 0/1/2, columns: lr 3e-3/1e-2)")
print(np.round(scores, 3))
print("best:", search.best_params_, "target test accuracy:",
      round(search.score(X_test[test], y_test[test]), 3))

# %%
# The grid-search heatmap: mean CV accuracy per (freeze depth, learning rate).
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(4, 3.5))
im = ax.imshow(scores, cmap="viridis")
for (i, j), value in np.ndenumerate(scores):
    ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="w")
ax.set_xticks([0, 1], ["3e-3", "1e-2"])
ax.set_yticks([0, 1, 2], ["0", "1", "2"])
ax.set_xlabel("lr")
ax.set_ylabel("unfreeze (blocks fine-tuned)")
fig.colorbar(im, label="CV accuracy")
fig.tight_layout()
plt.show()
