"""The modules the engine trains: heads, freezing, backbone + head."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..backbones import pool_features
from ..losses import Output

__all__ = ["OPTIMIZERS", "DetectorModule", "L2Normalize", "TransferModule", "freeze",
           "logistic_head", "make_head", "normalized_head", "optimizer_class"]

OPTIMIZERS = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


def optimizer_class(optimizer):
    """The torch optimizer class of an ``optimizer`` parameter: a name of
    :data:`OPTIMIZERS` or the class itself."""
    return OPTIMIZERS[optimizer] if isinstance(optimizer, str) else optimizer


def make_head(head, n_in, n_out):
    """The new task head: ``"linear"``, ``"mlp"`` or ``head(n_in, n_out)``."""
    if head == "linear":
        return nn.Linear(n_in, n_out)
    if head == "mlp":
        hidden = int(min(512, max(64, n_in)))
        return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(0.1),
                             nn.Linear(hidden, n_out))
    module = head(n_in, n_out)
    if not isinstance(module, nn.Module):
        raise TypeError(f"head(n_in, n_out) must return a torch.nn.Module, got "
                        f"{type(module).__name__}.")
    return module


def freeze(backbone, unfreeze):
    """Set ``requires_grad`` for ``unfreeze`` top blocks; return those blocks.

    Returns the list of trainable backbone modules, or ``None`` for
    ``unfreeze="all"`` (everything trains).
    """
    n_blocks = len(backbone.blocks)
    if unfreeze == "all" or unfreeze == n_blocks:
        # Every block: parameters outside blocks (ViT's class token and
        # position embedding, a module's own nn.Parameters) train too.
        backbone.module.requires_grad_(True)
        return None
    if unfreeze > n_blocks:
        raise ValueError(
            f"unfreeze={unfreeze} but the backbone has only {n_blocks} blocks "
            f"{backbone.block_names}; use an int in [0, {n_blocks}] or 'all'."
        )
    backbone.module.requires_grad_(False)
    trainable = [m for _, mods in backbone.blocks[n_blocks - unfreeze:] for m in mods]
    for m in trainable:
        m.requires_grad_(True)
    return trainable


class TransferModule(nn.Module):
    """Backbone followed by a head, with frozen blocks kept in eval mode.

    ``forward`` gives the head's outputs (the backbone's features when there
    is no head); :meth:`outputs` gives both, as an
    :class:`~sktl.losses.Output`, for the criterion. ``requires_grad=False``
    alone would still update BatchNorm running statistics and apply dropout
    in frozen blocks whenever the net is in train mode; overriding
    :meth:`train` keeps frozen blocks exactly as pretrained.
    """

    def __init__(self, backbone, head=None, trainable=None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        # A plain list: these are submodules of ``backbone`` already.
        self.__dict__["trainable_blocks"] = trainable

    def outputs(self, *args, **kwargs):
        features = self.backbone(*args, **kwargs)
        features = pool_features(features, attention_mask=kwargs.get("attention_mask"))
        return Output(None if self.head is None else self.head(features), features)

    def forward(self, *args, outputs=False, **kwargs):
        """The head's outputs (the features without a head); the
        :class:`~sktl.losses.Output` with ``outputs=True`` (the engine's
        training steps: through ``forward``, so that a DDP wrapper sees them)."""
        result = self.outputs(*args, **kwargs)
        if outputs:
            return result
        return result.features if result.logits is None else result.logits

    def train(self, mode=True):
        self.training = mode
        if self.head is not None:
            self.head.train(mode)
        if self.trainable_blocks is None:
            self.backbone.train(mode)
        else:
            self.backbone.train(False)
            for m in self.trainable_blocks:
                m.train(mode)
        return self


class DetectorModule(nn.Module):
    """A torchvision detection model as the engine trains it.

    In training mode torchvision's detectors take the target boxes as an
    input and compute their own losses: :meth:`forward` passes them on and
    gives the losses as an :class:`~sktl.losses.Output` (read by
    :class:`~sktl.losses.DetectionLoss`); in eval mode it gives the
    model's detections. Frozen blocks stay in eval mode, as in
    :class:`TransferModule`.

    Parameters
    ----------
    model : torch.nn.Module
        The detector.
    frozen : list of str
        Qualified names of its frozen modules.
    """

    def __init__(self, model, frozen=()):
        super().__init__()
        self.model = model
        self.frozen = list(frozen)

    def forward(self, batch, outputs=False):
        """``batch``: an :class:`~sktl._engine.data.ImageBatch` (training) or
        a list of images (detection)."""
        if not self.training:
            return self.model(getattr(batch, "images", batch))
        losses = self.model(batch.images, batch.targets)
        return Output(None, None, losses) if outputs else losses

    def train(self, mode=True):
        super().train(mode)
        for qualname in self.frozen:
            self.model.get_submodule(qualname).eval()
        return self


class L2Normalize(nn.Module):
    """Scale each embedding to unit length (the space contrastive losses use)."""

    def forward(self, x):
        return nn.functional.normalize(x, dim=1)


def normalized_head(head):
    """The head of a contrastive model: it reads unit-length embeddings, as
    it was fitted on them. One definition for fitting and :func:`sktl.load`."""
    return nn.Sequential(L2Normalize(), head)


def logistic_head(features, targets, n_classes, C, seed, sample_weight=None):
    """Multinomial L2 logistic regression on unit-length features, as an
    ``nn.Linear`` giving the same class probabilities (two classes: logits
    ``(0, w.x + b)``)."""
    from sklearn.linear_model import LogisticRegression

    z = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    model = LogisticRegression(C=C, max_iter=1000, random_state=seed).fit(
        z, targets, sample_weight=sample_weight)
    coef, intercept = model.coef_, model.intercept_
    if n_classes == 2:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    linear = nn.Linear(z.shape[1], n_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(intercept, dtype=torch.float32))
    return linear
