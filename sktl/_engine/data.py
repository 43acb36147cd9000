"""What the engine trains on: rows of inputs with their targets, and the
order in which batches visit them.

A :class:`Rows` dataset yields indices; its ``collate`` turns a batch of
indices into ``(input batch, target dict)``: the raw inputs go through the
backbone's preprocessing (and, for training rows, the ``augment`` hook)
inside the data loader, so that image files are decoded in its worker
processes when it has some; precomputed frozen outputs go through the
split's ``collate``. Targets are a dict of per-row numpy arrays (``"y"``,
``"sample_weight"``, ``"soft"``), sliced per batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..backbones import take

__all__ = ["BalancedBatches", "ImageBatch", "Rows", "ShuffledBatches", "TargetedImages"]


class Rows(torch.utils.data.Dataset):
    """Rows ``indices`` of ``inputs`` and ``targets``.

    Parameters
    ----------
    inputs : array-like or list
        Raw inputs (images, texts, arrays) or precomputed frozen outputs.
    targets : dict of str to ndarray
        Per-row targets, first axis aligned with ``inputs``.
    to_batch : callable
        ``to_batch(rows)`` or, with ``augment``, ``to_batch(rows,
        augment=augment)``: the model's input for a list/array of rows.
    indices : array-like of int or None
        The rows of ``inputs`` this dataset holds (all by default).
    augment : callable or None
        Applied by ``to_batch`` to training batches only.
    """

    def __init__(self, inputs, targets, to_batch, indices=None, augment=None):
        self.inputs, self.targets, self.to_batch = inputs, targets, to_batch
        n = len(next(iter(targets.values())))
        self.indices = np.arange(n) if indices is None else np.asarray(indices)
        self.augment = augment

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, position):
        return int(self.indices[position])

    def collate(self, idx):
        idx = np.asarray(idx)
        rows = take(self.inputs, idx)
        batch = (self.to_batch(rows) if self.augment is None
                 else self.to_batch(rows, augment=self.augment))
        target = {name: torch.from_numpy(np.ascontiguousarray(values[idx]))
                  for name, values in self.targets.items()}
        return batch, target


class BalancedBatches(torch.utils.data.Sampler):
    """Class-balanced batches for contrastive losses: every pair counts.

    Slots go round the classes in a random order, each class serving its
    examples from a reshuffled queue, so every class has about
    ``batch_size / n_classes`` members (positives for each other) and rare
    classes are not drowned. An epoch draws each example about
    ``n_iterations`` times: ``ceil(n_iterations * n / batch_size)`` batches
    (so examples of smaller classes are drawn more often).

    Parameters
    ----------
    labels : ndarray of int
        Class codes ``0..k-1`` of the dataset's rows.
    batch_size : int
    n_iterations : int
        SetFit's ``num_iterations``: draws per example and epoch, on average.
    rng : numpy.random.RandomState
        Advances with every epoch drawn.
    """

    def __init__(self, labels, batch_size, n_iterations, rng):
        self.labels = np.asarray(labels)
        self.batch_size, self.n_iterations, self.rng = batch_size, n_iterations, rng

    def __len__(self):
        return math.ceil(self.n_iterations * len(self.labels) / self.batch_size)

    def __iter__(self):
        rng, labels = self.rng, self.labels
        n_classes = labels.max() + 1
        by_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
        queues = [[] for _ in range(n_classes)]

        def draw(c):
            if not queues[c]:
                queues[c] = list(rng.permutation(by_class[c]))
            return queues[c].pop()

        size = min(self.batch_size, len(labels))
        for _ in range(len(self)):
            classes = np.concatenate([rng.permutation(n_classes)
                                      for _ in range(math.ceil(size / n_classes))])[:size]
            idx = []
            for c in classes:
                i = draw(c)
                if i in idx:  # a class smaller than its share: queue wrapped round
                    queues[c].insert(0, i)
                    i = next((j for j in rng.permutation(by_class[c]) if j not in idx), None)
                if i is not None:
                    idx.append(int(i))
            yield idx


class ImageBatch:
    """Images of different sizes with their per-image targets, as one batch:
    what a torchvision detector reads in training mode. Its length is the
    number of images (skorch counts rows with ``len``); ``to(device)`` moves
    the tensors."""

    def __init__(self, images, targets):
        self.images, self.targets = images, targets

    def __len__(self):
        return len(self.images)

    def to(self, device, non_blocking=False):
        return ImageBatch([im.to(device, non_blocking=non_blocking) for im in self.images],
                          [{k: v.to(device, non_blocking=non_blocking) for k, v in t.items()}
                           for t in self.targets])


class TargetedImages(torch.utils.data.Dataset):
    """Images with per-image targets that the model reads as an input (a
    torchvision detector's boxes and labels): a batch is ``(ImageBatch,
    {})``, the criterion receiving no target of its own."""

    def __init__(self, images, targets):
        self.images, self.targets = images, targets

    def __len__(self):
        return len(self.images)

    def __getitem__(self, position):
        return position

    def collate(self, idx):
        return ImageBatch([self.images[i] for i in idx], [self.targets[i] for i in idx]), {}


def batch_indices(order, batch_size):
    """``order`` cut into batches of ``batch_size``; a lone last row joins the
    batch before it (BatchNorm in train mode cannot learn from one row)."""
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        lone = batches.pop()
        batches[-1] = list(batches[-1]) + list(lone)
    return batches


class ShuffledBatches(torch.utils.data.Sampler):
    """Shuffled batches (``torch.randperm``, so seeded with torch) of
    ``batch_size`` rows, with no batch of one row (:func:`batch_indices`)."""

    def __init__(self, n, batch_size):
        self.n, self.batch_size = n, batch_size

    def __len__(self):
        return len(batch_indices(list(range(self.n)), self.batch_size))

    def __iter__(self):
        yield from batch_indices(torch.randperm(self.n).tolist(), self.batch_size)
