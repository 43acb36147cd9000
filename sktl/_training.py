"""Training pieces: heads, freezing, the backbone+head module, the skorch net."""

from __future__ import annotations

import contextlib
import signal
import threading

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping, ProgressBar
from skorch.helper import predefined_split
from torch import nn

from ._inference import call_module, to_device
from .backbones import pool_features
from .backbones._inputs import take
from .exceptions import DivergenceError

__all__ = ["RawDataset", "TransferModule", "build_net", "freeze", "make_head"]

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

    ``requires_grad=False`` alone would still update BatchNorm running
    statistics and apply dropout in frozen blocks whenever the net is in
    train mode; overriding :meth:`train` keeps frozen blocks exactly as
    pretrained.
    """

    def __init__(self, backbone, head, trainable=None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        # A plain list: these are submodules of ``backbone`` already.
        self.__dict__["trainable_blocks"] = trainable

    def forward(self, *args, **kwargs):
        features = self.backbone(*args, **kwargs)
        features = pool_features(features, attention_mask=kwargs.get("attention_mask"))
        if self.training and getattr(self, "domain", None) is not None:
            # Read by the net's domain loss right after this forward pass.
            self.__dict__["last_features"] = features
        return self.head(features)

    def train(self, mode=True):
        self.training = mode
        self.head.train(mode)
        if self.trainable_blocks is None:
            self.backbone.train(mode)
        else:
            self.backbone.train(False)
            for m in self.trainable_blocks:
                m.train(mode)
        return self


class RawDataset(torch.utils.data.Dataset):
    """Indices into raw inputs; the collate function preprocesses a batch."""

    def __init__(self, X, y, preprocess):
        self.X, self.y, self.preprocess = X, y, preprocess

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return i

    def collate(self, indices):
        idx = np.asarray(indices)
        return self.preprocess(take(self.X, idx)), self.y[idx]


def diverged(value, where, hint):
    """The error for a loss that stopped being finite: where, and what to lower."""
    return DivergenceError(
        f"Training diverged: the loss became {value} at {where}. {hint}, e.g. "
        "ten times lower, or check the inputs for extreme values (unscaled features, "
        "outliers); the previous fitted model, if any, is unchanged.")


@contextlib.contextmanager
def _watch_sigint():
    """Record whether a real SIGINT (Ctrl-C) arrives meanwhile.

    skorch's ``partial_fit`` catches every ``KeyboardInterrupt``, because
    skorch's own ``EarlyStopping`` (and any callback that stops training)
    raises one to end the epoch loop. Only a signal tells a user's Ctrl-C
    apart. The previous handler still runs (it raises the
    KeyboardInterrupt). Signals reach only the main thread, where alone a
    handler can be set: elsewhere nothing is watched.
    """
    seen = {"sigint": False}
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):  # ignored, or set outside Python: leave it
        yield seen
        return

    def handler(signum, frame):
        seen["sigint"] = True
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL would end the process: stop the fit as Python's default does
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


class _TransferNet(NeuralNet):
    """skorch net that hands only trainable parameters to the optimizer and
    lets a Ctrl-C reach the caller.

    skorch's ``partial_fit`` catches ``KeyboardInterrupt`` (the way its
    callbacks stop training) and returns a half-trained net as if training
    had finished. A real Ctrl-C during training is raised again here, once
    skorch's ``on_train_end`` callbacks have run, so that ``fit`` (and a
    ``GridSearchCV`` around it) stops and the estimator's previous fitted
    state is restored; early stopping still ends training normally.
    """

    def get_all_learnable_params(self):
        for name, param in super().get_all_learnable_params():
            if param.requires_grad:
                yield name, param

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        with _watch_sigint() as seen:
            super().partial_fit(X, y, classes, **fit_params)
        if seen["sigint"]:
            raise KeyboardInterrupt
        return self

    def infer(self, x, **fit_params):
        return call_module(self.module_, to_device(x, self.device))


class _FiniteLoss(Callback):
    """Stop training with a :class:`~sktl.exceptions.DivergenceError` as soon
    as a batch's loss is NaN or infinite: the weights are lost by then, and
    predictions would be NaN (or the first class) without a word."""

    def __init__(self, hint):
        self.hint = hint

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if loss is not None and not torch.isfinite(loss.detach()).all():
            epoch = len(net.history)
            n_batch = len(net.history[-1, "batches"])
            phase = "" if training else " (validation)"
            raise diverged(loss.item(), f"epoch {epoch}, batch {n_batch}{phase}", self.hint)


class _DomainProgress(Callback):
    """Tell the domain loss how far training is (DANN's gradient ramp)."""

    def on_epoch_begin(self, net, **kwargs):
        domain = getattr(net.module_, "domain", None)
        if domain is not None and hasattr(domain, "progress"):
            domain.progress = (len(net.history) - 1) / max(net.max_epochs, 1)


class _DomainNet(_TransferNet):
    """Cross-entropy on the labelled rows plus, while training, the module's
    domain loss between the features of labelled (source) rows and
    unlabelled (target, label -1) rows of the batch."""

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y_true = torch.as_tensor(y_true, device=y_pred.device)
        labelled = y_true >= 0
        if labelled.any():
            loss = nn.functional.cross_entropy(y_pred[labelled], y_true[labelled])
        else:  # a batch of target rows only: no label to learn from
            loss = y_pred.sum() * 0.0
        module = self.module_
        if training:
            features = module.__dict__.pop("last_features")
            loss = loss + module.domain(features[labelled], features[~labelled])
        return loss


def build_net(module, criterion, *, lr, backbone_lr, optimizer, max_epochs,
              batch_size, device, valid_dataset, early_stopping, collate, verbose,
              domain=False):
    """Configure the skorch net that trains ``module`` (or a bare head)."""
    hint = (f"Lower lr (now {lr:g})" if backbone_lr == lr else
            f"Lower lr (now {lr:g}) and backbone_lr (now {backbone_lr:g})")
    callbacks = [("finite_loss", _FiniteLoss(hint))]
    if valid_dataset is not None:
        patience = 5 if early_stopping is True else int(early_stopping)
        callbacks.append(("early_stopping", EarlyStopping(patience=patience,
                                                           load_best=True)))
    if verbose >= 2:
        callbacks.append(("progress_bar", ProgressBar()))
    if domain:
        callbacks.append(("domain_progress", _DomainProgress()))
    optimizer_cls = optimizer_class(optimizer)
    iterator_kwargs = {}
    if collate is not None:
        iterator_kwargs = {"iterator_train__collate_fn": collate,
                           "iterator_valid__collate_fn": collate}
    net_cls = _DomainNet if domain else _TransferNet
    return net_cls(
        module,
        criterion=criterion,
        optimizer=optimizer_cls,
        lr=lr,
        optimizer__param_groups=[("backbone.*", {"lr": backbone_lr})],
        max_epochs=max_epochs,
        batch_size=batch_size,
        iterator_train__shuffle=True,
        train_split=predefined_split(valid_dataset) if valid_dataset is not None else None,
        callbacks=callbacks,
        device=device,
        verbose=int(verbose >= 1),
        **iterator_kwargs,
    )
