"""Backbone resolution: names, weights, local files, offline errors."""

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyNet
from torch import nn

from sktl import FeatureExtractor, TransferClassifier
from sktl.backbones import WeightsUnavailableError, resolve_backbone


@pytest.mark.parametrize("name, n_blocks, width", [
    ("resnet18", 5, 512),
    ("mobilenet_v3_small", 14, 1024),
    ("vgg11", 9, 4096),
    ("convnext_tiny", 9, 768),
])
def test_torchvision_names_resolve_without_head(name, n_blocks, width):
    bb = resolve_backbone(name, weights=None)
    assert len(bb.blocks) == n_blocks
    assert bb.n_features == width
    out = bb.module.eval()(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, width)


def test_unknown_backbone_name_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown backbone 'resnet19'.*torchvision"):
        resolve_backbone("resnet19")
    with pytest.raises(ValueError, match="weights='IMAGENET9K'.*valid names"):
        resolve_backbone("resnet18", weights="IMAGENET9K")
    with pytest.raises(TypeError, match="backbone must be"):
        resolve_backbone(42)


def test_local_checkpoint_path_loads_weights(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "ckpt.pth")
    save_file(ref.state_dict(), str(tmp_path / "ckpt.safetensors"))
    for path in (tmp_path / "ckpt.pth", tmp_path / "ckpt.safetensors"):
        bb = resolve_backbone("resnet18", weights=str(path))
        torch.testing.assert_close(bb.module.conv1.weight, ref.conv1.weight)


def test_default_weights_use_torchvision_cache_offline(tmp_path, monkeypatch):
    """weights='DEFAULT' goes through torchvision's real download path; a
    file already in $TORCH_HOME/hub/checkpoints is used without network."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    ref = torchvision.models.resnet18(weights=None)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(ref.state_dict(), cache / Path(weights.url).name)
    bb = resolve_backbone("resnet18", weights="DEFAULT")
    torch.testing.assert_close(bb.module.conv1.weight, ref.conv1.weight)
    # The pretrained transforms (resize 256, crop 224) come with the weights.
    assert bb.preprocess(np.zeros((1, 28, 28), np.uint8)).shape == (1, 3, 224, 224)


def test_missing_weights_offline_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError, match="offline.*weights=None"):
        resolve_backbone("resnet18", weights="DEFAULT")


def test_sentence_transformer_missing_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="local model folder"):
        resolve_backbone("sentence-transformers/not-a-cached-model")


def test_module_instance_is_copied_not_trained(blobs):
    X, y = blobs
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    clf = TransferClassifier(net, unfreeze="all", max_epochs=3, random_state=0).fit(X, y)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert clf.backbone_.module is not net


def test_module_class_and_weights_none_reinitialises():
    bb = resolve_backbone(TinyNet)
    assert bb.block_names == ["block1", "block2"]
    net = nn.Sequential(nn.Linear(4, 4))
    reset = resolve_backbone(net, weights=None)
    assert not torch.equal(reset.module[0].weight, net[0].weight)
    layer = nn.Linear(4, 4)  # a one-layer backbone is its own root module
    assert not torch.equal(resolve_backbone(layer, weights=None).module.weight, layer.weight)


def test_fitted_estimator_backbone_and_unfitted_error(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="not fitted.*source"):
        resolve_backbone(TransferClassifier(TinyNet))
    source = TransferClassifier(TinyNet, unfreeze="all", max_epochs=2, random_state=0).fit(X, y)
    bb = resolve_backbone(source)
    assert bb.module is not source.backbone_.module
    for a, b in zip(bb.module.parameters(), source.backbone_.module.parameters()):
        assert torch.equal(a, b)
    fe = FeatureExtractor(source).fit(X)
    assert fe.transform(X).shape == (len(X), 16)
    with pytest.raises(ValueError, match="weights=None would discard"):
        resolve_backbone(source, weights=None)


def test_sentence_transformer_folder(minilm_dir):
    bb = resolve_backbone(minilm_dir)
    assert bb.input_kind == "text"
    assert bb.block_names[:2] == ["embeddings", "encoder.layer.0"]
    assert len(bb.blocks) == 7
    assert bb.n_features == 384
    # Texts cut at another length are other rows: the cache key says so.
    from sktl._cache import extraction_key

    key = extraction_key(bb)
    bb.preprocess.model.max_seq_length = 8
    assert extraction_key(bb) != key


def test_hub_name_resolves_from_the_local_hugging_face_cache(minilm_dir, tmp_path, monkeypatch):
    """A hub name goes through huggingface_hub's real lookup; with the files
    in the standard cache layout it loads offline."""
    import shutil

    repo = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(minilm_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    bb = resolve_backbone("sentence-transformers/all-MiniLM-L6-v2")
    assert bb.spec["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    ref = resolve_backbone(minilm_dir)
    batch = ref.preprocess(["a test sentence"])
    torch.testing.assert_close(bb.module.eval()(**batch), ref.module.eval()(**batch))


def test_named_backbone_is_loaded_once_and_shared_only_for_inference(tmp_path):
    import os

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_resnet18().state_dict(), path)
    images = np.random.RandomState(0).randint(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    first = FeatureExtractor("resnet18", weights=path).fit(images)
    second = FeatureExtractor("resnet18", weights=str(path)).fit(images)
    assert second.backbone_ is first.backbone_  # no reload per clone / fold
    # Training estimators get their own copy, never the shared one.
    clf = TransferClassifier("resnet18", weights=path, unfreeze=1, max_epochs=1,
                             random_state=0).fit(images, [0, 1, 0, 1])
    assert clf.backbone_.module is not first.backbone_.module
    assert clf.backbone_.fingerprint() != first.backbone_.fingerprint()
    # A rewritten checkpoint is another source: loaded again, new weights.
    other = torchvision_resnet18()
    torch.save(other.state_dict(), path)
    os.utime(path, ns=(0, 1))
    third = FeatureExtractor("resnet18", weights=path).fit(images)
    assert third.backbone_ is not first.backbone_
    torch.testing.assert_close(third.backbone_.module.conv1.weight.cpu(), other.conv1.weight)


def torchvision_resnet18():
    import torchvision

    return torchvision.models.resnet18(weights=None)


def test_fingerprint_follows_in_place_changes_and_survives_copies():
    bb = resolve_backbone("resnet18", weights=None)
    before = bb.fingerprint()
    copied = bb.copy()
    assert copied.fingerprint() == before
    with torch.no_grad():
        copied.module.layer4[1].bn2.running_mean.add_(1.0)  # a buffer, in place
    assert copied.fingerprint() != before
    assert bb.fingerprint() == before
    copied.module.load_state_dict(bb.module.state_dict())
    assert copied.fingerprint() == before


def test_first_load_and_memoised_load_give_the_same_fit(tmp_path):
    from sktl.backbones import _LOADED

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_resnet18().state_dict(), path)
    rng = np.random.RandomState(0)
    images = rng.randint(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    y = [0, 1] * 4
    _LOADED.clear()  # the first fit builds the model (drawing random weights)
    params = {"weights": path, "unfreeze": 1, "max_epochs": 2, "random_state": 0,
              "cache": False}
    first = TransferClassifier("resnet18", **params).fit(images, y)
    again = TransferClassifier("resnet18", **params).fit(images, y)
    np.testing.assert_array_equal(first.predict_proba(images), again.predict_proba(images))
