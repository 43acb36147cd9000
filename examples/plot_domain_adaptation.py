"""
Domain adaptation on Office-Caltech10: DSLR photos -> webcam photos
===================================================================

A linear SVM trained on DSLR images (SURF features) loses accuracy on webcam
images of the same ten object classes. ``DomainAdaptTransformer`` aligns the
two domains using the unlabelled webcam rows, stacked under the DSLR rows
with the label ``-1``. The plot shows both domains in 2-D (PCA) before and
after adaptation. Reads ``office_caltech10_surf`` from ``SKTL_DATA``; runs in
seconds.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA
from sklearn.svm import SVC

from sktl import DomainAdaptTransformer, make_da_pipeline
from sktl.datasets import load_office_caltech

X_source, y_source = load_office_caltech("dslr")
X_target, y_target = load_office_caltech("webcam")  # y_target: for reporting only
X = np.vstack([X_source, X_target])
y = np.r_[y_source, [-1] * len(X_target)]  # -1: unlabelled target rows

# %%
# One call per method: the pipeline adapts, then trains the SVM on the
# (adapted) labelled rows only, and predicts target rows as target rows.
mapped = {}
for method in ["none", "coral", "jda"]:
    pipe = make_da_pipeline(DomainAdaptTransformer(method), SVC(kernel="linear", C=1))
    pipe.fit(X, y)
    accuracy = (pipe.predict(X_target) == y_target).mean()
    print(f"{method:>5}: webcam accuracy {accuracy:.1%}")
    mapped[method] = pipe[0].fit_transform(X, y)

# %%
# Both domains projected on the first two principal components of the rows
# (as each method outputs them). Marker: domain; colour: class.
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
source = y != -1
for ax, (method, Z) in zip(axes, mapped.items()):
    Z2 = PCA(2, random_state=0).fit_transform(Z)
    ax.scatter(*Z2[source].T, c=y_source, cmap="tab10", s=12, marker="o", label="DSLR")
    ax.scatter(*Z2[~source].T, c=y_target, cmap="tab10", s=12, marker="x", label="webcam")
    ax.set_title(method)
    ax.set_xticks([])
    ax.set_yticks([])
axes[0].legend(loc="best")
fig.tight_layout()
plt.show()
