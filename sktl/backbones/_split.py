"""Cut a backbone into a frozen bottom and a trainable top that share its weights.

With ``unfreeze=k`` the bottom blocks are frozen (eval mode, no trainable
parameter), so their output for a sample never changes during a fit:
running them once, storing their per-sample outputs (the feature cache)
and training the top on those stored rows gives the same model as running
them every step, for one forward pass instead of one per epoch.

:meth:`Backbone.split <sktl.backbones.Backbone.split>` makes that cut for
every backbone family, and never modifies the backbone's model in place:
no layer is swapped for a stand-in, not even for the duration of a call.
The two halves are *new* module trees that reuse the backbone's own block
objects (hence its weights), so

* predictions through the full model and through a split may run in
  several threads at once: nothing needs a lock, no thread ever sees a
  half-cut model;
* a fitted model shared by several estimators (or cached between fits)
  stays whole, whatever is split from it;
* training the split's top trains the backbone itself: its parameters are
  the very tensors of the backbone's top blocks.

Two mechanisms build the halves:

* torchvision CNNs and traceable custom modules: :func:`traced_split`
  traces the model with ``torch.fx``, each block one call, and cuts the
  graph at the last frozen block's output (the bottom keeps what that
  output depends on, the top what depends on it);
* BERT-like sentence-transformers encoders, which ``torch.fx`` cannot
  trace: :func:`~sktl.backbones._sentence_transformers.split_sentence_encoder`
  builds parallel copies of the model's containers (see :func:`sharing_copy`)
  whose layer lists hold only the frozen, or only the unfrozen, layers.

A split is checked against the full forward pass on a probe batch before it
is returned (:func:`verified`): a model whose top reads the raw input again,
whose weights are used on both sides of the cut, or whose forward pass the
cut does not reproduce, gives ``None``.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

from .._cache import RowSpec
from ._inputs import n_samples, take

__all__ = ["Split", "TokenSplit", "sharing_copy", "split_backbone", "traced_split", "verified"]

#: Samples of the probe batch a split is checked on.
PROBE_SIZE = 2


@dataclass
class Split:
    """The frozen bottom and the trainable top of a backbone, cut after a block.

    Made by :meth:`Backbone.split <sktl.backbones.Backbone.split>`. The
    stored form of a sample is a *row*: ``rows`` turns the frozen part's
    output for a batch into rows, ``collate`` a list of rows (from the
    feature cache, in any grouping) into what ``top`` reads::

        out = call_module(split.frozen, backbone.preprocess(X_batch))
        stored = split.rows(out, batch)           # one float32 array per sample
        features = call_module(split.top, split.collate(stored))

    equals ``call_module(backbone.module, batch)`` in eval mode (batches are
    called as the backbone is: a dict of tensors as keyword arguments, a
    tensor positionally; see :func:`sktl.backbones.call_module`).

    Attributes
    ----------
    block_name : str
        Name of the last frozen block.
    frozen : torch.nn.Module
        Maps a preprocessed batch to the last frozen block's output. It runs
        the backbone's own bottom blocks: keep them in eval mode and call it
        without gradients. Building a split changes no module's mode.
    top : torch.nn.Module
        Maps a collated batch of rows to the backbone's features
        ``(n, n_features)``; its parameters are the backbone's own tensors.
    row_spec : sktl._cache.RowSpec or None
        The form of one row (float32; ``None`` where a length varies).
        Known once the split is checked.
    """

    block_name: str
    frozen: nn.Module
    top: nn.Module
    row_spec: RowSpec | None = None

    @property
    def row_nbytes(self):
        """Bytes of one row, or ``None`` when rows differ in size."""
        if self.row_spec is None or None in self.row_spec.shape:
            return None
        size = int(np.prod(self.row_spec.shape, dtype=np.int64))
        return size * np.dtype(self.row_spec.dtype).itemsize

    def rows(self, output, batch=None):
        """The frozen part's ``output`` for a batch as one float32 array per sample.

        Parameters
        ----------
        output : torch.Tensor
            What ``frozen`` returned for ``batch``.
        batch : torch.Tensor or dict of torch.Tensor, optional
            The preprocessed batch (unused here; token splits read its
            attention mask).

        Returns
        -------
        list of numpy.ndarray
        """
        return list(output.detach().float().cpu().numpy())

    def collate(self, rows):
        """Stack ``rows`` into the batch ``top`` reads (a CPU tensor).

        Parameters
        ----------
        rows : sequence of numpy.ndarray
            Rows from :meth:`rows`, of any batches.

        Returns
        -------
        torch.Tensor
        """
        return torch.from_numpy(np.stack([np.asarray(r, dtype=np.float32) for r in rows]))

    def check(self, backbone, probe, device="cpu"):
        """Whether the split reproduces ``backbone.module``'s forward pass on
        the first samples of ``probe`` (eval mode, no gradients); records
        :attr:`row_spec`.

        Modules in training mode are switched to eval mode for the check and
        back afterwards, flag by flag (a mix of modes is restored as it
        was): do not check a model that another thread trains meanwhile.

        Parameters
        ----------
        backbone : Backbone
            The backbone the split was cut from.
        probe : array-like or sequence
            Raw samples; the first :data:`PROBE_SIZE` are used.
        device : str or torch.device, default="cpu"
            Where the model is.

        Returns
        -------
        bool
        """
        from ._base import call_module, to_device

        module, first = backbone.module, np.arange(min(PROBE_SIZE, n_samples(probe)))
        try:
            with torch.no_grad(), _eval_mode(module, self.frozen, self.top):
                batch = to_device(backbone.preprocess(take(probe, first)), device)
                whole = call_module(module, batch)
                middle = call_module(self.frozen, batch)
                rows = self.rows(middle, batch)
                cut = call_module(self.top, to_device(self.collate(rows), device))
        except Exception:  # noqa: BLE001 - a split that cannot run is not used
            return False
        if not all(isinstance(t, torch.Tensor) for t in (whole, middle, cut)):
            return False
        if self.row_spec is None:
            self.row_spec = RowSpec(np.float32, rows[0].shape)
        return whole.shape == cut.shape and torch.allclose(whole, cut, rtol=1e-4, atol=1e-5)


class TokenSplit(Split):
    """A split of a token-sequence model (transformer encoders).

    ``frozen`` returns the token states of the last frozen layer, padded,
    ``(n, n_tokens, hidden_size)``. A row is one sample's states at its real
    tokens only (where the batch's ``attention_mask`` is set), so rows
    differ in length and are stored without padding; ``collate`` pads them
    again, to the longest row of the new batch, and ``top`` reads the dict
    ``{"inputs_embeds": states, "attention_mask": mask}`` as keyword
    arguments. Padding never changes the result: padded positions are
    masked out of attention and pooling.
    """

    def rows(self, output, batch=None):
        """Each sample's token states at its real tokens, ``(n_tokens, hidden)``."""
        states = output.detach().float().cpu().numpy()
        real = batch["attention_mask"].detach().cpu().numpy() != 0
        return [states[i][real[i]] for i in range(len(states))]  # copies: no padding kept

    def collate(self, rows):
        """Pad ``rows`` to the longest: ``{"inputs_embeds", "attention_mask"}``."""
        lengths = [len(r) for r in rows]
        states = np.zeros((len(rows), max(lengths), rows[0].shape[-1]), dtype=np.float32)
        mask = np.zeros(states.shape[:2], dtype=np.int64)
        for i, (row, n) in enumerate(zip(rows, lengths)):
            states[i, :n] = row
            mask[i, :n] = 1
        return {"inputs_embeds": torch.from_numpy(states), "attention_mask": torch.from_numpy(mask)}


@contextlib.contextmanager
def _eval_mode(*roots):
    """Every module of ``roots`` in eval mode, each flag restored afterwards."""
    modules = {id(m): m for root in roots for m in root.modules()}
    switched = [m for m in modules.values() if m.training]
    for m in switched:
        m.training = False
    try:
        yield
    finally:
        for m in switched:
            m.training = True


def split_backbone(backbone, n_frozen, probe, device="cpu"):
    """:meth:`Backbone.split <sktl.backbones.Backbone.split>`: pick the family's
    cut, then check it on ``probe``."""
    n_blocks = len(backbone.blocks)
    if not 1 <= n_frozen < n_blocks:
        raise ValueError(
            f"n_frozen={n_frozen} does not split a backbone of {n_blocks} blocks: "
            f"a split freezes 1 to {n_blocks - 1} of them (with none frozen the "
            "whole model trains; with all frozen, use its features).")
    from ._sentence_transformers import SentenceEncoder, split_sentence_encoder

    if isinstance(backbone.module, SentenceEncoder):
        split = split_sentence_encoder(backbone, n_frozen)
    else:
        split = traced_split(backbone, n_frozen)
    return verified(split, backbone, probe, device)


def verified(split, backbone, probe, device="cpu"):
    """``split`` if it is safe to train and reproduces the backbone on
    ``probe`` (:meth:`Split.check`), else ``None``.

    Not safe: a parameter used on both sides of the cut (tied weights, a
    block run below and above it), as the stored rows would go stale while
    the top trains.
    """
    if split is None:
        return None
    below = {id(p) for p in split.frozen.parameters()}
    if not below.isdisjoint(id(p) for p in split.top.parameters()):
        return None
    return split if split.check(backbone, probe, device) else None


# -- parallel module trees ------------------------------------------------------
def sharing_copy(root, replace):
    """A copy of ``root``'s module tree with some modules replaced, sharing all
    others.

    Every module on the way from ``root`` to a replaced one is a shallow copy
    (``copy.copy``) with its own dict of children (and its own dicts of
    parameters, buffers and hooks, holding the original's: a hook added to
    the copy is not added to the original); every other module, parameter
    and buffer is the original object. Nothing in ``root``'s tree changes.

    Parameters
    ----------
    root : torch.nn.Module
    replace : dict
        ``{id(module): replacement}``: each occurrence of ``module`` below
        ``root`` becomes ``replacement`` (a module, or ``None``).

    Returns
    -------
    torch.nn.Module
        ``root`` itself when nothing below it is replaced.
    """
    done = {}

    def rebuild(module):
        key = id(module)
        if key in replace:
            return replace[key]
        if key not in done:
            children = {name: None if child is None else rebuild(child)
                        for name, child in module._modules.items()}
            if all(children[name] is child for name, child in module._modules.items()):
                done[key] = module
            else:
                done[key] = twin = copy.copy(module)
                for name, value in vars(module).items():
                    if isinstance(value, (dict, set)):  # _parameters, _forward_hooks, ...
                        twin.__dict__[name] = copy.copy(value)
                twin._modules = children
        return done[key]

    return rebuild(root)


# -- torch.fx cut -----------------------------------------------------------------
#: One trace at a time (see _BlockTracer).
_TRACING = threading.Lock()


class _BlockTracer(fx.Tracer):
    """Traces through containers but keeps each backbone block one call.

    While it traces, torch.fx replaces ``nn.Module.__call__`` and
    ``__getattr__`` for every thread: a model running in another thread
    meanwhile (a ``predict`` beside a ``fit`` that cuts its backbone) would
    be traced into this graph and receive proxies. Calls from other threads
    go straight through, and one trace runs at a time, so that no other
    tracer's patches are active meanwhile.
    """

    def __init__(self, leaves):
        super().__init__()
        self.leaves = leaves
        self.thread = threading.get_ident()

    def is_leaf_module(self, m, module_qualified_name):
        return id(m) in self.leaves or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        if threading.get_ident() != self.thread:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if threading.get_ident() != self.thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def trace(self, root, concrete_args=None):
        with _TRACING:
            return super().trace(root, concrete_args)


def traced_split(backbone, n_frozen):
    """Cut ``backbone`` with ``torch.fx`` after its first ``n_frozen`` blocks.

    The model is traced in its current mode, each block a leaf call. Both
    halves are ``fx.GraphModule`` objects holding the backbone's own
    submodules.

    Returns
    -------
    Split or None
        Unchecked (see :func:`verified`); ``None`` when the model cannot be
        traced, the last frozen block does not run exactly once, or the top
        reads the raw input again (ViT reads the batch size from it).
    """
    module = backbone.module
    last = backbone.blocks[n_frozen - 1][1][-1]
    names = {id(m): name for name, m in module.named_modules()}
    leaves = {id(m) for _, mods in backbone.blocks for m in mods}
    try:
        halves = _cut_below(module, leaves, names[id(last)])
    except Exception:  # noqa: BLE001 - fx raises many types on untraceable code
        return None
    if halves is None:
        return None
    return Split(backbone.blocks[n_frozen - 1][0], *halves)


def _cut_below(module, leaves, target):
    """``(bottom, top)`` of ``module``'s forward, cut at the output of
    submodule ``target``, or ``None`` when there is no clean cut."""
    graph = _BlockTracer(leaves).trace(module)
    nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == target]
    if len(nodes) != 1:  # the block runs twice, or not as a call: no clean cut
        return None
    bottom = _graph_module(module, _graph_until(graph, nodes[0]))
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    with graph.inserting_before(inputs[0]):
        frozen_output = graph.placeholder("frozen_output")
    nodes[0].replace_all_uses_with(frozen_output)
    top = fx.GraphModule(module, graph)
    top.graph.eliminate_dead_code()
    for node in inputs:
        if node.users:  # the top reads the raw input again
            return None
        top.graph.erase_node(node)
    return bottom, _graph_module(module, top.graph)


def _graph_until(graph, node):
    """A new graph computing ``node`` from ``graph``'s inputs."""
    bottom, env = fx.Graph(), {}
    for n in graph.nodes:
        env[n] = bottom.node_copy(n, env.__getitem__)
        if n is node:
            break
    bottom.output(env[node])
    return bottom


def _graph_module(root, graph):
    """``graph`` without its dead code, run on ``root``'s own submodules and
    tensors; the module holds only those the graph uses (its parameters are
    those it trains)."""
    owned = fx.GraphModule(root, graph)
    owned.graph.eliminate_dead_code()  # needs an owning module (purity of calls)
    clean = fx.Graph()
    clean.output(clean.graph_copy(owned.graph, {}))
    return fx.GraphModule(root, clean)
