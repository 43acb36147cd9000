"""TransferDetector and make_fashion_scenes (tiny scenes, random weights)."""

import copy
import pickle
import urllib.error

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator

from sktl.backbones import WeightsUnavailableError
from sktl.datasets import make_fashion_scenes
from sktl.detection import TransferDetector, detector_blocks

SCENE = {"canvas_size": 64, "item_size": (20, 30), "max_items": 2}
FAST = {"weights": None, "max_epochs": 1, "min_size": 64, "batch_size": 4}


@pytest.fixture(scope="module")
def day():
    return make_fashion_scenes(6, random_state=0, **SCENE)


@pytest.fixture(scope="module")
def fitted(day):
    images, targets = day
    return TransferDetector(random_state=0, **FAST).fit(images, targets)


def _snapshot_training(monkeypatch):
    """Record the model's weights just before training starts."""
    seen = {}
    original = TransferDetector._train

    def spy(self, model, *args, **kwargs):
        seen["before"] = copy.deepcopy(model.state_dict())
        return original(self, model, *args, **kwargs)

    monkeypatch.setattr(TransferDetector, "_train", spy)
    return seen


def _equal(state_a, state_b, prefix):
    keys = [k for k in state_a if k.startswith(prefix) and "num_batches" not in k]
    assert keys
    return all(torch.equal(state_a[k].cpu(), state_b[k].cpu()) for k in keys)


# -- scenes -------------------------------------------------------------------
def _outside_boxes(target, size):
    outside = np.ones((size, size), bool)
    for x1, y1, x2, y2 in target["boxes"].astype(int):
        outside[y1:y2, x1:x2] = False
    return outside


def test_scenes_shapes_and_tight_boxes(day):
    images, targets = day
    assert len(images) == len(targets) == 6
    for image, target in zip(images, targets):
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert np.array_equal(image[..., 0], image[..., 2])
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == np.float32 and labels.dtype == np.int64
        assert 1 <= len(boxes) == len(labels) <= 2
        assert ((labels >= 0) & (labels <= 9)).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        grey = image[..., 0]
        # Day recipe: background >= 200, item pixels <= 137.
        assert grey[_outside_boxes(target, 64)].min() >= 200
        for x1, y1, x2, y2 in boxes.astype(int):
            item = grey[y1:y2, x1:x2] <= 137
            # tight: every edge row and column of the box holds item pixels
            assert item[0].any() and item[-1].any()
            assert item[:, 0].any() and item[:, -1].any()


def test_scenes_reproducible_and_class_subset():
    a = make_fashion_scenes(3, random_state=1, classes=[2, 7], **SCENE)
    b = make_fashion_scenes(3, random_state=1, classes=[2, 7], **SCENE)
    c = make_fashion_scenes(3, random_state=2, classes=[2, 7], **SCENE)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    assert all(np.array_equal(x["boxes"], y["boxes"]) for x, y in zip(a[1], b[1]))
    assert not all(np.array_equal(x, y) for x, y in zip(a[0], c[0]))
    labels = np.concatenate([t["labels"] for t in a[1] + c[1]])
    assert set(labels) <= {2, 7}


def test_day_and_night_statistics():
    day_images, day_targets = make_fashion_scenes(4, random_state=0, **SCENE)
    night_images, night_targets = make_fashion_scenes(4, environment="night",
                                                      random_state=0, **SCENE)
    for env, images, targets in (("day", day_images, day_targets),
                                 ("night", night_images, night_targets)):
        for image, target in zip(images, targets):
            grey = image[..., 0].astype(float)
            outside = _outside_boxes(target, 64)
            bg, contrast = grey[outside], abs(grey[~outside].mean() - grey[outside].mean())
            if env == "day":
                assert bg.min() >= 200 and bg.std() < 10 and contrast > 50
            else:
                assert bg.mean() < 60 and bg.std() > 8 and contrast < 40


@pytest.mark.parametrize("kwargs, match", [
    ({"n_scenes": 0}, "n_scenes"),
    ({"environment": "dusk"}, "environment"),
    ({"item_size": (20, 80)}, "does not fit"),
    ({"item_size": (30, 20)}, "item_size"),
    ({"classes": [11]}, "classes"),
    ({"split": "val"}, "split"),
])
def test_scenes_validation(kwargs, match):
    args = {"n_scenes": 1, **SCENE, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_fashion_scenes(args.pop("n_scenes"), **args)


# -- detector -----------------------------------------------------------------
def test_fit_predict_score_ssdlite(fitted, day):
    images, targets = day
    assert list(fitted.classes_) == sorted(set(np.concatenate([t["labels"] for t in targets])))
    assert len(fitted.history_) == 1 and np.isfinite(fitted.history_[0, "train_loss"])
    assert fitted.model_name_ == "ssdlite320_mobilenet_v3_large"
    assert fitted.n_blocks_ == len(fitted.block_names_) > 5
    pred = fitted.predict(images[:2])
    assert len(pred) == 2
    for det in pred:
        assert sorted(det) == ["boxes", "labels", "scores"]
        assert det["boxes"].dtype == np.float32 and det["boxes"].shape == (len(det["scores"]), 4)
        assert (det["scores"] >= fitted.score_threshold).all()
        assert np.all(np.diff(det["scores"]) <= 0)
        assert set(det["labels"]) <= set(fitted.classes_)
        assert (det["boxes"][:, 2:] <= 64 + 1e-3).all()  # input pixel coordinates
    assert 0.0 <= fitted.score(images, targets) <= 1.0


def test_score_wires_map_at_half(fitted, day, monkeypatch):
    images, targets = day
    truth = [{"boxes": t["boxes"], "labels": t["labels"],
              "scores": np.ones(len(t["labels"]), np.float32)} for t in targets]
    monkeypatch.setattr(fitted, "predict", lambda X: truth, raising=False)
    assert fitted.score(images, targets) == pytest.approx(1.0)
    shifted = [{**t, "boxes": t["boxes"] + np.float32([15, 15, 15, 15])} for t in truth]
    monkeypatch.setattr(fitted, "predict", lambda X: shifted, raising=False)
    assert fitted.score(images, targets) < 0.5


def test_unfreeze_0_trains_only_new_layers(day, monkeypatch):
    seen = _snapshot_training(monkeypatch)
    det = TransferDetector(random_state=0, **FAST).fit(*day)
    for name, param in det.model_.named_parameters():
        assert param.requires_grad == name.startswith(("head.", "backbone.extra.")), name
    after = det.model_.state_dict()
    # Frozen BatchNorm statistics did not move either (eval mode).
    assert _equal(seen["before"], after, "backbone.features.")
    assert not _equal(seen["before"], after, "head.classification_head.")


def test_unfreeze_all_changes_backbone(day, monkeypatch):
    seen = _snapshot_training(monkeypatch)
    det = TransferDetector(unfreeze="all", random_state=0, **FAST).fit(*day)
    assert all(p.requires_grad for p in det.model_.parameters())
    assert not _equal(seen["before"], det.model_.state_dict(), "backbone.features.0.0.")


def test_unfreeze_top_blocks(day):
    det = TransferDetector(unfreeze=2, random_state=0, **FAST).fit(*day)
    top = tuple(name + "." for name in det.block_names_[-2:])
    below = det.block_names_[-3] + "."
    params = dict(det.model_.named_parameters())
    assert all(p.requires_grad for n, p in params.items() if n.startswith(top))
    assert not any(p.requires_grad for n, p in params.items() if n.startswith(below))
    with pytest.raises(ValueError, match="backbone blocks"):
        TransferDetector(unfreeze=99, **FAST).fit(*day)


def test_reproducible(fitted, day):
    images, targets = day
    again = TransferDetector(random_state=0, **FAST).fit(images, targets)
    assert again.history_[:, "train_loss"] == fitted.history_[:, "train_loss"]
    for a, b in zip(fitted.predict(images[:2]), again.predict(images[:2])):
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        np.testing.assert_array_equal(a["scores"], b["scores"])


def test_fasterrcnn_string_labels_round_trip():
    images, targets = make_fashion_scenes(4, random_state=3, classes=[1, 8], **SCENE)
    names = {1: "trouser", 8: "bag"}
    targets = [{"boxes": t["boxes"], "labels": [names[v] for v in t["labels"]]}
               for t in targets]
    # one image without objects, one grey image, one float tensor
    images = [*images[:3], images[3][..., 0]]
    images.append(torch.rand(3, 48, 40))
    targets.append({"boxes": np.zeros((0, 4)), "labels": []})
    det = TransferDetector("fasterrcnn_mobilenet_v3_large_320_fpn", score_threshold=0.0,
                           random_state=0, **FAST).fit(images, targets)
    assert list(det.classes_) == ["bag", "trouser"]
    assert det.block_names_[-1] == "backbone.fpn"
    for name, param in det.model_.named_parameters():
        assert param.requires_grad == name.startswith(("rpn.", "roi_heads.")), name
    pred = det.predict(images)
    assert len(pred) == 5
    assert all(set(p["labels"]) <= {"bag", "trouser"} for p in pred)
    assert 0.0 <= det.score(images, targets) <= 1.0


def test_ssd300_blocks_and_freezing():
    det = TransferDetector("ssd300_vgg16", weights=None, unfreeze=1)
    name, model = det._make_model(np.array([0, 1]))
    blocks = detector_blocks(model, name)
    assert [b for b, _ in blocks] == ["conv1", "conv2", "conv3", "conv4"]
    # split after each max-pooling: conv4 is VGG's conv4_1..conv4_3 (+ ReLUs)
    assert blocks[3][1] == [f"backbone.features.{i}" for i in range(17, 23)]
    _, frozen = det._freeze(model, name)
    assert frozen == [m for _, mods in blocks[:3] for m in mods]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "backbone.scale_weight" in trainable
    assert {n.split(".")[0] for n in trainable} == {"backbone", "head"}
    assert "backbone.features.19.weight" in trainable
    assert "backbone.features.14.weight" not in trainable
    assert model.head.classification_head.module_list[0].out_channels == 4 * 3
    with pytest.raises(ValueError, match="min_size >= 300"):
        TransferDetector("ssd300_vgg16", weights=None, min_size=64)._make_model(
            np.array([0]))


def test_transfer_from_fitted_detector(fitted, day, monkeypatch):
    source_state = copy.deepcopy(fitted.model_.state_dict())
    night = make_fashion_scenes(3, environment="night", random_state=5, **SCENE)
    seen = _snapshot_training(monkeypatch)
    # New classes (strings): new classification head, backbone carried over.
    relabelled = [{"boxes": t["boxes"], "labels": [f"c{v}" for v in t["labels"]]}
                  for t in night[1]]
    det = TransferDetector(FrozenEstimator(fitted), random_state=1, **FAST)
    det.fit(night[0], relabelled)
    assert _equal(seen["before"], source_state, "backbone.")
    assert _equal(seen["before"], source_state, "head.regression_head.")
    assert not _equal(seen["before"], source_state, "head.classification_head.")
    assert set(det.classes_) == {v for t in relabelled for v in t["labels"]}
    # Same classes: the heads are kept too.
    TransferDetector(fitted, random_state=1, **FAST).fit(*day)
    assert _equal(seen["before"], source_state, "head.classification_head.")
    # The source is untouched.
    assert all(torch.equal(v, fitted.model_.state_dict()[k]) for k, v in source_state.items())
    # clone keeps the fitted source
    assert clone(TransferDetector(fitted)).model is fitted


def test_checkpoint_weights(tmp_path, day, monkeypatch):
    from sktl.detection import _build

    seen = _snapshot_training(monkeypatch)
    ref = _build("ssdlite320_mobilenet_v3_large", 91, 64)  # a COCO-shaped checkpoint
    torch.save(ref.state_dict(), tmp_path / "coco.pth")
    det = TransferDetector(**{**FAST, "weights": str(tmp_path / "coco.pth")}, random_state=0)
    det.fit(*day)
    assert _equal(det.model_.state_dict(), ref.state_dict(), "backbone.features.")
    assert _equal(seen["before"], ref.state_dict(), "head.regression_head.")
    # COCO's 91-class classification head is replaced by one for the task.
    n_anchors = ref.head.classification_head.module_list[0][1].out_channels // 91
    assert det.model_.head.classification_head.module_list[0][1].out_channels == \
        n_anchors * (len(det.classes_) + 1)
    with pytest.raises(ValueError, match="does not fit the architecture"):
        TransferDetector(**{**FAST, "model": "fasterrcnn_mobilenet_v3_large_320_fpn",
                            "weights": str(tmp_path / "coco.pth")}).fit(*day)


def test_default_weights_load_coco_and_replace_heads(monkeypatch, day):
    from sktl import detection

    ref = detection._build("fasterrcnn_mobilenet_v3_large_320_fpn", 91, 64)
    monkeypatch.setattr(detection, "_coco_state_dict", lambda name: ref.state_dict())
    seen = _snapshot_training(monkeypatch)
    det = TransferDetector("fasterrcnn_mobilenet_v3_large_320_fpn", min_size=64,
                           max_epochs=1, random_state=0).fit(*day)
    assert _equal(det.model_.state_dict(), ref.state_dict(), "backbone.")
    assert _equal(seen["before"], ref.state_dict(), "roi_heads.box_head.")
    assert _equal(seen["before"], ref.state_dict(), "rpn.")
    predictor = det.model_.roi_heads.box_predictor
    assert predictor.cls_score.out_features == len(det.classes_) + 1
    assert predictor.bbox_pred.out_features == 4 * (len(det.classes_) + 1)


def test_default_weights_offline_say_what_to_do(tmp_path, monkeypatch, day):
    import torchvision.models._api as tv_api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_network)
    det = TransferDetector(min_size=64, max_epochs=1)
    with pytest.raises(WeightsUnavailableError, match="offline.*weights=None"):
        det.fit(*day)
    assert not hasattr(det, "model_")


def test_clone_params_pickle(fitted, day):
    params = fitted.get_params()
    assert params["weights"] is None and params["min_size"] == 64
    assert clone(fitted).get_params() == params
    restored = pickle.loads(pickle.dumps(fitted))
    a, b = fitted.predict(day[0][:1]), restored.predict(day[0][:1])
    np.testing.assert_array_equal(a[0]["boxes"], b[0]["boxes"])
    np.testing.assert_array_equal(a[0]["labels"], b[0]["labels"])


def test_a_detector_is_not_a_feature_backbone(fitted, day):
    from sktl import FeatureExtractor

    with pytest.raises(TypeError, match="TransferDetector.*holds no feature backbone"):
        FeatureExtractor(fitted).fit(day[0][:1])


def test_failed_refit_keeps_model(fitted, day):
    det = pickle.loads(pickle.dumps(fitted))
    model = det.model_
    det.set_params(model="fasterrcnn_mobilenet_v3_large_320_fpn", weights="missing.pth")
    with pytest.raises(ValueError, match="checkpoint"):
        det.fit(*day)
    assert det.model_ is model


@pytest.mark.parametrize("images, targets, match", [
    ([], [], "empty"),
    ("ab", [], "list of images"),
    ([np.zeros((8, 8, 3), np.float32)], [{}], "uint8"),
    ([np.zeros((8, 8, 3), np.uint8)] * 2, [{"boxes": [[0, 0, 4, 4]], "labels": [0]}],
     "different lengths"),
    ([np.zeros((8, 8, 3), np.uint8)], [{"boxes": [[0, 0, 4]], "labels": [0]}], r"\(n, 4\)"),
    ([np.zeros((8, 8, 3), np.uint8)], [{"boxes": [[4, 0, 2, 4]], "labels": [0]}], "x2 > x1"),
    ([np.zeros((8, 8, 3), np.uint8)], [{"boxes": [[0, 0, np.nan, 4]], "labels": [0]}],
     "NaN"),
    ([np.zeros((8, 8, 3), np.uint8)], [{"boxes": [[0, 0, 4, 4]], "labels": [0, 1]}],
     "labels"),
    ([np.zeros((8, 8, 3), np.uint8)], [{"boxes": [[0, 0, 4, 4]]}], "'labels'"),
    ([np.zeros((8, 8, 3), np.uint8)], [{"boxes": np.zeros((0, 4)), "labels": []}],
     "no box"),
    ([np.zeros((8, 8, 3), np.uint8)], [{"boxes": [[-3, 0, 4, 4]], "labels": [0]}],
     "outside its 8x8 image"),
    ([np.zeros((8, 6, 3), np.uint8)], [{"boxes": [[0, 0, 7.5, 4]], "labels": [0]}],
     "outside its 6x8 image"),
    ([np.zeros((8, 8, 3), np.uint8)] * 2,
     [{"boxes": [[0, 0, 4, 4]], "labels": [1]}, {"boxes": [[0, 0, 4, 4]], "labels": ["a"]}],
     "all numbers or all strings"),
    ([np.zeros((8, 8, 3), np.uint8)], [{"boxes": [[0, 0, 4, 4]], "labels": [np.nan]}],
     "NaN"),
    ([np.zeros((8, 8, 3), np.uint8)],
     [{"boxes": [[0, 0, 4, 4]], "labels": [np.float32("nan")]}], "NaN"),
    # A mix within every target: numpy alone would make it ["1", "cat"].
    ([np.zeros((8, 8, 3), np.uint8)] * 2,
     [{"boxes": [[0, 0, 4, 4], [1, 1, 5, 5]], "labels": [1, "cat"]}] * 2,
     r"got a mix \(e.g. 1 and 'cat'\)"),
])
def test_bad_inputs(images, targets, match):
    with pytest.raises(ValueError, match=match):
        TransferDetector(**FAST).fit(images, targets)


def test_errors():
    scenes = ([np.zeros((8, 8, 3), np.uint8)], [{"boxes": [[0, 0, 4, 4]], "labels": [0]}])
    with pytest.raises(ValueError, match="Unknown detection model.*ssd300_vgg16"):
        TransferDetector("yolo", **{k: v for k, v in FAST.items()}).fit(*scenes)
    with pytest.raises(ValueError, match="not fitted"):
        TransferDetector(TransferDetector(), **FAST).fit(*scenes)
    with pytest.raises(NotFittedError):
        TransferDetector().predict(scenes[0])
    with pytest.raises(ValueError, match="lr"):
        TransferDetector(lr=-1).fit(*scenes)
    source = TransferDetector(lr=0.01)
    with pytest.raises(ValueError, match="no nested parameters"):
        TransferDetector(source).set_params(model__lr=123.0)
    assert source.lr == 0.01


def test_a_lone_last_image_joins_the_batch_before_it(day):
    from sktl.detection import _batches

    assert _batches(list(range(5)), 4) == [[0, 1, 2, 3, 4]]
    assert _batches(list(range(6)), 4) == [[0, 1, 2, 3], [4, 5]]
    assert _batches([7], 4) == [[7]]
    images, targets = day
    # SSDlite's training BatchNorm layers fail on a batch of one image.
    det = TransferDetector(random_state=0, **{**FAST, "batch_size": 5}).fit(images, targets)
    assert len(det.history_) == 1
    with pytest.raises(ValueError, match="at least 2 images"):
        TransferDetector(random_state=0, unfreeze="all", **FAST).fit(images[:1], targets[:1])
    with pytest.raises(ValueError, match=r"batch_size >= 2 \(got batch_size=1\)"):
        TransferDetector(random_state=0, **{**FAST, "batch_size": 1}).fit(images, targets)


def test_boxes_may_reach_a_pixel_past_the_border():
    from sktl.detection import _validate_images, _validate_targets

    images = _validate_images([np.zeros((8, 8, 3), np.uint8)])
    _validate_targets([{"boxes": [[-0.5, 0, 8.7, 8.3], [0, 0, 4, 4]], "labels": [0, 1]}],
                      images)
    with pytest.raises(ValueError, match="outside"):
        _validate_targets([{"boxes": [[0, 0, 9.5, 4]], "labels": [0]}], images)
    with pytest.raises(ValueError, match="all numbers or all strings"):
        TransferDetector(**FAST).fit([np.zeros((8, 8, 3), np.uint8)] * 2,
                                     [{"boxes": [[0, 0, 4, 4]], "labels": ["a"]},
                                      {"boxes": [[0, 0, 4, 4]], "labels": [None]}])


@pytest.mark.integration
def test_ssd300_fit_predict():
    """SSD300 at its own 300x300 input (slower: about 10 s on 2 cores)."""
    images, targets = make_fashion_scenes(2, random_state=0, **SCENE)
    det = TransferDetector("ssd300_vgg16", weights=None, max_epochs=1, score_threshold=0.2,
                           random_state=0).fit(images, targets)
    assert det.block_names_ == ["conv1", "conv2", "conv3", "conv4"]
    pred = det.predict(images)
    assert len(pred) == 2 and all(p["boxes"].shape[1:] == (4,) for p in pred)


def test_adapt_batchnorm_uses_target_statistics(fitted):
    """AdaBN: the frozen blocks' BatchNorm statistics become those of the new
    images; their weights (and the source) stay unchanged."""
    night_images, night_targets = make_fashion_scenes(3, environment="night",
                                                      random_state=5, **SCENE)
    source_state = copy.deepcopy(fitted.model_.state_dict())
    det = TransferDetector(fitted, adapt_batchnorm=True, random_state=0,
                           **{**FAST, "batch_size": 8}).fit(night_images, night_targets)
    plain = TransferDetector(fitted, random_state=0, **FAST).fit(night_images, night_targets)
    model = det.model_
    conv, bn = list(model.backbone.features[0][0])[:2]  # MobileNetV3 stem: conv, BN
    assert isinstance(bn, torch.nn.BatchNorm2d)
    with torch.no_grad():
        images = [torch.from_numpy(i).permute(2, 0, 1) / 255.0 for i in night_images]
        x = conv(model.transform(images)[0].tensors)  # what the BN normalises
    torch.testing.assert_close(bn.running_mean, x.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, x.var(dim=(0, 2, 3), unbiased=True),
                               rtol=1e-3, atol=1e-5)
    # Weights of frozen blocks are the source's; without AdaBN the statistics are too.
    assert _equal(source_state, model.state_dict(), "backbone.features.0.0.0.weight")
    assert _equal(source_state, plain.model_.state_dict(), "backbone.features.")
    assert not torch.equal(bn.running_mean, source_state[
        next(k for k in source_state if k.endswith("running_mean"))])
    # the source detector is untouched
    assert all(torch.equal(v, fitted.model_.state_dict()[k]) for k, v in source_state.items())


# -- the safe format ----------------------------------------------------------
def test_a_detector_saves_in_the_safe_format(fitted, day, tmp_path):
    import json

    import sktl
    from sktl.exceptions import SaveFormatError

    images, _ = day
    sktl.save(fitted, tmp_path / "det")
    loaded = sktl.load(tmp_path / "det")
    assert isinstance(loaded, TransferDetector)
    assert list(loaded.classes_) == list(fitted.classes_)
    assert loaded.block_names_ == fitted.block_names_
    for a, b in zip(loaded.predict(images), fitted.predict(images)):
        assert np.array_equal(a["labels"], b["labels"])
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        np.testing.assert_array_equal(a["scores"], b["scores"])
    # A loaded detector is a source for another fit, at its own image size.
    again = TransferDetector(loaded, random_state=1, max_epochs=1, batch_size=4).fit(*day)
    assert again._min_size == 64
    # A recipe sktl.save does not write is refused.
    config = json.loads((tmp_path / "det" / "config.json").read_text())
    config["backbone"]["name"] = "yolo"
    (tmp_path / "det" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SaveFormatError, match="Cannot rebuild a detector.*yolo"):
        sktl.load(tmp_path / "det")


def test_a_detector_fitted_from_a_source_saves_by_architecture(fitted, day, tmp_path):
    import sktl

    det = TransferDetector(fitted, random_state=1, max_epochs=1, batch_size=4).fit(*day)
    sktl.save(det, tmp_path / "det")
    loaded = sktl.load(tmp_path / "det")
    assert loaded.model == "ssdlite320_mobilenet_v3_large" and loaded.weights is None
    images = day[0][:2]
    for a, b in zip(loaded.predict(images), det.predict(images)):
        np.testing.assert_array_equal(a["scores"], b["scores"])
