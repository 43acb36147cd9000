"""Frozen blocks run once: their per-sample outputs, through the feature cache.

With ``unfreeze=k`` the frozen blocks sit in eval mode with no trainable
parameter, so their output for a sample never changes during a fit.
Running them once (:meth:`Backbone.split <sktl.backbones.Backbone.split>`
cuts the backbone, for every family, without touching its model) and
training the top on their stored rows gives the same model as running them
every epoch, at the cost of one forward pass instead of ``max_epochs``. The
rows go through the feature cache, so CV folds, grid points and the
estimator's own predictions share them. Every training mode uses this one
component.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._cache import RowSpec, extraction_key, sample_hashes
from ..backbones import (
    Split,
    call_module,
    n_samples,
    pool_features,
    take,
    to_device,
)
from .inference import batch_order, in_batches

__all__ = ["PREFIX_MAX_BYTES", "FrozenReader", "frozen_rows", "precompute",
           "prefix_storage", "split_at"]

#: Most bytes of frozen-block outputs held in memory for one fit; beyond it
#: the fit runs through the frozen blocks every step instead.
PREFIX_MAX_BYTES = 2 << 30
#: Samples whose rows a prediction holds at a time (token states of long
#: texts take tokens x width floats each).
CHUNK = 2048


def prefix_storage(nbytes, cache):
    """Where ``nbytes`` of frozen-block outputs for one fit go: ``(held in
    memory, cache to store them in)``. Beyond :data:`PREFIX_MAX_BYTES` they
    are not held (the caller trains through the frozen blocks); beyond half
    of the cache they are held but not stored there, where they would flush
    every other row."""
    if nbytes > PREFIX_MAX_BYTES:
        return False, None
    if cache is not None and nbytes > cache.max_bytes // 2:
        return True, None
    return True, cache


def frozen_rows(split, preprocess, X, *, cache, key, batch_size, device, progress=False,
                max_bytes=None, bytes_before=0):
    """The rows of ``split.frozen`` for every sample of ``X`` (a list of
    float32 arrays), read from ``cache`` where stored, computed otherwise;
    ``None`` as soon as they pass ``max_bytes`` (the size of token states
    is known only once computed: texts differ in length).

    Computed rows are stored unless they (with ``bytes_before``, what
    earlier chunks of the same input took) pass half of the cache.
    """
    hashes = sample_hashes(X) if cache is not None else None
    rows = (cache.lookup(key, hashes, like=split.row_spec) if cache is not None
            else [None] * n_samples(X))
    missing = np.asarray([i for i, r in enumerate(rows) if r is None], dtype=np.int64)
    nbytes = sum(r.nbytes for r in rows if r is not None)
    if len(missing):
        order = batch_order(preprocess, take(X, missing))  # longest first: little padding
        if order is not None:
            missing = missing[order]
        split.frozen.eval()

        def step(idx):
            nonlocal nbytes
            batch = to_device(preprocess(take(X, idx)), device)
            for i, row in zip(idx, split.rows(call_module(split.frozen, batch), batch)):
                rows[i] = np.ascontiguousarray(row, dtype=np.float32)
                nbytes += rows[i].nbytes
            return max_bytes is None or nbytes <= max_bytes  # False: stop, too large

        desc = "features" if split.block_name is None else "frozen blocks"
        with torch.inference_mode():
            if not in_batches(missing, batch_size, device, step, progress=progress,
                              desc=desc):
                return None
        if cache is not None and prefix_storage(bytes_before + nbytes, cache)[1] is not None:
            cache.store(key, [hashes[i] for i in missing], [rows[i] for i in missing])
    return rows


class _Pooled(nn.Module):
    """The backbone's pooled features (what a head reads)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return pool_features(self.module(*args, **kwargs),
                             attention_mask=kwargs.get("attention_mask"))


def split_at(backbone, n_frozen, probe, device):
    """``backbone`` cut after ``n_frozen`` blocks: every block frozen (the
    rows are its pooled features, the top the identity), or
    :meth:`Backbone.split <sktl.backbones.Backbone.split>`; None if it
    cannot be cut there."""
    if n_frozen == len(backbone.blocks):
        return Split(None, _Pooled(backbone.module), nn.Identity(),
                     RowSpec(np.float32, (backbone.n_features,)))
    return backbone.split(n_frozen, probe, device)


def _key(backbone, split):
    # Pooled features: FeatureExtractor's key, so both share the rows.
    if split.block_name is None:
        return extraction_key(backbone, layer=None, pooling="auto")
    return extraction_key(backbone, layer=split.block_name, pooling=None,
                          rows=type(split).__name__)


def precompute(backbone, X, n_frozen, *, cache, batch_size, device, progress=False):
    """What the first ``n_frozen`` blocks output for ``X``, run once:
    ``(split, rows, key)``, or None to train through the frozen blocks (a
    backbone that cannot be cut there, rows beyond
    :data:`PREFIX_MAX_BYTES`, or a cache with ``prefix=False``)."""
    partial = n_frozen < len(backbone.blocks)
    if n_frozen == 0 or (partial and cache is not None and not cache.prefix):
        return None
    split = split_at(backbone, n_frozen, X, device)
    if split is None:
        return None
    max_bytes, store = None, cache
    if partial:
        if split.row_nbytes is None:  # token states: their size is known once computed
            max_bytes = PREFIX_MAX_BYTES
        else:
            held, store = prefix_storage(split.row_nbytes * n_samples(X), cache)
            if not held:
                return None
    # The key names what the rows are, whether or not they are stored now
    # (predictions look them up, and store those of small inputs).
    key = None if cache is None else _key(backbone, split)
    rows = frozen_rows(split, backbone.preprocess, X, cache=store, key=key,
                       batch_size=batch_size, device=device, progress=progress,
                       max_bytes=max_bytes)
    return None if rows is None else (split, rows, key)


def _frozen_token(module, trainable):
    """Identity and in-place version of every tensor outside ``trainable``."""
    skip = {id(t) for m in trainable or () for t in (*m.parameters(), *m.buffers())}
    return tuple((name, t.data_ptr(), t._version)
                 for name, t in module.state_dict(keep_vars=True).items()
                 if id(t) not in skip)


class FrozenReader:
    """Predict through the feature cache: what the frozen part of a fitted
    model outputs for a sample is read from (or added to) the rows stored
    while training, and only the trained top runs.

    In a cross-validation every sample is in some training fold, so scoring
    a held-out fold then costs no backbone pass at all. The rows were keyed
    before training; they stay valid while the frozen tensors are the very
    ones of the fitted model (the reader is made after training: same
    objects, no in-place change since), which :meth:`valid` checks. Nothing
    here changes the model: several threads may predict at once.

    Parameters
    ----------
    split : sktl.backbones.Split
        The cut the fit trained on (``unfreeze=0``: a stand-in whose
        ``frozen`` is the whole backbone and whose ``top`` is the identity).
    top : torch.nn.Module
        The trained top (with the head).
    key : bytes
        The rows' key in the cache.
    module, trainable
        The backbone's module and its trained blocks.
    """

    def __init__(self, split, top, key, module, trainable):
        self.split, self.top, self.key = split, top, key
        self._module, self._trainable = module, trainable
        self._token = _frozen_token(module, trainable)

    def valid(self):
        return _frozen_token(self._module, self._trainable) == self._token

    def outputs(self, preprocess, X, cache, *, batch_size, device, progress, autocast):
        """The top's outputs for ``X``, the frozen rows read chunk by chunk."""
        from .inference import forward_batches

        n, parts, seen = n_samples(X), [], 0
        for first in range(0, n, CHUNK):
            chunk = take(X, np.arange(first, min(first + CHUNK, n)))
            rows = frozen_rows(self.split, preprocess, chunk, cache=cache, key=self.key,
                               batch_size=batch_size, device=device, progress=progress,
                               bytes_before=seen)
            seen += sum(r.nbytes for r in rows)
            with autocast():
                parts.append(forward_batches(self.top, self.split.collate, rows,
                                             batch_size=batch_size, device=device))
        return np.concatenate(parts)
