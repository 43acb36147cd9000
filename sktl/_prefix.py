"""Frozen-prefix caching: train the unfrozen top of a backbone on the cached
output of its frozen blocks.

With ``unfreeze=k``, the frozen blocks sit in eval mode with no trainable
parameter, so their output for a sample never changes during a fit (there
is no random augmentation in sktl). Running them once and training the top
blocks on their stored output gives the same model as running them every
epoch, at the cost of one forward pass instead of ``max_epochs``.

The top of the network is cut out of the backbone's forward with
``torch.fx``: the model is traced with every block as a leaf, the last
frozen block's output becomes the graph's input, and what no longer depends
on it is dropped. The result shares its modules (and so its weights) with
the backbone. Models that cannot be traced, or whose top reads the raw input
again (ViT reads the batch size from it), are trained through their frozen
blocks as before; the split is checked numerically before use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

from ._cache import RowSpec
from ._inference import LayerOutput, call_module, to_device
from .backbones._inputs import n_samples, take

__all__ = ["PREFIX_MAX_BYTES", "FrozenReader", "PrefixSplit", "prefix_storage",
           "split_frozen_prefix"]

#: Most bytes of frozen-block outputs held in memory for one fit; beyond it
#: the fit runs through the frozen blocks every step instead.
PREFIX_MAX_BYTES = 2 << 30


@dataclass
class PrefixSplit:
    """The frozen bottom and trainable top of a backbone.

    ``prefix`` maps a preprocessed batch to the last frozen block's raw
    output; ``suffix`` maps that output to the backbone's features.
    ``row_spec``: the form of one sample's output, as cached.
    """

    block_name: str
    prefix: nn.Module
    suffix: fx.GraphModule
    row_nbytes: int = 0
    row_spec: RowSpec | None = None


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


class _BlockTracer(fx.Tracer):
    """Traces through containers but keeps each backbone block one call."""

    def __init__(self, leaves):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m, module_qualified_name):
        return id(m) in self.leaves or super().is_leaf_module(m, module_qualified_name)


def _cut_below(module, leaves, target):
    """``module``'s forward from the output of submodule ``target`` on."""
    graph = _BlockTracer(leaves).trace(module)
    top = fx.GraphModule(module, graph)
    nodes = [n for n in top.graph.nodes if n.op == "call_module" and n.target == target]
    if len(nodes) != 1:  # the block runs twice, or not as a call: no clean cut
        return None
    below = _parameters(module, _upstream(nodes[0]))
    inputs = [n for n in top.graph.nodes if n.op == "placeholder"]
    with top.graph.inserting_before(inputs[0]):
        cut = top.graph.placeholder("frozen_output")
    nodes[0].replace_all_uses_with(cut)
    top.graph.eliminate_dead_code()
    for node in inputs:
        if node.users:  # the top reads the raw input again
            return None
        top.graph.erase_node(node)
    # Nothing below the cut may be shared with the top (a block run on both
    # sides, tied weights): the stored output would go stale as the top trains.
    if below.keys() & _parameters(module, top.graph.nodes).keys():
        return None
    top.delete_all_unused_submodules()
    top.recompile()
    return top


def _upstream(node):
    """``node`` and every node it depends on."""
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _parameters(module, nodes):
    """The parameters ``nodes`` use (modules they call, tensors they read), by id."""
    found = {}
    for n in nodes:
        if n.op == "call_module":
            found.update((id(p), p) for p in module.get_submodule(n.target).parameters())
        elif n.op == "get_attr":
            try:
                value = module.get_parameter(n.target)
            except AttributeError:  # a buffer or a constant: never trained
                continue
            found[id(value)] = value
    return found


def split_frozen_prefix(backbone, n_frozen, X, device):
    """Split ``backbone`` after its first ``n_frozen`` blocks.

    Returns a :class:`PrefixSplit`, or ``None`` when the model cannot be
    split (not traceable by ``torch.fx``, a top that reuses the input, or a
    split whose output differs from the full forward pass on a probe batch).
    """
    module = backbone.module
    last = backbone.blocks[n_frozen - 1][1][-1]
    names = {id(m): name for name, m in module.named_modules()}
    leaves = {id(m) for _, mods in backbone.blocks for m in mods}
    try:
        suffix = _cut_below(module, leaves, names[id(last)])
    except Exception:  # noqa: BLE001 - fx raises many types on untraceable code
        return None
    if suffix is None:
        return None
    split = PrefixSplit(backbone.blocks[n_frozen - 1][0],
                        LayerOutput(module, [last], pooling=None), suffix)
    return split if _check(split, module, backbone.preprocess, X, device) else None


def _check(split, module, preprocess, X, device):
    """Prefix then suffix must reproduce the whole forward pass (eval mode);
    records the size and form of one stored row."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            batch = to_device(preprocess(take(X, np.arange(min(2, n_samples(X))))), device)
            whole = call_module(module, batch)
            middle = call_module(split.prefix, batch)
            cut = split.suffix(middle)
    except Exception:  # noqa: BLE001 - a split that cannot run is not used
        return False
    finally:
        module.train(was_training)
    if not all(isinstance(t, torch.Tensor) for t in (whole, middle, cut)):
        return False
    split.row_nbytes = 4 * middle[0].numel()  # stored as float32
    split.row_spec = RowSpec(np.float32, middle.shape[1:])
    return whole.shape == cut.shape and torch.allclose(whole, cut, rtol=1e-4, atol=1e-5)


def _frozen_token(module, trainable):
    """Identity and in-place version of every tensor outside ``trainable``."""
    skip = {id(t) for m in trainable for t in (*m.parameters(), *m.buffers())}
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
    ones seen at the end of the fit (same objects, no in-place change), which
    :meth:`valid` checks. ``like`` is the form of one row (a
    :class:`~sktl._cache.RowSpec`).
    """

    def __init__(self, frozen, top, key, pool, module, trainable, like):
        self.frozen, self.top, self.key, self.pool = frozen, top, key, pool
        self.like = like
        self._module, self._trainable = module, trainable
        self._token = _frozen_token(module, trainable)

    def valid(self):
        return _frozen_token(self._module, self._trainable) == self._token
