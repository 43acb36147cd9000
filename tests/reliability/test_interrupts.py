"""Ctrl-C during fit reaches the caller and leaves the fitted model as it was.

A child process fits each estimator, then starts a refit that would last
for ever; once it trains, the test sends the child a real SIGINT (never to
the pytest process itself, where a late signal under CI load would stop
the whole run). The refit must raise KeyboardInterrupt, and the estimator
must predict as before with the very same fitted attributes.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
from _procs import spawn

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CHILD = r"""
import os, sys
import numpy as np, torch
from torch import nn
from conftest import TinyNet

folder, cases = sys.argv[1], sys.argv[2:]
armed = {"case": None}

def announce(module, args, output):
    # The first forward pass with gradients of an armed fit: training runs.
    if armed["case"] and torch.is_grad_enabled() and module.training:
        open(os.path.join(folder, armed["case"]), "w").close()
        armed["case"] = None

torch.nn.modules.module.register_module_forward_hook(announce)
rng = np.random.RandomState(0)
X = rng.normal(size=(48, 6)).astype("float32")
y = np.arange(48) % 3

from sktl import (ContrastiveClassifier, DistillationClassifier, TransferClassifier,
                  TransferRegressor)
from sklearn.model_selection import GridSearchCV

def tc(**kw):
    return TransferClassifier(TinyNet, random_state=0, max_epochs=2, **kw)

def make(case):
    # (estimator, fit arguments, parameters that make a fit last for ever)
    if case == "finetune":
        return tc(unfreeze="all"), (X, y), {"max_epochs": 10**6}
    if case == "early_stopping":  # skorch stops by a KeyboardInterrupt of its own
        return tc(unfreeze="all", early_stopping=10**6), (X, y), {"max_epochs": 10**6}
    if case == "head_only":
        return tc(unfreeze=0), (X, y), {"max_epochs": 10**6}
    if case == "prefix":
        return tc(unfreeze=1), (X, y), {"max_epochs": 10**6}
    if case == "domain":
        from sktl.losses import DomainAwareLoss
        est = tc(unfreeze=1, criterion=DomainAwareLoss("coral"))
        return est, (X, np.where(np.arange(48) < 32, y, -1)), {"max_epochs": 10**6}
    if case == "regressor":
        est = TransferRegressor(TinyNet, unfreeze="all", random_state=0, max_epochs=2)
        return est, (X, X[:, 0]), {"max_epochs": 10**6}
    if case == "distillation":
        from sklearn.linear_model import LogisticRegression
        est = DistillationClassifier(LogisticRegression(), tc(unfreeze="all"), random_state=0)
        return est, (X, np.where(np.arange(48) < 24, y, -1)), {"student__max_epochs": 10**6}
    if case == "contrastive":
        est = ContrastiveClassifier(TinyNet, batch_size=8, random_state=0)
        return est, (X, y), {"max_epochs": 10**6}
    if case == "detector":
        from sktl import TransferDetector
        from sktl.datasets import make_fashion_scenes
        images, targets = make_fashion_scenes(4, random_state=0, canvas_size=64,
                                              item_size=(20, 30), max_items=2)
        est = TransferDetector(weights=None, max_epochs=1, min_size=64, batch_size=2,
                               random_state=0)
        return est, (images, targets), {"max_epochs": 10**6}
    if case == "grid_search":
        est = GridSearchCV(tc(unfreeze="all"), {"lr": [1e-3, 1e-2]}, cv=2)
        return est, (X, y), {"estimator__max_epochs": 10**6}
    raise ValueError(case)

def predictions(est, X):
    if isinstance(X, list):  # detector
        return [{k: v.tolist() for k, v in d.items()} for d in est.predict(X)]
    return getattr(est, "predict_proba", est.predict)(X).tolist()

for case in cases:
    est, fit_args, forever = make(case)
    est.fit(*fit_args)
    before = predictions(est, fit_args[0])
    est.set_params(**forever)
    state = dict(vars(est))
    armed["case"] = case
    try:
        est.fit(*fit_args)
        print(case, "RETURNED", flush=True)
    except KeyboardInterrupt:
        # GridSearchCV (sklearn's) sets some attributes before its candidates
        # train; what matters there is that it stops and still predicts as before.
        same_state = case == "grid_search" or (
            set(vars(est)) == set(state) and all(vars(est)[k] is v for k, v in state.items()))
        unchanged = predictions(est, fit_args[0]) == before and same_state
        print(case, "INTERRUPTED", "UNCHANGED" if unchanged else "CHANGED", flush=True)
"""

CASES = ["finetune", "early_stopping", "head_only", "prefix", "domain", "regressor",
         "distillation", "contrastive", "detector", "grid_search"]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Run every case in one child (one torch import), interrupting each
    case's long refit with SIGINT once it trains; ``{case: report words}``."""
    folder = tmp_path_factory.mktemp("interrupts")
    proc = spawn(CHILD, folder, *CASES)
    try:
        for case in CASES:
            marker = folder / case
            deadline = time.monotonic() + 300
            while not marker.exists():
                if proc.poll() is not None:
                    pytest.fail(f"the child stopped before {case}: {proc.communicate()[1][-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"the child never started training in case {case}")
                time.sleep(0.02)
            time.sleep(0.2)  # well inside the training loop
            os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the child did not finish after its last interrupt")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    reports = {}
    for line in out.splitlines():
        case, *words = line.split()
        reports[case] = words
    return reports


@pytest.mark.parametrize("case", CASES)
def test_sigint_during_fit_reaches_the_caller_and_keeps_the_model(case, interrupted):
    assert interrupted.get(case) == ["INTERRUPTED", "UNCHANGED"], interrupted


def test_early_stopping_still_ends_a_fit_normally():
    """skorch's EarlyStopping ends training by raising KeyboardInterrupt:
    that one must not reach the caller."""
    import numpy as np
    from conftest import TinyNet

    from sktl import TransferClassifier

    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(60, 4)).astype("float32"), np.arange(60) % 2  # noise
    clf = TransferClassifier(TinyNet, unfreeze="all", lr=0.05, max_epochs=300,
                             early_stopping=2, random_state=0).fit(X, y)
    assert len(clf.history_) < 300
