"""Few-shot contrastive fine-tuning: SetFit's idea, as one training mode of
:class:`~sktl.TransferClassifier` (``strategy="contrastive"``).

SetFit (Tunstall et al. 2022) trains a sentence encoder on pairs built from
a handful of labels (same class: cosine similarity 1, different classes: 0),
then fits a logistic regression on the tuned embeddings. With 8 to 64
examples per class that beats both a frozen encoder plus logistic
regression and end-to-end cross-entropy fine-tuning, which overfits.

This module does the same, with three changes that make it cheaper per
useful gradient:

* **Pairs from whole batches** (``pair_sampling="batch"``): a class-balanced
  batch of ``B`` sentences gives ``B (B - 1) / 2`` pairs for ``B`` forward
  passes, where SetFit's fixed pair list (``"pairs"``, also available) spends
  two forward passes per pair.
* **Only the top blocks move** (``unfreeze=k``): the frozen blocks of a
  BERT-like encoder run once per sentence and their token states go through
  the feature cache (shared by CV folds and grid points); each step runs the
  top ``k`` layers only. SetFit moves every layer.
* **A closed-form head**: an L2-regularised logistic regression (L-BFGS) on
  the L2-normalised tuned embeddings, as SetFit does, turned into a linear
  layer so that the fitted model is one torch module.

The pieces are small functions: label checks, pair/batch sampling, the two
losses, the encoders that map sample indices to embeddings (through the
cached prefix when possible), the tuning loop and the head fit.
"""

from __future__ import annotations

import contextlib
import math
import threading

import numpy as np
import torch
from torch import nn

from . import _prefix
from ._cache import RowSpec, extraction_key
from ._inference import LayerOutput, call_module, forward_batches, to_device
from ._prefix import prefix_storage, split_frozen_prefix
from ._training import diverged
from .backbones import pool_features
from .backbones._inputs import n_samples, take

__all__ = [
    "CONTRASTIVE_LOSSES",
    "LR_SCHEDULES",
    "PAIR_SAMPLINGS",
    "L2Normalize",
    "TextTopReader",
    "balanced_batches",
    "check_few_shot_labels",
    "contrastive_loss",
    "contrastive_tune",
    "embed",
    "linear_schedule",
    "logistic_head",
    "make_encoder",
    "normalized_head",
    "pair_batches",
    "sample_pairs",
]

PAIR_SAMPLINGS = ("batch", "pairs")
CONTRASTIVE_LOSSES = ("cosine", "supcon")
LR_SCHEDULES = ("constant", "linear")
#: Share of the steps the ``"linear"`` schedule spends warming up (SetFit's
#: ``warmup_proportion``).
WARMUP_FRACTION = 0.1
#: Default temperature of the supervised contrastive loss (Khosla et al. 2020).
SUPCON_TEMPERATURE = 0.1


# -- labels -------------------------------------------------------------------
def check_few_shot_labels(targets, classes, pair_sampling, batch_size):
    """Contrastive pairs need two classes (negatives) and, in each class, two
    examples (a positive pair), and a batch must be able to hold positive
    pairs; say what falls short otherwise (``classes``: the user's labels of
    the codes in ``targets``)."""
    counts = np.bincount(targets)
    if len(counts) < 2:
        raise ValueError("strategy='contrastive' needs samples of at least two classes "
                         "to build negative pairs.")
    if counts.min() < 2:
        raise ValueError(
            f"strategy='contrastive' needs at least 2 examples of every class to "
            f"build positive pairs; class {np.asarray(classes)[int(counts.argmin())].tolist()!r} has "
            f"{int(counts.min())}. Use more labels, or strategy='finetune'.")
    if pair_sampling == "batch" and batch_size <= len(counts):
        raise ValueError(
            f"pair_sampling='batch' with {len(counts)} classes needs batch_size > "
            f"{len(counts)}: a batch gives every class a slot before any class a "
            f"second one, so with batch_size={batch_size} no batch holds a positive "
            "pair. Raise batch_size, or use pair_sampling='pairs'.")
    if pair_sampling == "pairs" and batch_size < 2:
        raise ValueError("pair_sampling='pairs' needs batch_size >= 2 (a positive and a "
                         f"negative pair per step); got batch_size={batch_size}.")


# -- sampling -----------------------------------------------------------------
def sample_pairs(targets, n_iterations, rng):
    """SetFit's pair list: each iteration gives every example one positive
    partner (same class, not itself) and one negative partner (another
    class), so the list is half positive, half negative.

    Returns ``(first, second, same)``: index arrays and a 0/1 float array,
    shuffled.
    """
    by_class = [np.flatnonzero(targets == c) for c in range(targets.max() + 1)]
    first, second, same = [], [], []
    for _ in range(n_iterations):
        for i, c in enumerate(targets):
            mates = by_class[c][by_class[c] != i]
            others = np.flatnonzero(targets != c)
            first += [i, i]
            second += [rng.choice(mates), rng.choice(others)]
            same += [1.0, 0.0]
    order = rng.permutation(len(first))
    return (np.asarray(first)[order], np.asarray(second)[order],
            np.asarray(same, dtype=np.float32)[order])


def pair_batches(targets, n_iterations, batch_size, rng):
    """``"pairs"`` sampling: batches of ``batch_size`` pairs from
    :func:`sample_pairs`, as ``(sentence indices, pair mask)``: the loss sees
    only the listed pairs, as in SetFit."""
    first, second, _ = sample_pairs(targets, n_iterations, rng)
    for start in range(0, len(first), batch_size):
        a, b = first[start:start + batch_size], second[start:start + batch_size]
        idx, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
        mask = np.zeros((len(idx), len(idx)), dtype=bool)
        ia, ib = inverse[:len(a)], inverse[len(a):]
        mask[ia, ib] = mask[ib, ia] = True
        np.fill_diagonal(mask, False)
        yield idx, mask


def balanced_batches(targets, n_iterations, batch_size, rng):
    """``"batch"`` sampling: class-balanced batches of ``batch_size``
    examples, every pair in a batch counts.

    Slots go round the classes in a random order, each class serving its
    examples from a reshuffled queue, so every class has about
    ``batch_size / n_classes`` members (positives for each other) and rare
    classes are not drowned. An epoch draws each example about
    ``n_iterations`` times: ``ceil(n_iterations * n / batch_size)`` batches.
    """
    n_classes = targets.max() + 1
    by_class = [np.flatnonzero(targets == c) for c in range(n_classes)]
    queues = [[] for _ in range(n_classes)]

    def draw(c):
        if not queues[c]:
            queues[c] = list(rng.permutation(by_class[c]))
        return queues[c].pop()

    n_steps = math.ceil(n_iterations * len(targets) / batch_size)
    size = min(batch_size, len(targets))
    for _ in range(n_steps):
        classes = np.concatenate([rng.permutation(n_classes)
                                  for _ in range(math.ceil(size / n_classes))])[:size]
        idx = []
        for c in classes:
            i = draw(c)
            if i in idx:  # a class smaller than its share: queue wrapped round
                queues[c].insert(0, i)
                i = next((j for j in rng.permutation(by_class[c]) if j not in idx), None)
            if i is not None:
                idx.append(i)
        idx = np.asarray(idx)
        mask = ~np.eye(len(idx), dtype=bool)
        yield idx, mask


def n_steps(targets, pair_sampling, n_iterations, batch_size):
    """Optimiser steps per epoch (for the progress bar)."""
    n = len(targets)
    if pair_sampling == "pairs":
        return math.ceil(2 * n_iterations * n / batch_size)
    return math.ceil(n_iterations * n / batch_size)


# -- losses -------------------------------------------------------------------
def contrastive_loss(embeddings, labels, mask, kind, temperature=SUPCON_TEMPERATURE):
    """Loss over the pairs ``mask`` selects among a batch's embeddings.

    ``"cosine"``: SetFit's CosineSimilarityLoss, the squared error between
    the cosine similarity of a pair and 1 (same class) or 0 (different), with
    positive and negative pairs weighted equally (a balanced batch of ``C``
    classes has ``C - 1`` times more negatives). ``"supcon"``: supervised
    contrastive loss (Khosla et al. 2020): for every anchor, the
    log-probability of its positives among all its pairs, at
    ``temperature`` (low: the hardest negatives dominate the gradient; high:
    every pair counts alike, closer to ``"cosine"``).

    None where the loss is undefined (``"supcon"``: no positive pair;
    ``"cosine"``: no pair at all): the step is skipped, as a zero loss would
    still move the weights (weight decay, momentum).
    """
    z = nn.functional.normalize(embeddings, dim=1)
    sim = z @ z.T
    same = labels[:, None] == labels[None, :]
    pos, neg = mask & same, mask & ~same
    if kind == "cosine":
        terms = []
        if pos.any():
            terms.append(((sim[pos] - 1.0) ** 2).mean())
        if neg.any():
            terms.append((sim[neg] ** 2).mean())
        return sum(terms) / len(terms) if terms else None
    anchors = pos.any(dim=1)  # anchors with at least one positive
    if not anchors.any():
        return None
    logits = (sim / temperature).masked_fill(~mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_anchor = (log_prob.masked_fill(~pos, 0.0).sum(dim=1)[anchors]
                  / pos.sum(dim=1)[anchors])
    return -per_anchor.mean()


# -- encoders: sample indices -> embeddings, with gradients --------------------
class L2Normalize(nn.Module):
    """Scale each embedding to unit length (the space the losses work in)."""

    def forward(self, x):
        return nn.functional.normalize(x, dim=1)


def normalized_head(head):
    """The fitted head of a contrastive model: it reads unit-length
    embeddings, as the head was fitted on them. One definition for
    :meth:`TransferClassifier.fit` and :func:`sktl.load`."""
    return nn.Sequential(L2Normalize(), head)


class _Encoder:
    """Full forward pass: preprocess the raw samples, run the whole backbone."""

    def __init__(self, backbone, X, device):
        self.backbone, self.X, self.device = backbone, X, device

    def __call__(self, idx):
        batch = to_device(self.backbone.preprocess(take(self.X, idx)), self.device)
        out = call_module(self.backbone.module, batch)
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        return pool_features(out, attention_mask=mask)


class _SplitEncoder:
    """Backbones ``torch.fx`` can split (torchvision CNNs, custom modules):
    the frozen prefix's outputs are computed once, the top runs on them."""

    def __init__(self, split, inputs, device):
        self.split, self.inputs, self.device = split, inputs, device

    def __call__(self, idx):
        return pool_features(self.split.suffix(torch.from_numpy(self.inputs[idx]).to(self.device)))


class _Embeddings(nn.Module):
    """Stands in for a BERT model's embedding layer: hands back the cached
    token states it is given as ``inputs_embeds``."""

    def forward(self, inputs_embeds=None, **_):
        return inputs_embeds


class _TextTopEncoder:
    """BERT-like sentence encoders (``torch.fx`` cannot trace them).

    The output of the last frozen block is stored per sentence (its real
    tokens only, so rows have different lengths), through the feature cache.
    A step pads a batch of rows and runs the model with its embedding layer
    replaced by :class:`_Embeddings` and its layer list cut to the unfrozen
    layers: the model itself builds the attention mask and applies pooling,
    normalisation and any projection, whatever the transformers version.
    """

    def __init__(self, backbone, rows, n_frozen_layers, device):
        st_model = backbone.module.model
        self.auto = st_model[0].auto_model
        self.layers = self.auto.encoder.layer
        self.top = nn.ModuleList(list(self.layers)[n_frozen_layers:])
        self.module, self.rows, self.device = backbone.module, rows, device

    @contextlib.contextmanager
    def _cut(self):
        embeddings = self.auto.embeddings
        self.auto.embeddings = _Embeddings()
        self.auto.encoder.layer = self.top
        try:
            yield
        finally:
            self.auto.embeddings = embeddings
            self.auto.encoder.layer = self.layers

    def __call__(self, idx):
        states = [torch.from_numpy(self.rows[i]) for i in idx]
        lengths = torch.tensor([len(s) for s in states])
        padded = nn.utils.rnn.pad_sequence(states, batch_first=True).to(self.device)
        mask = (torch.arange(padded.shape[1])[None, :] < lengths[:, None]).long()
        with self._cut():
            return self.module(inputs_embeds=padded, attention_mask=mask.to(self.device))


def _text_layers(backbone):
    """The transformer layer list of a BERT-like sentence encoder, or None."""
    try:
        auto = backbone.module.model[0].auto_model
        layers = auto.encoder.layer
    except (AttributeError, TypeError, IndexError, KeyError):
        return None
    if not hasattr(auto, "embeddings") or backbone.blocks[0][1][0] is not auto.embeddings:
        return None
    return layers


def _token_states(backbone, X, block, cache, key, batch_size, device, progress,
                  max_bytes=None, bytes_before=0):
    """Per sentence, the output of ``block`` at its real tokens (no padding);
    ``None`` as soon as they pass ``max_bytes`` (their size is known only
    once computed: texts differ in length). ``bytes_before``: what earlier
    chunks of the same input took, counted against the cache's bound."""
    from ._cache import sample_hashes

    hashes = sample_hashes(X) if cache is not None else None
    # A sentence's row: (its tokens, the hidden size), float32.
    like = RowSpec(np.float32, (None, backbone.module.model[0].auto_model.config.hidden_size))
    rows = (cache.lookup(key, hashes, like=like) if cache is not None
            else [None] * n_samples(X))
    missing = [i for i, r in enumerate(rows) if r is None]
    nbytes = sum(r.nbytes for r in rows if r is not None)
    reader = LayerOutput(backbone.module, [block], pooling=None)
    starts = range(0, len(missing), batch_size)
    if progress and missing:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="frozen blocks", unit="batch")
    # Longest first, like SentenceTransformer.encode: little padding per batch.
    lengths = getattr(backbone.preprocess, "lengths", None)
    if lengths is not None and missing:
        sizes = lengths(take(X, missing))
        missing = [missing[j] for j in np.argsort([-n for n in sizes], kind="stable")]
    backbone.module.eval()
    with torch.inference_mode():
        for start in starts:
            idx = missing[start:start + batch_size]
            batch = to_device(backbone.preprocess(take(X, idx)), device)
            out = reader(**batch)
            out = out[0] if isinstance(out, (tuple, list)) else out
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            for i, row, n in zip(idx, out.float().cpu().numpy(), lengths):
                rows[i] = np.ascontiguousarray(row[:n])
                nbytes += rows[i].nbytes
            if max_bytes is not None and nbytes > max_bytes:
                return None
    # Rows beyond half of the cache would flush every other row from it.
    if missing and prefix_storage(bytes_before + nbytes, cache)[1] is not None:
        cache.store(key, [hashes[i] for i in missing], [rows[i] for i in missing])
    return rows


class TextTopReader:
    """Predict through the cached token states: a fitted contrastive model
    whose frozen blocks are a BERT-like prefix runs only its top layers on
    rows from the feature cache (the test set's frozen part is computed once
    for every model, CV fold or grid point that shares it)."""

    def __init__(self, backbone, n_frozen, key, trainable):
        from ._prefix import _frozen_token

        self.n_frozen, self.key, self.trainable = n_frozen, key, trainable
        self._token = _frozen_token(backbone.module, trainable)

    def valid(self, backbone):
        from ._prefix import _frozen_token

        return _frozen_token(backbone.module, self.trainable) == self._token

    #: Reading cuts the shared fitted model in place (``_TextTopEncoder._cut``),
    #: and a full forward pass meanwhile would see the cut model: predictions
    #: through a reader, from several threads, take turns.
    lock = threading.RLock()
    #: Sentences per chunk: token states (tokens x width floats per sentence)
    #: are held for one chunk at a time, not for the whole input.
    chunk_size = 2048

    def features(self, backbone, X, cache, batch_size, device, progress):
        """The backbone's embeddings of X (eval mode, no gradients)."""
        _, modules = backbone.blocks[self.n_frozen - 1]
        n = n_samples(X)
        out = np.empty((n, backbone.n_features), dtype=np.float32)
        seen = 0  # bytes of the earlier chunks: a large input stops being stored
        with self.lock:
            backbone.module.eval()
            for first in range(0, n, self.chunk_size):
                chunk = np.arange(first, min(first + self.chunk_size, n))
                rows = _token_states(backbone, take(X, chunk), modules[-1], cache, self.key,
                                     batch_size, device, progress, bytes_before=seen)
                seen += sum(r.nbytes for r in rows)
                encoder = _TextTopEncoder(backbone, rows, self.n_frozen - 1, device)
                order = np.argsort([-len(r) for r in rows], kind="stable")
                with torch.inference_mode():
                    for start in range(0, len(rows), batch_size):
                        idx = order[start:start + batch_size]
                        out[first + idx] = encoder(idx).float().cpu().numpy()
        return out


def _matches(encoder, backbone, X, device):
    """The cut model must reproduce the full forward pass (eval mode)."""
    idx = np.arange(min(2, n_samples(X)))
    backbone.module.eval()
    try:
        with torch.no_grad():
            cut = encoder(idx)
            whole = _Encoder(backbone, X, device)(idx)
    except Exception:  # noqa: BLE001 - a cut that cannot run is not used
        return False
    return (isinstance(cut, torch.Tensor) and cut.shape == whole.shape
            and torch.allclose(cut, whole, rtol=1e-4, atol=1e-5))


def make_encoder(backbone, X, n_frozen, *, cache, cache_prefix, batch_size, device,
                 progress):
    """A callable ``indices -> embeddings`` (with gradients through the
    unfrozen blocks), reading the first ``n_frozen`` blocks' outputs from the
    feature cache when the backbone can be cut there."""
    if n_frozen == 0 or not cache_prefix:
        return _Encoder(backbone, X, device)
    layers = _text_layers(backbone)
    name, modules = backbone.blocks[n_frozen - 1]
    if layers is not None and n_frozen - 1 <= len(layers):
        key = None if cache is None else extraction_key(
            backbone, layer=name, pooling=None, rows="token states, unpadded")
        rows = _token_states(backbone, X, modules[-1], cache, key, batch_size, device,
                             progress, max_bytes=_prefix.PREFIX_MAX_BYTES)
        if rows is None:  # too large to hold: run the frozen layers every step
            return _Encoder(backbone, X, device)
        encoder = _TextTopEncoder(backbone, rows, n_frozen - 1, device)
        if _matches(encoder, backbone, X, device):
            encoder.key = key
            return encoder
        return _Encoder(backbone, X, device)
    split = split_frozen_prefix(backbone, n_frozen, X, device)
    held, cache = (False, None) if split is None else prefix_storage(
        split.row_nbytes * n_samples(X), cache)
    if not held:
        return _Encoder(backbone, X, device)
    key = None if cache is None else extraction_key(backbone, layer=split.block_name,
                                                     pooling=None)
    inputs = forward_batches(split.prefix, backbone.preprocess, X, batch_size=batch_size,
                             device=device, progress=progress, desc="frozen blocks",
                             cache=cache, key=key, pool=False, like=split.row_spec)
    return _SplitEncoder(split, inputs, device)


# -- training -----------------------------------------------------------------
def linear_schedule(total_steps, warmup_fraction=WARMUP_FRACTION):
    """Learning-rate factor per step: a linear rise over the first
    ``warmup_fraction`` of the steps, then a linear fall to zero (the
    schedule of SetFit and Hugging Face's Trainer; the first steps do not
    wreck a pretrained encoder with a full-size update, the last ones
    settle it)."""
    warmup = math.ceil(warmup_fraction * total_steps)

    def factor(step):
        if step < warmup:
            return step / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def contrastive_tune(module, encode, targets, *, pair_sampling, loss, n_iterations,
                     epochs, batch_size, optimizer, lr, rng, device, progress,
                     schedule="constant", temperature=SUPCON_TEMPERATURE):
    """Train the unfrozen blocks of ``module`` (a TransferModule: frozen
    blocks stay in eval mode) on contrastive pairs, the learning rate
    constant or following :func:`linear_schedule`; returns the mean loss of
    each epoch."""
    params = [p for p in module.backbone.parameters() if p.requires_grad]
    opt = optimizer(params, lr=lr)
    labels = torch.as_tensor(targets, device=device)
    batches = pair_batches if pair_sampling == "pairs" else balanced_batches
    total = epochs * n_steps(targets, pair_sampling, n_iterations, batch_size)
    scheduler = (torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(total))
                 if schedule == "linear" else None)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="contrastive", unit="step")
    losses = []
    module.train()
    try:
        for epoch in range(1, epochs + 1):
            running = []
            for step, (idx, mask) in enumerate(
                    batches(targets, n_iterations, batch_size, rng), start=1):
                value = contrastive_loss(encode(idx), labels[idx],
                                         torch.as_tensor(mask, device=device), loss,
                                         temperature)
                if value is not None and not torch.isfinite(value.detach()):
                    raise diverged(value.item(), f"epoch {epoch}, step {step} of the "
                                   "contrastive tuning", f"Lower backbone_lr (now {lr:g})")
                if value is not None:  # a batch without pairs to learn from: no step
                    opt.zero_grad(set_to_none=True)
                    value.backward()
                    opt.step()
                    running.append(float(value.detach()))
                if scheduler is not None:
                    scheduler.step()
                if bar is not None:
                    bar.update(1)
                    if running:
                        bar.set_postfix(loss=f"{running[-1]:.4f}")
            losses.append(float(np.mean(running)) if running else float("nan"))
    finally:
        module.eval()
        if bar is not None:
            bar.close()
    return losses


def embed(encode, n, batch_size):
    """Embeddings of samples ``0..n-1`` (no gradients), as float64 numpy."""
    with torch.no_grad():
        parts = [encode(np.arange(s, min(s + batch_size, n))).float().cpu().numpy()
                 for s in range(0, n, batch_size)]
    return np.concatenate(parts).astype(np.float64)


def logistic_head(features, targets, n_classes, C, seed):
    """Multinomial L2 logistic regression on unit-length features, as an
    ``nn.Linear`` giving the same class probabilities (two classes: logits
    ``(0, w.x + b)``)."""
    from sklearn.linear_model import LogisticRegression

    z = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    model = LogisticRegression(C=C, max_iter=1000, random_state=seed).fit(z, targets)
    coef, intercept = model.coef_, model.intercept_
    if n_classes == 2:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    linear = nn.Linear(z.shape[1], n_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(intercept, dtype=torch.float32))
    return linear
