"""Mixed precision, and multi-process data-parallel training through
accelerate (skorch's AccelerateMixin), run as 2 CPU processes by torchrun."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from sktl import FeatureExtractor, TransferClassifier, TransferRegressor

HERE = os.path.dirname(os.path.abspath(__file__))


def _mlp():
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU())


def test_torchrun_two_cpu_processes_train_the_same_model(tmp_path):
    pytest.importorskip("accelerate")
    # Two CPU processes: a GPU left visible makes gloo's barrier pick
    # cuda:<rank>, which a one-GPU machine lacks for rank 1.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", "2", os.path.join(HERE, "ddp_fit.py"), str(tmp_path)]
    # Generous timeout: two fresh interpreters import torch, accelerate and
    # sktl on a 2-core machine that may be busy with other work.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env,
                          check=False)
    errors = [line for line in proc.stderr.splitlines() if "Error" in line]
    assert proc.returncode == 0, "\n".join(errors[-20:]) + proc.stderr[-2000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    weights = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for report in reports:
        assert report["world_size"] == 2
        assert report["distributed_type"] == "DistributedType.MULTI_CPU"
        assert report["backend"] == "gloo"
        # Each process trained on its half of the 10 batches of an epoch.
        assert report["batches_per_epoch"] == math.ceil(math.ceil(160 / 16) / 2)
        assert report["backbone_moved"] and report["unwrapped"] == "TransferModule"
        assert report["train_loss"][-1] < report["train_loss"][0]
        assert report["accuracy"] > 0.8
    # Gradients were averaged across processes: identical weights.
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)
    assert reports[0]["accuracy"] == reports[1]["accuracy"]
    # The criteria that read the features train through DDP too, in step.
    assert reports[0]["domain"] == reports[1]["domain"]
    assert reports[0]["contrastive"] == reports[1]["contrastive"]
    assert reports[0]["contrastive_accuracy"] > 0.7


def test_bf16_training_and_prediction_on_cpu(blobs):
    X, y = blobs
    params = {"unfreeze": "all", "max_epochs": 6, "lr": 0.02, "random_state": 0}
    full = TransferClassifier(_mlp(), **params).fit(X, y)
    mixed = TransferClassifier(_mlp(), precision="bf16", **params).fit(X, y)
    assert mixed.score(X, y) > 0.9
    # bfloat16 rounds: close to the float32 model, not equal.
    proba = mixed.predict_proba(X)
    assert proba.dtype == np.float64 and np.isfinite(proba).all()
    assert not np.array_equal(proba, full.predict_proba(X))
    assert (mixed.predict(X) == full.predict(X)).mean() > 0.95


@pytest.mark.parametrize("unfreeze", [0, 1])
def test_bf16_frozen_blocks_predict_alike_with_or_without_the_cache(blobs, unfreeze):
    import pickle

    X, y = blobs
    params = {"unfreeze": unfreeze, "max_epochs": 3, "lr": 0.02, "random_state": 0,
              "precision": "bf16"}
    # Copied by each classifier: the same weights. Two blocks: with unfreeze=1
    # the first one runs once, in float32, and the second trains on its output.
    body = nn.Sequential(nn.Sequential(nn.Linear(5, 16), nn.ReLU()),
                         nn.Sequential(nn.Linear(16, 16), nn.ReLU()))
    cached = TransferClassifier(body, **params).fit(X, y)
    proba = cached.predict_proba(X)
    # Unpickled (no frozen reader) and cache-less models read the features in
    # float32, as the head was trained on them.
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(cached)).predict_proba(X), proba)
    plain = TransferClassifier(body, cache=False, **params).fit(X, y)
    np.testing.assert_array_equal(plain.predict_proba(X), proba)


@pytest.mark.parametrize("unfreeze", [0, 1, 2, "all"])
def test_bf16_model_predicts_alike_after_save_load_and_set_params(blobs, tmp_path,
                                                                  unfreeze):
    """Whether the frozen blocks ran once in float32 is fitted state: saved,
    and untouched by ``set_params(unfreeze=...)`` after the fit."""
    from conftest import TinyNet

    import sktl

    X, y = blobs
    clf = TransferClassifier(TinyNet, unfreeze=unfreeze, max_epochs=3, lr=0.02,
                             random_state=0, precision="bf16", cache=False).fit(X, y)
    proba = clf.predict_proba(X)
    sktl.save(clf, tmp_path / "model")
    loaded = sktl.load(tmp_path / "model", trusted=[TinyNet])
    np.testing.assert_array_equal(loaded.predict_proba(X), proba)
    clf.set_params(unfreeze=1 if unfreeze != 1 else "all")
    np.testing.assert_array_equal(clf.predict_proba(X), proba)


def test_bf16_regressor_and_extractor(blobs):
    X, _ = blobs
    target = X[:, 0] - X[:, 1]
    reg = TransferRegressor(_mlp(), unfreeze="all", max_epochs=30, lr=0.02, random_state=0,
                            precision="bf16").fit(X, target)
    assert reg.score(X, target) > 0.8
    body = _mlp()  # copied by each extractor: the same weights
    fe32 = FeatureExtractor(body, cache=False).fit(X)
    fe16 = FeatureExtractor(body, cache=False, precision="bf16").fit(X)
    assert fe16.transform(X).dtype == np.float32
    assert_allclose(fe16.transform(X), fe32.transform(X), rtol=2e-2, atol=5e-2)
    # Cached float32 rows are never served to a bf16 extractor.
    assert fe16._extraction_key != fe32._extraction_key


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
@pytest.mark.parametrize("make", [
    lambda: TransferClassifier(_mlp(), precision="fp16", max_epochs=1),
    lambda: FeatureExtractor(_mlp(), precision="fp16"),
])
def test_fp16_needs_cuda(make, blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        make().fit(X, y)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_an_fp16_model_on_a_cpu_predicts_in_float32(blobs):
    X, y = blobs
    clf = TransferClassifier(_mlp(), max_epochs=1, random_state=0).fit(X, y)
    expected = clf.predict_proba(X)
    # As a GPU-trained fp16 model unpickled on a CPU-only machine.
    clf.set_params(precision="fp16")
    with pytest.warns(UserWarning, match="predicts in float32"):
        np.testing.assert_array_equal(clf.predict_proba(X), expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_an_fp16_extractor_on_a_cpu_transforms_in_float32(blobs):
    from sktl import FeatureCache

    X, _ = blobs
    cache = FeatureCache()
    fe = FeatureExtractor(_mlp(), cache=cache).fit(X)
    expected = fe.transform(X)
    cache.clear()
    fe._fit_precision = "fp16"  # as a GPU-fitted fp16 extractor unpickled on a CPU
    with pytest.warns(UserWarning, match="predicts in float32"):
        np.testing.assert_array_equal(fe.transform(X), expected)
    assert cache.nbytes == 0  # float32 rows are not stored under the fp16 key


def test_accelerator_is_kept_by_clone_and_checked_against_precision(blobs, tmp_path):
    accelerate = pytest.importorskip("accelerate")
    from sklearn.base import clone

    accelerator = accelerate.Accelerator(cpu=True)
    clf = TransferClassifier(_mlp(), device=accelerator)
    assert clone(clf).device is accelerator
    X, y = blobs
    with pytest.raises(ValueError, match="mixed_precision"):
        TransferClassifier(_mlp(), device=accelerator, precision="bf16").fit(X, y)
    # Single process: the accelerator places the model and trains as usual.
    fitted = TransferClassifier(_mlp(), device=accelerator, unfreeze="all",
                                max_epochs=5, lr=0.02, random_state=0).fit(X, y)
    assert fitted.score(X, y) > 0.9
    # Saved without the accelerator (the process's state), predicting the same.
    from conftest import TinyNet

    from sktl import load, save

    fitted = TransferClassifier(TinyNet, device=accelerator, unfreeze="all",
                                max_epochs=2, random_state=0).fit(X, y)
    save(fitted, tmp_path / "model")
    loaded = load(tmp_path / "model", trusted=[TinyNet])
    assert loaded.device == "auto"
    assert_allclose(loaded.predict_proba(X), fitted.predict_proba(X), rtol=1e-6)
