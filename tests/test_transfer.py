"""TransferClassifier / TransferRegressor behaviour on small backbones."""

import pickle
import re

import numpy as np
import pytest
import torch
from conftest import TinyCNN, TinyNet
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_validate
from torch import nn

from sktl import ContrastiveClassifier, FeatureExtractor, TransferClassifier, TransferRegressor
from sktl.exceptions import UntrustedTypeError


def _images(n=64, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.rand(n, 1, 12, 12).astype(np.float32)
    y = (X[:, 0, :6].mean(axis=(1, 2)) > X[:, 0, 6:].mean(axis=(1, 2))).astype(int)
    return X, y


def _state(module):
    """A copy of the weights on the CPU, where a GPU fit's are compared too."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("unfreeze", [0, 1, "all"])
def test_frozen_blocks_and_batchnorm_stats_stay_unchanged(unfreeze):
    X, y = _images()
    pretrained = TinyCNN()
    before = _state(pretrained)
    clf = TransferClassifier(pretrained, unfreeze=unfreeze, max_epochs=2, lr=0.05,
                             random_state=0).fit(X, y)
    after = _state(clf.backbone_.module)
    conv1 = [k for k in before if k.startswith("conv1")]
    conv2 = [k for k in before if k.startswith("conv2")]
    assert any("running_mean" in k for k in conv1)
    unchanged = lambda keys: all(torch.equal(before[k], after[k]) for k in keys)
    if unfreeze == 0:
        assert unchanged(conv1) and unchanged(conv2)
    elif unfreeze == 1:
        assert unchanged(conv1) and not unchanged(conv2)
    else:
        assert not unchanged(conv1) and not unchanged(conv2)


def test_backbone_lr_is_a_separate_param_group():
    from skorch.callbacks import Callback

    class OptimizerGroups(Callback):
        def on_train_begin(self, net, **kwargs):
            groups = net.optimizer_.param_groups
            self.lrs = sorted(g["lr"] for g in groups)
            self.params = {id(p) for g in groups for p in g["params"]}

    X, y = _images()
    seen = OptimizerGroups()
    clf = TransferClassifier(TinyCNN(), unfreeze=1, lr=0.1, backbone_lr=0.001,
                             max_epochs=1, random_state=0, callbacks=[seen]).fit(X, y)
    assert seen.lrs == [0.001, 0.1]
    # Exactly the trainable parameters are optimised.
    assert seen.params == {id(p) for p in clf.module_.parameters() if p.requires_grad}


@pytest.mark.parametrize("make", [
    lambda: TransferClassifier(TinyNet, unfreeze=1, max_epochs=2, random_state=0),
    lambda: TransferRegressor(TinyNet, unfreeze="all", max_epochs=2, random_state=0),
    lambda: FeatureExtractor(TinyNet, layer="block1", random_state=0),
    lambda: FeatureExtractor(TinyNet, precision="bf16", random_state=0),
    lambda: ContrastiveClassifier(TinyNet, unfreeze=1, lr=1e-2, pair_iterations=2,
                                  random_state=0),
])
def test_safe_format_round_trip(make, blobs, tmp_path):
    import sktl

    X, y = blobs
    est = make().fit(X, y)
    sktl.save(est, tmp_path / "model")
    config, weights = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert config == "config.json" and re.fullmatch(r"model-[0-9a-f]{16}\.safetensors", weights)
    # TinyNet lives in the tests' conftest, outside the packages trusted by default.
    with pytest.raises(UntrustedTypeError, match=r"conftest:TinyNet.*trusted=\[TinyNet\]"):
        sktl.load(tmp_path / "model")
    loaded = sktl.load(tmp_path / "model", trusted=[TinyNet])
    assert type(loaded) is type(est)
    assert loaded.get_params()["unfreeze" if hasattr(est, "unfreeze") else "layer"] == \
        est.get_params()["unfreeze" if hasattr(est, "unfreeze") else "layer"]
    method = "transform" if isinstance(est, FeatureExtractor) else "predict"
    if isinstance(est, FeatureExtractor):  # the same rows in the feature cache
        assert loaded._extraction_key == est._extraction_key
    np.testing.assert_array_equal(getattr(loaded, method)(X), getattr(est, method)(X))
    if hasattr(est, "classes_"):
        np.testing.assert_array_equal(loaded.classes_, est.classes_)


def test_safe_format_keeps_a_numpy_integer_seed(blobs, tmp_path):
    import sktl

    X, y = blobs
    clf = TransferClassifier(TinyNet, max_epochs=1, random_state=np.int64(3)).fit(X, y)
    sktl.save(clf, tmp_path / "m")
    assert sktl.load(tmp_path / "m", trusted=[TinyNet]).get_params()["random_state"] == 3


def test_refit_on_images_drops_the_array_fits_input_attributes(blobs):
    import pandas as pd

    X, _ = blobs
    frame = pd.DataFrame(X, columns=[f"c{i}" for i in range(X.shape[1])])
    fe = FeatureExtractor(TinyNet, random_state=0).fit(frame)
    assert fe.n_features_in_ == X.shape[1] and hasattr(fe, "feature_names_in_")
    images = np.random.RandomState(0).randint(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    fe.set_params(backbone="resnet18", weights=None).fit(images)
    assert not hasattr(fe, "n_features_in_") and not hasattr(fe, "feature_names_in_")


@pytest.mark.parametrize("device, forked, seeded", [
    ("cpu", [], False),
    ("cuda", [0], True),
    ("cuda:1", [1], True),
])
def test_seeded_torch_forks_and_seeds_only_the_fit_device(monkeypatch, device, forked,
                                                          seeded):
    import contextlib

    from sktl._engine import seeded_torch

    calls = {"fork": None, "seed": []}

    @contextlib.contextmanager
    def fork_rng(devices, device_type="cuda"):
        calls["fork"] = devices
        yield

    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda i: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "manual_seed", calls["seed"].append)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: calls["seed"].append(s))
    with seeded_torch(7, device):
        pass
    # A GPU fit forks and seeds its own device only (not the user's other GPUs).
    assert calls["fork"] == forked
    assert calls["seed"] == ([7] if seeded else [])


def test_seeded_torch_restores_an_mps_generator(monkeypatch):
    from sktl._engine import seeded_torch

    generator = {"state": "user's", "seeded": []}
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda device: generator["state"])
    monkeypatch.setattr(torch.mps, "set_rng_state",
                        lambda state, device: generator.update(state=state))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: generator.update(
        state=f"seeded {seed}", seeded=[*generator["seeded"], seed]))
    monkeypatch.setattr(torch, "manual_seed", lambda seed: pytest.fail("seeds every device"))
    with seeded_torch(7, "mps"):
        assert generator["state"] == "seeded 7"
    assert generator == {"state": "user's", "seeded": [7]}


def test_seeded_torch_seeds_the_fit_device_of_a_numbered_accelerator(monkeypatch):
    import contextlib

    from sktl._engine import seeded_torch

    calls = {"current": 0, "seeded_on": [], "states": []}

    @contextlib.contextmanager
    def on_device(index):
        before, calls["current"] = calls["current"], index
        yield
        calls["current"] = before

    monkeypatch.setattr(torch.xpu, "device", on_device)
    monkeypatch.setattr(torch.xpu, "get_rng_state", lambda device: calls["states"].append(
        ("get", str(device))) or "state")
    monkeypatch.setattr(torch.xpu, "set_rng_state",
                        lambda state, device: calls["states"].append(("set", str(device))))
    monkeypatch.setattr(torch.xpu, "manual_seed",
                        lambda seed: calls["seeded_on"].append(calls["current"]))
    with seeded_torch(7, "xpu:1"):
        pass
    assert calls["seeded_on"] == [1]  # not the current device 0
    assert calls["states"] == [("get", "xpu:1"), ("set", "xpu:1")]


def test_a_fit_leaves_the_global_torch_stream_alone(blobs):
    X, y = blobs
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    TransferClassifier(TinyNet, max_epochs=1, random_state=0).fit(X, y)
    FeatureExtractor(TinyNet, random_state=0).fit(X)
    torch.testing.assert_close(torch.rand(3), expected)


def test_safe_format_refuses_what_it_cannot_rebuild(blobs, tmp_path):
    import sktl

    X, y = blobs
    clf = TransferClassifier(TinyNet, head=lambda i, o: torch.nn.Linear(i, o), max_epochs=1)
    clf.fit(X, y)
    with pytest.raises(TypeError, match="head=.*pickle"):
        sktl.save(clf, tmp_path / "m")


def test_feature_extractor_in_pipeline_under_grid_search_and_cv(blobs):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    X, y = blobs
    pipe = make_pipeline(FeatureExtractor(TinyNet, random_state=0),
                         LogisticRegression(max_iter=500))
    search = GridSearchCV(pipe, {"featureextractor__layer": [None, "block1"],
                                 "logisticregression__C": [0.1, 1.0]}, cv=3).fit(X, y)
    assert search.best_score_ > 0.9
    scores = cross_validate(pipe, X, y, cv=3)["test_score"]
    assert scores.mean() > 0.9


def test_text_inputs_are_validated():
    from sktl.backbones._inputs import validate_texts

    assert validate_texts(np.array(["a", "b"])) == ["a", "b"]
    with pytest.raises(TypeError, match="single string"):
        validate_texts("just one text")
    with pytest.raises(TypeError, match="sample 1 is a float"):
        validate_texts(["fine", float("nan")])
    with pytest.raises(ValueError, match="1-D sequence"):
        validate_texts(np.array([["a"], ["b"]]))
    with pytest.raises(ValueError, match="0 texts"):
        validate_texts([])


def test_verbose_shows_progress_and_epoch_log(blobs, capsys):
    X, y = blobs
    # cache=False: features computed before would be read silently from the cache.
    clf = TransferClassifier(TinyNet, max_epochs=2, verbose=1, random_state=0,
                             cache=False).fit(X, y)
    clf.predict(X)
    out = capsys.readouterr()
    assert "train_loss" in out.out
    assert "predict" in out.err and "features" in out.err


def test_device_validation(blobs):
    X, y = blobs
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            TransferClassifier(TinyNet, device="cuda").fit(X, y)
    clf = TransferClassifier(TinyNet, device="cpu", max_epochs=1).fit(X, y)
    assert clf.device_ == "cpu"


@pytest.mark.parametrize("device, expected", [("auto", "cuda"), ("cpu", "cpu")])
def test_a_cpu_fit_with_device_auto_unpickles_onto_the_gpu(blobs, monkeypatch, device,
                                                           expected):
    """As on a GPU worker of a cluster (mocked: no GPU here); an explicit
    device="cpu" stays on the CPU."""

    X, y = blobs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # fitted on a CPU
    clf = TransferClassifier(TinyNet, device=device, max_epochs=1).fit(X, y)
    fe = FeatureExtractor(TinyNet, device=device).fit(X)
    assert clf.device_ == fe.device_ == "cpu"
    blobs_ = pickle.dumps(clf), pickle.dumps(fe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [pickle.loads(b).device_ for b in blobs_] == [expected, expected]


def test_set_params_then_refit_starts_from_the_pretrained_backbone(blobs):
    """No warm start: every fit restarts from the backbone parameter."""
    X, y = blobs
    clf = TransferClassifier(TinyNet, unfreeze="all", max_epochs=3, random_state=0)
    first = clf.fit(X, y).predict_proba(X)
    clf.set_params(max_epochs=1).fit(X, y)
    clf.set_params(max_epochs=3).fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X), first)


def test_grid_search_over_several_fitted_sources(blobs):
    from sklearn.frozen import FrozenEstimator

    X, y = blobs
    sources = [TransferClassifier(TinyNet, unfreeze="all", max_epochs=e, random_state=0).fit(X, y)
               for e in (1, 5)]
    search = GridSearchCV(TransferClassifier(max_epochs=2, lr=0.01, random_state=0),
                          {"backbone": [FrozenEstimator(s) for s in sources]}, cv=2,
                          error_score="raise").fit(X, y)
    assert search.best_estimator_.backbone.estimator in sources


def test_clone_keeps_set_output(blobs):
    X, _ = blobs
    fe = FeatureExtractor(TinyNet, random_state=0).set_output(transform="pandas")
    assert hasattr(clone(fe).fit_transform(X), "columns")


def test_integer_and_float_pixel_ranges():
    from sktl.backbones._inputs import ImagePreprocessor

    rng = np.random.RandomState(0)
    u8 = rng.randint(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    p = ImagePreprocessor()
    torch.testing.assert_close(p(u8.astype(np.int64)), p(u8))
    torch.testing.assert_close(p(u8.astype(np.uint16) * 257), p(u8))
    # The scale follows the dtype, not the batch: a dark 16-bit image maps to
    # the same tensor alone as beside a bright one.
    dark = (u8[:1].astype(np.uint16) // 2)
    bright = u8[1:].astype(np.uint16) * 257
    torch.testing.assert_close(p(np.concatenate([dark, bright]))[:1], p(dark))
    with pytest.raises(ValueError, match="must hold 0-255"):
        p(u8.astype(np.int64) * 4)
    with pytest.warns(UserWarning, match="divide 0-255"):
        p(u8.astype(np.float32))
    from sktl.backbones._inputs import validate_images

    with pytest.warns(UserWarning, match="greyscale images"):
        validate_images(u8[0])


def test_safe_format_refuses_module_instances(blobs, tmp_path):
    import sktl

    X, y = blobs
    clf = TransferClassifier(TinyNet(), max_epochs=1).fit(X, y)
    with pytest.raises(TypeError, match="pass the class"):
        sktl.save(clf, tmp_path / "m")


class TwoLayerHead(nn.Module):
    """A custom head class, ``head(n_features, n_classes)``."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(n_in, 8), nn.Tanh(), nn.Linear(8, n_out))

    def forward(self, x):
        return self.layers(x)


def test_a_head_class_is_saved_by_name_and_loaded_when_trusted(blobs, tmp_path):
    import sktl

    X, y = blobs
    clf = TransferClassifier(nn.Flatten, head=TwoLayerHead, max_epochs=2,
                             random_state=0).fit(X, y)
    sktl.save(clf, tmp_path / "m")
    with pytest.raises(UntrustedTypeError, match="TwoLayerHead"):
        sktl.load(tmp_path / "m")
    loaded = sktl.load(tmp_path / "m", trusted=[TwoLayerHead])
    assert loaded.head is TwoLayerHead
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), rtol=1e-6)
    with pytest.raises(TypeError, match="cannot be stored"):  # a function is no class
        sktl.save(clf.set_params(head=lambda n_in, n_out: nn.Linear(n_in, n_out)),
                  tmp_path / "f")


def test_training_only_parameters_are_saved_as_their_defaults(blobs, tmp_path):
    from skorch.callbacks import Callback

    import sktl
    from sktl import FeatureCache
    from sktl.callbacks import EarlyStopping
    from sktl.losses import DomainAwareLoss

    X, y = blobs
    y_da = np.where(np.arange(len(y)) < 90, y, -1)
    clf = TransferClassifier(TinyNet, unfreeze=1, criterion=DomainAwareLoss("coral"),
                             callbacks=[Callback()], class_weight={0: 2.0, 1: 1.0, 2: 1.0},
                             early_stopping=EarlyStopping(patience=2), max_epochs=3,
                             augment=torch.neg, cache=FeatureCache(prefix=False),
                             random_state=0).fit(X, y_da)
    sktl.save(clf, tmp_path / "m")
    loaded = sktl.load(tmp_path / "m", trusted=[TinyNet])
    params = loaded.get_params()
    assert (params["criterion"], params["callbacks"], params["class_weight"],
            params["early_stopping"], params["augment"], params["cache"]) == (
        None, None, None, False, None, True)
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), rtol=1e-5,
                               atol=1e-6)


def test_a_truncated_sentence_encoder_student_saves_and_loads(minilm_dir, tmp_path):
    import sktl
    from sktl.backbones import truncate_sentence_encoder

    X = ["a fine film", "a dull film", "great acting", "poor plot"] * 3
    y = np.array([1, 0, 1, 0] * 3)
    student = TransferClassifier(truncate_sentence_encoder(minilm_dir, 1), unfreeze="all",
                                 max_epochs=1, random_state=0).fit(X, y)
    assert student.backbone_.spec == {"kind": "sentence_transformers", "name": minilm_dir,
                                      "layers": 1}
    sktl.save(student, tmp_path / "student")
    loaded = sktl.load(tmp_path / "student")
    assert len(loaded.backbone_.module.model[0].auto_model.encoder.layer) == 1
    np.testing.assert_allclose(loaded.predict_proba(X), student.predict_proba(X), rtol=1e-5,
                               atol=1e-6)


def test_parallel_cross_validation_limits_torch_threads_per_worker(blobs):
    """n_jobs=2 on joblib's process backend: each worker runs torch with
    cpu_count // n_jobs threads, so workers do not oversubscribe the cores."""
    import os

    from conftest import ThreadProbe

    X, y = blobs
    result = cross_validate(TransferClassifier(ThreadProbe, unfreeze=1, max_epochs=2,
                                               random_state=0),
                            X, y, cv=2, n_jobs=2, return_estimator=True)
    expected = max(1, (os.cpu_count() or 1) // 2)
    for est in result["estimator"]:
        assert est.backbone_.module.threads_seen == expected
    serial = cross_validate(TransferClassifier(ThreadProbe, unfreeze=1, max_epochs=2,
                                               random_state=0), X, y, cv=2)
    np.testing.assert_allclose(result["test_score"], serial["test_score"])


def test_worker_threads_caps_torch_at_omp_num_threads(monkeypatch):
    from sktl._engine import worker_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        with worker_threads():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        with worker_threads():
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
