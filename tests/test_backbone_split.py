"""Backbone.split: a frozen bottom and a trainable top sharing the backbone's
weights, for every family, without modifying the backbone's model."""

import threading

import numpy as np
import pytest
import torch
from conftest import ReadsInputAgain, SharedAcrossTheCut, TinyCNN, TinyNet
from torch import nn

from sktl.backbones import call_module
from sktl.backbones import Backbone, Split, TokenSplit, resolve_backbone, truncate_sentence_encoder
from sktl.backbones._inputs import ArrayPreprocessor

SENTENCES = ["cats", "the weather is lovely today in the hills", "why?",
             "sentences of quite different lengths give rows of different lengths"]


def _images(n, channels_last=True):
    shape = (n, 32, 32, 3) if channels_last else (n, 1, 12, 12)
    return np.random.RandomState(0).randint(0, 255, shape, dtype=np.uint8)


def _module_backbone(cls, X):
    torch.manual_seed(0)
    backbone = resolve_backbone(cls())
    backbone.module(torch.as_tensor(X[:1]))  # materialise lazy layers
    return backbone


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return resolve_backbone(minilm_dir)


@pytest.fixture(scope="module")
def minilm_2(minilm_dir):
    return resolve_backbone(truncate_sentence_encoder(minilm_dir, 2))


FAMILIES = {
    "resnet18": lambda request: (resolve_backbone("resnet18", weights=None), _images(3)),
    "mobilenet_v3_small": lambda request: (
        resolve_backbone("mobilenet_v3_small", weights=None), _images(3)),
    "TinyNet": lambda request: _with(
        np.random.RandomState(0).randn(3, 5).astype(np.float32), TinyNet),
    "TinyCNN": lambda request: _with(_images(3, channels_last=False).astype(np.float32) / 255,
                                     TinyCNN),
    "minilm": lambda request: (request.getfixturevalue("minilm"), SENTENCES),
    "minilm_2_layers": lambda request: (request.getfixturevalue("minilm_2"), SENTENCES),
}


def _with(X, cls):
    return _module_backbone(cls, X), X


@pytest.fixture(params=list(FAMILIES))
def family(request):
    backbone, X = FAMILIES[request.param](request)
    backbone.module.eval()
    return backbone, X


def _through(split, batch):
    """Features through the split: frozen part, stored rows, top."""
    with torch.no_grad():
        rows = split.rows(call_module(split.frozen, batch), batch)
        return call_module(split.top, split.collate(rows))


def _ids(params):
    return {id(p) for p in params}


def _layout(module):
    return [(name, id(m)) for name, m in module.named_modules()]


def test_split_reproduces_the_full_forward_pass(family):
    backbone, X = family
    module = backbone.module
    batch = backbone.preprocess(X)
    with torch.no_grad():
        expected = call_module(module, batch)
    layout = _layout(module)
    own = _ids(module.parameters())
    for n_frozen in range(1, len(backbone.blocks)):
        split = backbone.split(n_frozen, X)
        assert split is not None, n_frozen
        assert split.block_name == backbone.block_names[n_frozen - 1]
        torch.testing.assert_close(_through(split, batch), expected, atol=1e-5, rtol=1e-5)
        # The top trains the backbone's own top blocks; nothing is shared with the bottom.
        top = _ids(split.top.parameters())
        above = _ids(p for _, mods in backbone.blocks[n_frozen:] for m in mods
                     for p in m.parameters())
        assert above <= top <= own
        assert _ids(split.frozen.parameters()) <= own - top
        assert split.row_spec.dtype == np.dtype(np.float32).str
    # Building splits changed nothing in the model: same modules, same outputs.
    assert _layout(module) == layout
    with torch.no_grad():
        assert torch.equal(call_module(module, batch), expected)


def test_training_the_top_trains_the_backbone(family):
    backbone, X = family
    backbone = backbone.copy()  # the module-scoped encoders stay pretrained
    module = backbone.module.eval()
    n_frozen = len(backbone.blocks) // 2
    split = backbone.split(n_frozen, X)
    batch = backbone.preprocess(X)
    with torch.no_grad():
        before = call_module(module, batch)
        frozen_before = call_module(split.frozen, batch)
        rows = split.rows(frozen_before, batch)
    direction = torch.randn_like(before)
    optimizer = torch.optim.SGD(split.top.parameters(), lr=0.5)
    (call_module(split.top, split.collate(rows)) * direction).sum().backward()
    optimizer.step()
    with torch.no_grad():
        after = call_module(module, batch)
        assert torch.equal(call_module(split.frozen, batch), frozen_before)
    assert not torch.allclose(after, before, atol=1e-6)
    torch.testing.assert_close(_through(split, batch), after, atol=1e-5, rtol=1e-5)


def test_token_rows_are_unpadded_and_padding_changes_nothing(minilm_2):
    backbone = minilm_2
    split = backbone.split(2, SENTENCES)
    assert isinstance(split, TokenSplit) and split.row_spec.shape == (None, 384)
    batch = backbone.preprocess(SENTENCES)
    with torch.no_grad():
        rows = split.rows(call_module(split.frozen, batch), batch)
    lengths = [len(r) for r in rows]
    assert lengths == batch["attention_mask"].sum(1).tolist() and len(set(lengths)) == 4
    assert all(r.dtype == np.float32 and r.shape[1] == 384 for r in rows)
    for i, text in enumerate(SENTENCES):  # alone: no padding at all
        alone = backbone.preprocess([text])
        with torch.no_grad():
            row, = split.rows(call_module(split.frozen, alone), alone)
            np.testing.assert_allclose(row, rows[i], atol=1e-5)
            torch.testing.assert_close(call_module(split.top, split.collate([rows[i]])),
                                       backbone.module(**alone), atol=1e-5, rtol=1e-5)
    # Regrouped rows (padded to another length) give the same features.
    with torch.no_grad():
        together = call_module(split.top, split.collate(rows))
        pairs = [call_module(split.top, split.collate([rows[i], rows[j]]))
                 for i, j in [(0, 2), (1, 3)]]
    torch.testing.assert_close(torch.cat([pairs[0][:1], pairs[1][:1], pairs[0][1:],
                                          pairs[1][1:]]), together, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["TinyCNN", "minilm_2_layers"])
def test_concurrent_predictions_through_the_split_and_the_full_module(name, request):
    backbone, X = FAMILIES[name](request)
    module = backbone.module.eval()
    split = backbone.split(1, X)
    batches = [backbone.preprocess([X[i], X[(i + 1) % len(X)]]) for i in range(len(X))]
    with torch.no_grad():
        serial = [call_module(module, b) for b in batches]
    results, errors = {}, []
    start = threading.Barrier(3)

    def run(kind):
        try:
            start.wait()
            for rep in range(3):
                for i, b in enumerate(batches):
                    if kind == "split":
                        out = _through(split, b)
                    elif kind == "full":
                        with torch.no_grad():
                            out = call_module(module, b)
                    else:  # a third thread keeps cutting the model meanwhile
                        assert backbone.split(1 + (i + rep) % (len(backbone.blocks) - 1),
                                              X) is not None
                        continue
                    results[kind, rep, i] = out
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in ("split", "full", "cut")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for (kind, rep, i), out in results.items():
        torch.testing.assert_close(out, serial[i], atol=1e-5, rtol=1e-5,
                                   msg=f"{kind} {rep} {i}")
    assert len(results) == 2 * 3 * len(batches)


def _array_backbone(module, blocks):
    return Backbone(module=module, blocks=[(n, [module.get_submodule(n)]) for n in blocks],
                    preprocess=ArrayPreprocessor(), input_kind="array", spec={})


def test_unsplittable_backbones_give_none():
    images = np.random.RandomState(0).rand(3, 1, 12, 12).astype(np.float32)
    assert _array_backbone(ReadsInputAgain(), ["block1", "block2"]).split(1, images) is None
    X = np.random.RandomState(0).randn(3, 4).astype(np.float32)
    assert _array_backbone(SharedAcrossTheCut(), ["a", "shared"]).split(1, X) is None
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight
    assert _array_backbone(tied, ["0", "1"]).split(1, X) is None
    untied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    assert isinstance(_array_backbone(untied, ["0", "1"]).split(1, X), Split)


def test_text_encoders_of_another_layout_give_none(minilm_2):
    backbone = minilm_2
    layers = list(backbone.blocks)
    shuffled = Backbone(module=backbone.module, blocks=[layers[0], layers[2], layers[1]],
                        preprocess=backbone.preprocess, input_kind="text", spec={})
    assert shuffled.split(1, SENTENCES) is None


def test_n_frozen_must_leave_blocks_on_both_sides():
    backbone = _array_backbone(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), ["0", "1"])
    X = np.zeros((2, 4), dtype=np.float32)
    for n_frozen in (0, 2, -1):
        with pytest.raises(ValueError, match="n_frozen"):
            backbone.split(n_frozen, X)


def test_sharing_copy_leaves_the_original_alone():
    from sktl.backbones._split import sharing_copy

    inner = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    root = nn.Sequential(inner, nn.Linear(2, 2))
    twin = sharing_copy(root, {id(inner[1]): nn.Identity()})
    assert twin is not root and twin[0] is not inner and isinstance(twin[0][1], nn.Identity)
    assert twin[0][0] is inner[0] and twin[1] is root[1]  # untouched branches are shared
    assert isinstance(inner[1], nn.Linear) and len(root[0]) == 2
    twin[0].register_forward_hook(lambda *_: None)  # the copy's own hooks
    assert not inner._forward_hooks
    assert sharing_copy(root, {}) is root


class PausesWhileTraced(nn.Module):
    """Two blocks; its forward waits for the main thread, once, between them
    (while torch.fx traces it, in a thread)."""

    def __init__(self, tracing, resume):
        super().__init__()
        self.block1, self.block2 = nn.Linear(4, 4), nn.Linear(4, 4)
        self.tracing, self.resume = tracing, resume

    def forward(self, x):
        h = self.block1(x)
        if not self.tracing.is_set():
            self.tracing.set()
            self.resume.wait(30)
        return self.block2(h)


def test_a_model_running_in_another_thread_while_a_backbone_is_traced():
    # torch.fx patches nn.Module for every thread while it traces: a model
    # called meanwhile in another thread must run as usual (not be traced
    # into the graph), and the trace must not take its calls.
    tracing, resume = threading.Event(), threading.Event()
    module = PausesWhileTraced(tracing, resume)
    X = np.random.RandomState(0).randn(3, 4).astype(np.float32)
    backbone = _array_backbone(module, ["block1", "block2"])
    out = {}
    cutter = threading.Thread(target=lambda: out.update(split=backbone.split(1, X)))
    cutter.start()
    assert tracing.wait(30)
    other = nn.Sequential(nn.Linear(4, 2), nn.ReLU())
    x = torch.from_numpy(X)
    with torch.no_grad():
        during = other(x)
        same_model = module.block2(module.block1(x))
    resume.set()
    cutter.join(60)
    with torch.no_grad():
        torch.testing.assert_close(during, other(x))
        torch.testing.assert_close(same_model, module.block2(module.block1(x)))
    assert isinstance(out["split"], Split)
