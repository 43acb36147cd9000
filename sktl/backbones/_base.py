"""The :class:`Backbone` record every backbone family resolves to.

A backbone is a pretrained network cut below its task head, together with
what an estimator needs to use it without knowing its architecture:

* ``module`` maps a preprocessed batch to a 2-D ``(n_samples, n_features)``
  tensor of features;
* ``blocks`` lists its trainable stages bottom to top (``unfreeze=k`` trains
  the top ``k``);
* ``preprocess`` turns raw inputs (images, texts, arrays) into that batch;
* ``spec`` is a JSON-able recipe that rebuilds the architecture (for the
  safe save format) and names it in fingerprints.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Backbone", "call_module", "default_blocks", "named_blocks", "pool_features",
           "to_device"]


@dataclass
class Backbone:
    """A resolved backbone: module, ordered blocks, preprocessing, recipe.

    Parameters
    ----------
    module : torch.nn.Module
        Maps ``preprocess(batch)`` (a tensor, or a dict of tensors passed as
        keyword arguments) to features of shape ``(n, n_features)``.
    blocks : list of (str, list of torch.nn.Module)
        Named stages of ``module``, from the input side to the output side.
    preprocess : callable
        Turns a validated batch of raw inputs into the module's input.
    input_kind : {"image", "text", "array"}
        What raw inputs this backbone reads; drives input validation.
    spec : dict
        JSON-able description that rebuilds the architecture.
    n_features : int or None
        Width of the features; ``None`` until probed on data.
    """

    module: nn.Module
    blocks: list
    preprocess: Callable
    input_kind: str
    spec: dict
    n_features: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def block_names(self):
        return [name for name, _ in self.blocks]

    def block_modules(self, index):
        """The modules that make up block ``index`` (an int or a name)."""
        if isinstance(index, str):
            names = self.block_names
            if index not in names:
                raise ValueError(
                    f"layer={index!r} is not a block of this backbone; "
                    f"valid names are {names} (or an int index)."
                )
            index = names.index(index)
        n = len(self.blocks)
        if not -n <= index < n:
            raise ValueError(
                f"layer={index} is out of range for a backbone with {n} blocks "
                f"{self.block_names}."
            )
        return self.blocks[index][1]

    def split(self, n_frozen, probe, device="cpu"):
        """Cut the backbone after its first ``n_frozen`` blocks, checked on ``probe``.

        The frozen bottom's output is what a fit with ``unfreeze=k`` (``k =
        len(blocks) - n_frozen``) stores per sample, and the top trains on it.
        The model is not modified: both halves are new modules that hold the
        backbone's own blocks, so training the top trains the backbone, and
        predictions through the split and through ``module`` may run in
        several threads at once (see :mod:`sktl.backbones._split`).

        Parameters
        ----------
        n_frozen : int
            Blocks below the cut, ``1 <= n_frozen < len(blocks)``. (With none
            frozen there is nothing to store; with all of them frozen the
            stored rows are ``module``'s features themselves.)
        probe : array-like or sequence
            Raw samples (as given to ``preprocess``); the split is checked
            against the full forward pass, in eval mode, on the first two.
            The check also finds the form of a row (``Split.row_spec``).
        device : str or torch.device, default="cpu"
            Where ``module`` is.

        Returns
        -------
        Split or None
            ``None`` when the backbone cannot be cut there: a model
            ``torch.fx`` cannot trace (sentence-transformers encoders other
            than BERT-like ones), a top that reads the raw input again, a
            parameter used on both sides of the cut, or a split that does
            not reproduce the full forward pass on ``probe``.

        Raises
        ------
        ValueError
            If ``n_frozen`` is outside ``1 .. len(blocks) - 1``.

        Examples
        --------
        >>> import numpy as np
        >>> from sktl.backbones import call_module
        >>> from sktl.backbones import resolve_backbone
        >>> bb = resolve_backbone("resnet18", weights=None)
        >>> X = np.zeros((2, 32, 32, 3), dtype=np.uint8)
        >>> split = bb.split(4, X)  # layer4 trains
        >>> split.block_name, split.row_spec.shape
        ('layer3', (256, 2, 2))
        >>> batch = bb.preprocess(X)
        >>> rows = split.rows(split.frozen(batch), batch)
        >>> tuple(call_module(split.top, split.collate(rows)).shape)
        (2, 512)
        """
        from ._split import split_backbone

        return split_backbone(self, n_frozen, probe, device)

    def fingerprint(self):
        """A sha256 of the architecture recipe and every weight and buffer.

        Hashing every weight costs about a second per 300 MB, so the digest
        is remembered together with a cheap token of the tensors' identities
        and in-place version counters: any optimizer step, ``load_state_dict``
        or ``.to()`` changes the token and the weights are hashed again.
        """
        token = _state_token(self.module)
        remembered = self.extra.get("_fingerprint")
        if token is not None and remembered is not None and remembered[0] == token:
            return remembered[1]
        h = hashlib.sha256(repr(sorted(self.spec.items())).encode())
        for name, tensor in self.module.state_dict().items():
            h.update(name.encode())
            t = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d buffers too
            h.update(f"{t.dtype}{tuple(tensor.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        digest = h.hexdigest()
        if token is not None:
            self.extra["_fingerprint"] = (token, digest)
        return digest

    def copy(self):
        """A deep copy that owns its module; a known fingerprint carries over
        (same weights), so copies of a loaded model are not hashed again."""
        remembered = self.extra.get("_fingerprint")
        valid = remembered is not None and remembered[0] == _state_token(self.module)
        duplicate = copy.deepcopy(self)
        token = _state_token(duplicate.module)
        if valid and token is not None:
            duplicate.extra["_fingerprint"] = (token, remembered[1])
        else:
            duplicate.extra.pop("_fingerprint", None)
        return duplicate


def _state_token(module):
    """Identity of every tensor of ``module`` and its in-place version counter,
    or ``None`` when a tensor does not track versions (inference tensors)."""
    try:
        return tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape))
                     for name, t in module.state_dict(keep_vars=True).items())
    except RuntimeError:
        return None


def to_device(batch, device):
    """A preprocessed batch (a tensor, or a dict of tensors) on ``device``."""
    if isinstance(batch, dict):
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return batch.to(device, non_blocking=True)


def call_module(module, batch):
    """Tokenised inputs are dicts passed as keywords; tensors positionally."""
    return module(**batch) if isinstance(batch, dict) else module(batch)


def pool_features(out: Any, pooling: str = "mean", attention_mask=None):
    """Reduce a block's output to one vector per sample.

    4-D feature maps ``(n, c, h, w)`` are pooled over space, 3-D token
    sequences ``(n, t, d)`` over tokens (padding masked out), 2-D outputs
    are returned unchanged.
    """
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if out.ndim == 2:
        return out
    if out.ndim == 4:
        if pooling in ("mean", "avg"):
            return out.mean(dim=(2, 3))
        if pooling == "max":
            return out.amax(dim=(2, 3))
        if pooling == "flatten":
            return out.flatten(1)
        raise ValueError(f"pooling={pooling!r} is not valid for feature maps; "
                         "use 'mean', 'max' or 'flatten'.")
    if out.ndim == 3:
        if pooling == "cls":
            return out[:, 0]
        if pooling == "flatten":
            return out.flatten(1)
        if attention_mask is not None and attention_mask.shape[:2] == out.shape[:2]:
            mask = attention_mask.unsqueeze(-1).to(out.dtype)
        else:
            mask = torch.ones_like(out[..., :1])
        if pooling in ("mean", "avg"):
            return (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if pooling == "max":
            return out.masked_fill(mask == 0, float("-inf")).amax(1)
        raise ValueError(f"pooling={pooling!r} is not valid for token sequences; "
                         "use 'mean', 'max', 'cls' or 'flatten'.")
    return out.flatten(1)


def default_blocks(module: nn.Module):
    """Blocks of an arbitrary module: its top-level children with parameters.

    A lone container child (``nn.Sequential`` wrapped in a model) is opened
    up so that ``unfreeze`` has something finer to count.
    """
    children = [(n, m) for n, m in module.named_children()
                if any(True for _ in m.parameters())]
    # Lazy modules have no parameters to list before they see data; keep
    # every child then so that they still count as blocks.
    if not children:
        children = list(module.named_children())
    if len(children) == 1 and len(list(children[0][1].children())) > 1:
        prefix, inner = children[0]
        return [(f"{prefix}.{n}", mods) for n, mods in default_blocks(inner)]
    return [(n, [m]) for n, m in children] or [("module", [module])]


def named_blocks(root: nn.Module, groups):
    """Turn ``[(name, ["attr.path", ...]), ...]`` into module blocks of ``root``."""
    blocks = []
    for name, paths in groups:
        mods = [root.get_submodule(p) for p in paths]
        blocks.append((name, mods))
    return blocks
