"""TransferClassifier / TransferRegressor behaviour on small backbones."""

import pickle
import re

import numpy as np
import pytest
import torch
from conftest import TinyCNN, TinyNet
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_validate

from sktl import FeatureExtractor, TransferClassifier, TransferRegressor
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
    X, y = _images()
    clf = TransferClassifier(TinyCNN(), unfreeze=1, lr=0.1, backbone_lr=0.001,
                             max_epochs=1, random_state=0)
    clf.fit(X, y)
    # Re-run the optimizer set-up the estimator used and read its groups.
    from sktl._training import build_net

    net = build_net(clf.module_, torch.nn.CrossEntropyLoss, lr=0.1, backbone_lr=0.001,
                    optimizer="adamw", max_epochs=1, batch_size=8, device="cpu",
                    valid_dataset=None, early_stopping=False, collate=None, verbose=0)
    net.initialize()
    lrs = sorted(g["lr"] for g in net.optimizer_.param_groups)
    assert lrs == [0.001, 0.1]
    n_trainable = sum(len(g["params"]) for g in net.optimizer_.param_groups)
    expected = sum(1 for p in clf.module_.parameters() if p.requires_grad)
    assert n_trainable == expected


def test_unfreeze_larger_than_blocks_is_rejected(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="unfreeze=3 but the backbone has only 2 blocks"):
        TransferClassifier(TinyNet, unfreeze=3).fit(X, y)
    with pytest.raises(ValueError, match="unfreeze"):
        TransferClassifier(TinyNet, unfreeze="some").fit(X, y)


def test_same_random_state_same_predictions(blobs):
    X, y = blobs
    params = {"unfreeze": "all", "max_epochs": 3, "early_stopping": 2, "random_state": 7}
    a = TransferClassifier(TinyNet, **params).fit(X, y).predict_proba(X)
    b = TransferClassifier(TinyNet, **params).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    c = TransferClassifier(TinyNet, **{**params, "random_state": 8}).fit(X, y).predict_proba(X)
    assert not np.array_equal(a, c)


def test_any_label_type_and_proba(blobs):
    X, y = blobs
    labels = np.array(["cat", "dog", "eel"])[y]
    clf = TransferClassifier(TinyNet, unfreeze="all", max_epochs=20, lr=0.02,
                             random_state=0).fit(X, labels)
    assert list(clf.classes_) == ["cat", "dog", "eel"]
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert clf.score(X, labels) > 0.9
    assert clf.decision_function(X).shape == (len(X), 3)


def test_grid_search_over_unfreeze_starts_each_clone_from_pretrained(blobs):
    X, y = blobs
    pretrained = TinyNet()
    pretrained(torch.zeros(1, 5))  # materialise the lazy layer
    before = _state(pretrained)
    search = GridSearchCV(
        TransferClassifier(pretrained, max_epochs=3, random_state=0),
        {"unfreeze": [0, 1, "all"], "lr": [0.01, 0.05]}, cv=2,
    ).fit(X, y)
    assert search.best_score_ > 0.5
    for k, v in pretrained.state_dict().items():
        assert torch.equal(v, before[k])
    # Each fit starts from the same pretrained weights: fitting the best
    # configuration twice from clones gives identical models.
    one = clone(search.best_estimator_).fit(X, y)
    two = clone(search.best_estimator_).fit(X, y)
    np.testing.assert_array_equal(one.predict_proba(X), two.predict_proba(X))


def test_fitted_source_survives_clone_and_cross_validation(blobs):
    """pretrain on the source, fine-tune on the target, under CV."""
    X, y = blobs
    source = TransferClassifier(TinyNet, unfreeze="all", max_epochs=10, lr=0.02,
                                random_state=0).fit(X, y)
    target = TransferClassifier(backbone=source, unfreeze=1, max_epochs=5, lr=0.01,
                                random_state=0)
    cloned = clone(target)
    assert cloned.backbone is source  # not an unfitted copy
    scores = cross_validate(target, X, y, cv=3)["test_score"]
    assert scores.mean() > 0.9  # starts from the trained source backbone
    search = GridSearchCV(target, {"unfreeze": [0, 2]}, cv=2).fit(X, y)
    assert search.best_estimator_.backbone is source
    assert hasattr(source, "backbone_")


def test_pickle_round_trip_and_cpu_loading(blobs):
    X, y = blobs
    clf = TransferClassifier(TinyNet, unfreeze=1, max_epochs=2, random_state=0).fit(X, y)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    # A model pickled on a GPU machine records device_="cuda"; on a machine
    # without CUDA it loads onto the CPU.
    clf.device_ = "cuda"
    state = clf.__getstate__()
    if not torch.cuda.is_available():
        other = TransferClassifier.__new__(TransferClassifier)
        other.__setstate__(state)
        assert other.device_ == "cpu"
        np.testing.assert_array_equal(other.predict(X), restored.predict(X))


def test_regressor_multi_output_and_1d(blobs):
    X, _ = blobs
    y2 = np.c_[X[:, 0] * 2, X[:, 1] - X[:, 2]]
    reg = TransferRegressor(TinyNet, unfreeze="all", max_epochs=40, lr=0.02,
                            random_state=0).fit(X, y2)
    assert reg.predict(X).shape == (len(X), 2)
    assert reg.score(X, y2) > 0.8
    reg.fit(X, y2[:, 0])
    assert reg.predict(X).shape == (len(X),)


@pytest.mark.parametrize("Est", [TransferClassifier, TransferRegressor])
def test_bad_inputs_raise_clear_errors(Est, blobs):
    X, y = blobs
    est = Est(TinyNet, max_epochs=1)
    with pytest.raises(NotFittedError):
        est.predict(X)
    Xnan = X.copy()
    Xnan[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.fit(Xnan, y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        est.fit(X, y[:-1])
    est.fit(X, y)
    with pytest.raises(ValueError, match="X has 4 features, but .* is expecting 5"):
        est.predict(X[:, :4])


def test_one_class_is_rejected(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="only one class"):
        TransferClassifier(TinyNet).fit(X, np.zeros(len(X)))


@pytest.mark.parametrize("params", [
    {"max_epochs": 2},
    {"strategy": "contrastive", "unfreeze": 1, "backbone_lr": 1e-2, "pair_iterations": 2},
])
def test_failed_refit_keeps_the_fitted_model(blobs, params):
    X, y = blobs
    clf = TransferClassifier(TinyNet, random_state=0, **params).fit(X, y)
    before = clf.predict_proba(X)
    with pytest.raises(ValueError):
        clf.fit(X, np.zeros(len(X)))
    # X passes validation (which records its width) before y is rejected.
    with pytest.raises(ValueError, match="only one class"):
        clf.fit(np.hstack([X, X]), np.zeros(len(X)))
    assert clf.n_features_in_ == X.shape[1]
    clf.set_params(unfreeze=99)
    with pytest.raises(ValueError):
        clf.fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X), before)


def test_failed_refit_keeps_the_fitted_extractor(blobs):
    X, _ = blobs
    fe = FeatureExtractor(TinyNet, random_state=0).fit(X)
    before = fe.transform(X)
    fe.set_params(layer="no_such_block")
    with pytest.raises(ValueError, match="no_such_block"):
        fe.fit(np.hstack([X, X]))
    assert fe.n_features_in_ == X.shape[1]
    np.testing.assert_array_equal(fe.transform(X), before)


def test_image_inputs_in_every_layout_give_the_same_features(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    nhwc = rng.randint(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    fe = FeatureExtractor("resnet18", weights=None, random_state=0).fit(nhwc)
    ref = fe.transform(nhwc)
    np.testing.assert_allclose(fe.transform(nhwc.transpose(0, 3, 1, 2)), ref, atol=1e-5)
    np.testing.assert_allclose(fe.transform(nhwc / 255.0), ref, atol=1e-5)
    pil = [Image.fromarray(im) for im in nhwc]
    np.testing.assert_allclose(fe.transform(pil), ref, atol=1e-5)
    paths = []
    for i, im in enumerate(pil):
        paths.append(str(tmp_path / f"{i}.png"))
        im.save(paths[-1])
    np.testing.assert_allclose(fe.transform(paths), ref, atol=1e-5)
    grey = nhwc[..., 0]
    np.testing.assert_allclose(fe.transform(grey), fe.transform(np.repeat(grey[..., None], 3, -1)),
                               atol=1e-5)
    with pytest.raises(ValueError, match="3-D .* or 4-D"):
        fe.transform(nhwc.reshape(4, -1))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        fe.transform([str(tmp_path / "missing.png")])


def test_feature_extractor_pandas_output_and_names(blobs):
    X, _ = blobs
    fe = FeatureExtractor(TinyNet, random_state=0).set_output(transform="pandas").fit(X)
    out = fe.transform(X)
    assert list(out.columns[:2]) == ["featureextractor0", "featureextractor1"]
    assert out.shape == (len(X), 16)
    low = FeatureExtractor(TinyNet, layer="block1", random_state=0).fit(X)
    assert low.transform(X).shape == (len(X), 16)
    with pytest.raises(ValueError, match="valid names are"):
        FeatureExtractor(TinyNet, layer="nope").fit(X)


@pytest.mark.parametrize("make", [
    lambda: TransferClassifier(TinyNet, unfreeze=1, max_epochs=2, random_state=0),
    lambda: TransferRegressor(TinyNet, unfreeze="all", max_epochs=2, random_state=0),
    lambda: FeatureExtractor(TinyNet, layer="block1", random_state=0),
    lambda: FeatureExtractor(TinyNet, precision="bf16", random_state=0),
    lambda: TransferClassifier(TinyNet, strategy="contrastive", unfreeze=1,
                               backbone_lr=1e-2, pair_iterations=2, random_state=0),
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

    from sktl._inference import seeded_torch

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
    from sktl._inference import seeded_torch

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

    from sktl._inference import seeded_torch

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
    import pickle

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
    from sktl._inference import worker_threads

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
