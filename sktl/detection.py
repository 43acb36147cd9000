"""TransferDetector: fine-tune a torchvision object detector on new classes."""

from __future__ import annotations

import os
from numbers import Real
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.frozen import FrozenEstimator
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import (
    TRAINING_CONSTRAINTS,
    BackboneEstimatorMixin,
    is_accelerator,
    training_device,
)
from ._config import get_config
from ._constraints import Count
from ._engine import (
    OPTIMIZERS,
    DetectorModule,
    ShuffledBatches,
    TargetedImages,
    optimizer_class,
    seeded_torch,
    train,
    worker_threads,
)
from ._engine.data import batch_indices as _batches
from ._streaming import default_chunk_size, is_stream, map_chunks
from .backbones import WeightsUnavailableError, load_state_dict_file
from .exceptions import SaveFormatError
from .losses import DetectionLoss

__all__ = ["DETECTION_MODELS", "TransferDetector"]

#: Supported torchvision detection architectures.
DETECTION_MODELS = (
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)

#: Per architecture: the "new layers" (always trained) and the classification
#: head(s) that are replaced when the classes change (qualified names).
_NEW_LAYERS = {
    "ssd": ("head", "backbone.extra", "backbone.scale_weight"),
    "fasterrcnn": ("rpn", "roi_heads"),
}
_CLASS_HEADS = {
    "ssd": ("head.classification_head",),
    "fasterrcnn": ("roi_heads.box_predictor",),
}
#: SSD300's extra layers (3x3 convolutions without padding) need this input.
_SSD300_MIN_SIZE = 300


def _family(name):
    return "fasterrcnn" if name.startswith("fasterrcnn") else "ssd"


def _under(key, prefixes):
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _with_params(module, prefix):
    return [f"{prefix}.{n}" for n, m in module.named_children()
            if any(True for _ in m.parameters())]


def detector_blocks(model, name):
    """Backbone blocks of a torchvision detector, bottom to top.

    Returns a list of ``(block name, [qualified module names])``:

    - ``ssd300_vgg16``: the VGG16 base (``backbone.features``, up to
      conv4_3) split after each max-pooling layer: ``conv1`` .. ``conv4``;
    - ``ssdlite320_mobilenet_v3_large``: each MobileNetV3 layer with weights
      (the children of ``backbone.features.0`` then ``backbone.features.1``);
    - ``fasterrcnn_mobilenet_v3_large*_fpn``: each MobileNetV3 layer with
      weights (``backbone.body.0`` .. ``backbone.body.16``), then the
      feature pyramid ``backbone.fpn`` as the top block.
    """
    if name == "ssd300_vgg16":
        blocks, current = [], []
        for child_name, child in model.backbone.features.named_children():
            current.append(f"backbone.features.{child_name}")
            if isinstance(child, torch.nn.MaxPool2d):
                blocks.append(current)
                current = []
        if current:
            blocks.append(current)
        return [(f"conv{i + 1}", mods) for i, mods in enumerate(blocks)]
    if name == "ssdlite320_mobilenet_v3_large":
        features = model.backbone.features
        names = [*_with_params(features[0], "backbone.features.0"),
                 *_with_params(features[1], "backbone.features.1")]
        return [(n, [n]) for n in names]
    names = _with_params(model.backbone.body, "backbone.body")
    return [*[(n, [n]) for n in names], ("backbone.fpn", ["backbone.fpn"])]


def _build(name, n_classes, min_size):
    """A randomly initialised torchvision detector (nothing downloaded)."""
    import torchvision
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    builder = torchvision.models.get_model_builder(name)
    kwargs = {}
    if min_size is not None and name.startswith("fasterrcnn"):
        kwargs["min_size"] = int(min_size)
    model = builder(weights=None, weights_backbone=None, num_classes=n_classes, **kwargs)
    if min_size is not None and name.startswith("ssd"):
        # SSD resizes every image to a fixed square.
        t = model.transform
        model.transform = GeneralizedRCNNTransform(
            int(min_size), int(min_size), t.image_mean, t.image_std, size_divisible=1,
            fixed_size=(int(min_size), int(min_size)))
    return model


def _coco_state_dict(name):
    """torchvision's COCO weights of ``name``, or WeightsUnavailableError."""
    import torchvision

    enum_member = torchvision.models.get_model_weights(name).DEFAULT
    try:
        return enum_member.get_state_dict(progress=False)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsUnavailableError(
            f"Could not load {name} weights {enum_member} ({exc}). They are "
            f"downloaded once to {cache}; when offline, copy the file "
            f"{Path(enum_member.url).name} there, or pass weights=<path to a "
            "local checkpoint>, or weights=None for random initialisation."
        ) from exc


def _load(model, state, skip, what):
    """Load ``state`` into ``model``, except the keys under ``skip``; every
    other weight must be there, with the same shape."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not _under(k, skip)}
    missing = [k for k in own if k not in state and not _under(k, skip)
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{what} does not fit the architecture: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, shape mismatch {mismatched[:3]} "
            f"({len(missing)}, {len(unexpected)}, {len(mismatched)} in all).")
    model.load_state_dict(state, strict=False)


def _as_image(image, i):
    """One image -> float32 CHW tensor in [0, 1]."""
    if isinstance(image, torch.Tensor):
        if not image.is_floating_point() or image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"Image {i}: a tensor must be float CHW with 1 or 3 channels "
                             f"in [0, 1], got {image.dtype} of shape {tuple(image.shape)}.")
        out = image.detach().float().cpu()
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or not (
                array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))):
            raise ValueError(f"Image {i}: expected a uint8 array of shape (H, W) or "
                             f"(H, W, 3), got {array.dtype} of shape {array.shape}.")
        if array.ndim == 2:
            array = array[:, :, None]
        out = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float() / 255
    if out.shape[1] < 1 or out.shape[2] < 1:
        raise ValueError(f"Image {i} is empty (shape {tuple(out.shape)}).")
    if not torch.isfinite(out).all() or out.min() < 0 or out.max() > 1:
        raise ValueError(f"Image {i}: float values must be finite and in [0, 1].")
    return out.expand(3, -1, -1) if out.shape[0] == 1 else out


def _validate_images(images):
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if isinstance(images, (np.ndarray, torch.Tensor, str)) or not hasattr(images, "__len__"):
        raise ValueError("images must be a list of images (uint8 HxWx3 / HxW arrays or "
                         f"float CHW tensors), got {type(images).__name__}.")
    if len(images) == 0:
        raise ValueError("images is empty: at least one image is required.")
    return [_as_image(image, i) for i, image in enumerate(images)]


def _validate_targets(targets, images):
    """Targets -> list of (float32 boxes (n, 4), labels ndarray (n,))."""
    if isinstance(targets, dict) or not hasattr(targets, "__len__"):
        raise ValueError("targets must be a list of dicts with 'boxes' and 'labels'.")
    if len(targets) != len(images):
        raise ValueError(f"images and targets have different lengths: {len(images)} "
                         f"images, {len(targets)} targets.")
    out, raw = [], []
    for i, (target, image) in enumerate(zip(targets, images)):
        if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
            raise ValueError(f"Target {i} must be a dict with keys 'boxes' and 'labels'.")
        boxes = np.asarray(target["boxes"], dtype=np.float32)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"Target {i}: boxes must have shape (n, 4) in (x1, y1, x2, "
                             f"y2) format, got shape {boxes.shape}.")
        if not np.isfinite(boxes).all():
            raise ValueError(f"Target {i}: boxes contain NaN or infinite values.")
        if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
            raise ValueError(f"Target {i}: every box needs x2 > x1 and y2 > y1 "
                             "(xyxy format).")
        height, width = image.shape[-2:]
        # A pixel of slack: annotation tools round box edges past the border.
        outside = ((boxes[:, :2] < -_BOX_SLACK).any(axis=1)
                   | (boxes[:, 2] > width + _BOX_SLACK) | (boxes[:, 3] > height + _BOX_SLACK))
        if outside.any():
            raise ValueError(
                f"Target {i}: box {boxes[outside][0].tolist()} lies outside its "
                f"{width}x{height} image; boxes are (x1, y1, x2, y2) pixels within "
                "0..width and 0..height (clip them, or check the image/target order).")
        labels = np.asarray(target["labels"])
        if labels.ndim == 0 and boxes.shape[0] == 1:
            labels = labels.reshape(1)
        if labels.ndim != 1 or labels.shape[0] != boxes.shape[0]:
            raise ValueError(f"Target {i}: {boxes.shape[0]} boxes but labels of shape "
                             f"{labels.shape}.")
        out.append((boxes, labels))
        # As given: numpy has already turned [1, "cat"] into ["1", "cat"].
        raw.extend(np.asarray(target["labels"], dtype=object).ravel().tolist())
    _check_labels(raw)
    return out


#: Pixels a box may reach past the image border (rounded annotations).
_BOX_SLACK = 1.0


def _check_labels(values):
    """Labels of every box, as given: all numbers or all strings, no NaN
    (numpy would turn a mix into strings, and NaN != NaN would fail the
    lookup)."""
    numeric = [isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
               for v in values]
    if any(numeric) and not all(numeric):
        raise ValueError("labels must be all numbers or all strings; got a mix "
                         f"(e.g. {values[numeric.index(True)]!r} and "
                         f"{values[numeric.index(False)]!r}).")
    if any(isinstance(v, (float, np.floating)) and np.isnan(v) for v in values):
        raise ValueError("labels contain NaN: give every box a label.")


def _encode(labels, classes):
    """Labels -> codes 1..K (0 is background); unknown labels -> K+1, K+2, ..."""
    index = {c: i + 1 for i, c in enumerate(classes.tolist())}
    extra = {}
    return np.array([index.get(v, extra.setdefault(v, len(index) + 1 + len(extra)))
                     for v in labels.tolist()], dtype=np.int64)


def _batchnorms(model, qualnames):
    """The BatchNorm layers inside the modules ``qualnames``."""
    return [m for q in qualnames for m in model.get_submodule(q).modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def _adapt_batchnorm(model, frozen_modules, images, batch_size, device):
    """AdaBN: replace the frozen blocks' BatchNorm statistics by those of
    ``images`` (weights untouched).

    A frozen block normalises with the statistics of the data it was trained
    on; on a new environment (night vs day) its activations are shifted and
    the features the new layers see are poor. Re-estimating the statistics
    on the target images (Li et al., "Adaptive Batch Normalization for
    practical domain adaptation", 2018) fixes that without labels.
    """
    layers = _batchnorms(model, frozen_modules)
    if not layers:
        return
    model.eval()
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
        bn.train()
    for idx in _batches(list(range(len(images))), batch_size):
        batch = [images[i].to(device) for i in idx]
        model.backbone(model.transform(batch)[0].tensors)
    for bn, momentum in zip(layers, momenta):
        bn.momentum = momentum
        bn.eval()


class TransferDetector(BackboneEstimatorMixin, BaseEstimator):
    """Object detector that transfers a torchvision detection model to new classes.

    Builds SSD300-VGG16, SSDlite320-MobileNetV3 or Faster R-CNN-MobileNetV3,
    starts from COCO weights (or a local checkpoint, a previously fitted
    detector, or random weights), gives it classification head(s) for the
    classes in the targets and fine-tunes it through sktl's training engine
    (the skorch net of every training estimator).

    With ``unfreeze=0`` only the *new layers* train -- the classic SSD
    recipe of freezing the base network: for SSD300 and SSDlite the
    detection ``head`` (classification and box regression) and the SSD
    extra layers (``backbone.extra``, plus SSD300's L2-norm scale);
    for Faster R-CNN the region proposal network ``rpn`` and the
    ``roi_heads``. ``unfreeze=n`` also trains the top ``n`` backbone blocks
    (see ``block_names_``), ``"all"`` trains everything. Frozen blocks keep
    their weights and stay in eval mode (BatchNorm statistics fixed).

    Parameters
    ----------
    model : str, fitted TransferDetector or FrozenEstimator, \
default="ssdlite320_mobilenet_v3_large"
        ``"ssd300_vgg16"``, ``"ssdlite320_mobilenet_v3_large"``,
        ``"fasterrcnn_mobilenet_v3_large_fpn"`` or
        ``"fasterrcnn_mobilenet_v3_large_320_fpn"``; or a fitted
        ``TransferDetector`` (optionally wrapped in
        ``sklearn.frozen.FrozenEstimator``) whose trained weights are the
        starting point, e.g. a "day" detector adapted to "night" scenes. If
        its ``classes_`` are the classes of the new targets, its heads are
        kept and retrained; otherwise new classification heads are made.
        The source is never modified.
    weights : "DEFAULT", str, os.PathLike or None, default="DEFAULT"
        ``"DEFAULT"``: torchvision's COCO weights of ``model`` (downloaded
        once to ``$TORCH_HOME/hub/checkpoints``; offline and not there:
        :class:`~sktl.backbones.WeightsUnavailableError`). A path: a local
        state dict (``.pth``/``.safetensors``) of the same architecture,
        e.g. those COCO weights copied by hand. ``None``: random
        initialisation of the whole network, backbone included. With
        ``"DEFAULT"`` or a path, the classification head(s) are replaced by
        new ones for the task's classes (Faster R-CNN's class-specific box
        regression too); every other weight is loaded. Ignored when
        ``model`` is a fitted detector.
    unfreeze : int or "all", default=0
        Backbone blocks, counted from the top, trained with the new layers.
        Blocks: SSD300: the VGG16 base split after each max-pooling
        (``conv1`` .. ``conv4``); SSDlite: each MobileNetV3 layer; Faster
        R-CNN: each MobileNetV3 layer, then the feature pyramid (top block).
        The models use ordinary BatchNorm (not torchvision's frozen
        BatchNorm), so the statistics of unfrozen blocks adapt to the data.
    lr : float, default=1e-3
        Learning rate.
    lr_schedule : {"constant", "linear", "cosine", "onecycle"}, default="constant"
        Learning rate over the optimiser steps, as in
        :class:`~sktl.TransferClassifier`.
    max_epochs : int, default=10
        Passes over the training images.
    batch_size : int, default=8
        Images per training step and per inference batch. Training batches
        are shuffled; a lone last image joins the batch before it.
    optimizer : {"adamw", "adam", "sgd"} or torch optimizer class, default="adamw"
    criterion : sktl.losses.DetectionLoss or None, default=None
        How the detector's own losses add up (None: their plain sum,
        ``DetectionLoss()``); e.g. ``DetectionLoss({"bbox_regression": 2.0})``
        weighs SSD's box regression twice.
    callbacks : list of skorch callbacks or None, default=None
        Called during training (sktl's training engine is a skorch net):
        ``Checkpoint``, ``LRScheduler``, ``ProgressBar``, loggers. There is no
        validation loss, and so no early stopping: torchvision's detectors
        only compute losses in training mode (see the user guide).
    score_threshold : float, default=0.05
        :meth:`predict` drops detections scoring below this.
    min_size : int or None, default=None
        Size the model resizes images to (None: the architecture's own,
        300/320 for SSD300/SSDlite, 800/320 for Faster R-CNN). SSD and
        SSDlite resize every image to ``min_size x min_size``; Faster R-CNN
        resizes the shorter side to ``min_size``. Small values (64, 128)
        make CPU training on small canvases fast. SSD300 needs at least 300.
        Boxes are always returned in input pixel coordinates.
    device : str or accelerate.Accelerator, default="auto"
        ``"auto"`` uses CUDA when available; or ``"cpu"``, ``"cuda:0"``, ...;
        or an ``accelerate.Accelerator``, which trains in several processes
        (``accelerate launch``) and decides device and precision.
    random_state : int, RandomState or None, default=None
        Seeds the new layers' initialisation and the shuffling: the same
        value and data give identical predictions.
    adapt_batchnorm : bool, default=False
        Before training, re-estimate the BatchNorm statistics of the frozen
        backbone blocks on the training images (AdaBN); their weights stay
        as they are. Use it when fine-tuning a detector on a new environment
        (e.g. day -> night) with frozen blocks: their day statistics shift
        the night features. No effect with ``unfreeze="all"``.
    verbose : int, default=0
        ``>= 1`` prints skorch's table of epochs, ``>= 2`` also a progress
        bar over the batches.
    precision : {"32", "bf16", "fp16"}, default="32"
        Training under ``torch.autocast`` in that dtype (fp16: CUDA only,
        with loss scaling); weights stay float32 and predictions are made in
        float32.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Labels seen in fit; the model's class ``k`` is ``classes_[k - 1]``
        (0 is the background).
    model_ : torch.nn.Module
        The fitted torchvision detector.
    model_name_ : str
        Its architecture.
    block_names_ : list of str
        Its backbone blocks, bottom to top.
    n_blocks_ : int
        ``len(block_names_)``.
    history_ : skorch.history.History
        Per epoch: ``train_loss`` (the criterion: by default the sum of the
        detector's losses), ``dur``, ...
    device_ : str
        Device the model lives on.

    See Also
    --------
    sktl.TransferClassifier : The same transfer recipe for classification.
    sktl.datasets.make_fashion_scenes : Day and night detection scenes.

    Examples
    --------
    >>> from sktl.datasets import make_fashion_scenes
    >>> from sktl import TransferDetector
    >>> images, targets = make_fashion_scenes(4, canvas_size=64, item_size=(20, 30),
    ...                                       random_state=0)
    >>> det = TransferDetector(weights=None, max_epochs=1, min_size=64, random_state=0)
    >>> det = det.fit(images, targets)
    >>> pred = det.predict(images[:1])
    >>> sorted(pred[0]), pred[0]["boxes"].shape[1]
    (['boxes', 'labels', 'scores'], 4)
    >>> 0.0 <= det.score(images, targets) <= 1.0
    True
    """

    _parameter_constraints: ClassVar[dict] = {
        "model": "no_validation",
        "weights": [StrOptions({"DEFAULT"}), str, os.PathLike, None],
        "unfreeze": [Count(0), StrOptions({"all"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Count(1)],
        "batch_size": [Count(1)],
        "optimizer": [StrOptions(set(OPTIMIZERS)), type],
        "score_threshold": [Interval(Real, 0, 1, closed="both")],
        "min_size": [Count(1), None],
        "random_state": ["random_state"],
        "adapt_batchnorm": ["boolean"],
        "criterion": [DetectionLoss, None],
        **{k: TRAINING_CONSTRAINTS[k] for k in ("lr_schedule", "callbacks", "device",
                                                "verbose", "precision")},
    }

    def __init__(self, model="ssdlite320_mobilenet_v3_large", *, weights="DEFAULT",
                 unfreeze=0, lr=1e-3, lr_schedule="constant", max_epochs=10, batch_size=8,
                 optimizer="adamw", criterion=None, callbacks=None, score_threshold=0.05,
                 min_size=None, device="auto", random_state=None, adapt_batchnorm=False,
                 verbose=0, precision="32"):
        self.model = model
        self.weights = weights
        self.unfreeze = unfreeze
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.criterion = criterion
        self.callbacks = callbacks
        self.score_threshold = score_threshold
        self.min_size = min_size
        self.device = device
        self.random_state = random_state
        self.adapt_batchnorm = adapt_batchnorm
        self.verbose = verbose
        self.precision = precision

    def __sklearn_clone__(self):
        # A fitted source detector passed as ``model`` is kept as is (it is
        # only read); sklearn's clone would replace it by an unfitted copy.
        from sklearn.base import clone

        # An accelerate.Accelerator (as device) is shared, never copied.
        params = {k: v if k == "model" or (k == "device" and is_accelerator(v))
                  else clone(v, safe=False) for k, v in self.get_params(deep=False).items()}
        return type(self)(**params)

    def get_params(self, deep=True):
        # A source detector passed as ``model`` is an artifact, not a step
        # whose parameters a grid search should reach.
        return BaseEstimator.get_params(self, deep=False)

    def set_params(self, **params):
        # sklearn would pass ``model__<name>`` on to the source detector,
        # which every clone in a grid search shares: refuse, as get_params hides them.
        nested = sorted(k for k in params if "__" in k)
        if nested:
            raise ValueError(
                f"TransferDetector has no nested parameters ({', '.join(nested)}): the "
                "source detector passed as model is read, never changed. Set the "
                "parameters of the source before fitting it.")
        return super().set_params(**params)

    # -- building -------------------------------------------------------------
    def _source(self):
        source = self.model
        if isinstance(source, FrozenEstimator):
            source = source.estimator
        if isinstance(source, str):
            if source not in DETECTION_MODELS:
                raise ValueError(f"Unknown detection model {source!r}; valid models are "
                                 f"{list(DETECTION_MODELS)} or a fitted TransferDetector.")
            return None
        if not isinstance(source, TransferDetector):
            raise TypeError(f"model must be one of {list(DETECTION_MODELS)} or a fitted "
                            f"TransferDetector, got {type(source).__name__}.")
        if not hasattr(source, "model_"):
            raise ValueError("model=TransferDetector(...) is not fitted. Fit it on the "
                             "source data first, then pass it as model= to fine-tune on "
                             "the target.")
        return source

    def _min_size_of(self, source):
        """The size images are resized to: ours, else the source detector's."""
        if source is not None and self.min_size is None:
            return source._min_size
        return self.min_size

    def _make_model(self, classes):
        source = self._source()
        name = self.model if source is None else source.model_name_
        min_size = self._min_size_of(source)
        if name == "ssd300_vgg16" and min_size is not None and min_size < _SSD300_MIN_SIZE:
            raise ValueError(f"ssd300_vgg16 needs min_size >= {_SSD300_MIN_SIZE} (its "
                             f"extra layers shrink the feature maps), got {min_size}.")
        model = _build(name, len(classes) + 1, min_size)
        heads = _CLASS_HEADS[_family(name)]
        if source is not None:
            same = (len(source.classes_) == len(classes)
                    and bool(np.all(source.classes_ == classes)))
            _load(model, source.model_.state_dict(), () if same else heads,
                  "The source detector's model")
        elif self.weights == "DEFAULT":
            _load(model, _coco_state_dict(name), heads, f"torchvision's {name} weights")
        elif self.weights is not None:
            path = Path(self.weights)
            if not path.is_file():
                raise ValueError(f"weights={self.weights!r} is neither 'DEFAULT', None, "
                                 "nor an existing checkpoint file.")
            _load(model, load_state_dict_file(path), heads, f"Checkpoint {path}")
        return name, model

    def _freeze(self, model, name):
        """Set ``requires_grad``; return (block names, frozen module names)."""
        blocks = detector_blocks(model, name)
        n_blocks = len(blocks)
        if self.unfreeze == "all":
            model.requires_grad_(True)
            return blocks, []
        if self.unfreeze > n_blocks:
            raise ValueError(f"unfreeze={self.unfreeze} but {name} has only {n_blocks} "
                             f"backbone blocks; use an int in [0, {n_blocks}] or 'all'.")
        trainable = list(_NEW_LAYERS[_family(name)])
        for _, mods in blocks[n_blocks - self.unfreeze:]:
            trainable += mods
        for key, param in model.named_parameters():
            param.requires_grad_(_under(key, trainable))
        frozen = [m for _, mods in blocks[:n_blocks - self.unfreeze] for m in mods]
        return blocks, frozen

    # -- fitting --------------------------------------------------------------
    def fit(self, images, targets):
        """Fine-tune the detector.

        Parameters
        ----------
        images : list of ndarray or torch.Tensor
            uint8 arrays of shape (H, W, 3) or (H, W) (grey), or float
            tensors of shape (3, H, W) in [0, 1]; sizes may differ.
        targets : list of dict
            One per image: ``"boxes"`` of shape (n, 4) in ``(x1, y1, x2, y2)``
            pixels (n may be 0) and ``"labels"`` of shape (n,) (any
            hashable, sortable values: ints, strings).

        Returns
        -------
        self : TransferDetector
        """
        self._validate_params()
        tensors = _validate_images(images)
        checked = _validate_targets(targets, tensors)
        all_labels = [labels for _, labels in checked if len(labels)]
        if not all_labels:
            raise ValueError("targets hold no box: at least one labelled box is needed.")
        try:
            classes = np.unique(np.concatenate(all_labels))
        except TypeError as exc:  # e.g. None among strings
            raise ValueError(f"labels must be all numbers or all strings ({exc}).") from exc
        device, accelerator = training_device(self.device, self.precision)
        with worker_threads(), seeded_torch(self._torch_seed(), device):
            name, model = self._make_model(classes)
            blocks, frozen = self._freeze(model, name)
            model.to(device)
            if self.adapt_batchnorm:
                _adapt_batchnorm(model, frozen, tensors, self.batch_size, device)
            train_targets = [{"boxes": torch.from_numpy(boxes),
                              "labels": torch.from_numpy(_encode(labels, classes))}
                             for boxes, labels in checked]
            history = self._train(model, frozen, tensors, train_targets, device, accelerator)
        # Set only once training succeeded: a failed refit keeps the old model.
        self.classes_ = classes
        self.model_ = model
        self.model_name_ = name
        self.block_names_ = [n for n, _ in blocks]
        self.n_blocks_ = len(blocks)
        self.history_ = history
        self.device_ = device
        self._min_size = self._min_size_of(self._source())
        return self

    def _train(self, model, frozen, images, targets, device, accelerator):
        """Train through the engine: the detector computes its own losses from
        the targets (an input in training mode), :class:`DetectionLoss` adds
        them up. Returns the skorch history."""
        module = DetectorModule(model, frozen)
        try:
            net = train(module, self.criterion or DetectionLoss(), TargetedImages(images, targets),
                        lr=self.lr, backbone_lr=self.lr,
                        optimizer=optimizer_class(self.optimizer), max_epochs=self.max_epochs,
                        batch_size=self.batch_size, device=device,
                        lr_schedule=self.lr_schedule,
                        batch_sampler=ShuffledBatches(len(images), self.batch_size),
                        callbacks=self.callbacks, precision=self.precision,
                        accelerator=accelerator, num_workers=get_config()["num_workers"],
                        verbose=self.verbose, hint=f"Lower lr (now {self.lr:g})")
        except ValueError as exc:
            if "more than 1 value per channel" not in str(exc):
                raise
            raise ValueError(
                "This detector's trainable BatchNorm layers cannot learn from a "
                "batch of one image; fit on at least 2 images with "
                f"batch_size >= 2 (got batch_size={self.batch_size}).") from exc
        model.eval()
        return net.history

    # -- the safe format (sktl.save / sktl.load): the architecture by name,
    # the weights in safetensors; nothing else is needed to predict.
    _safe_source_param = "model"
    _saved_attributes = ("classes_", "model_name_", "block_names_", "n_blocks_",
                         "_min_size")

    def _safe_recipe(self):
        return {"kind": "detection", "name": self.model_name_}, None

    @classmethod
    def _safe_new(cls, spec, trusted, params):
        if spec.get("kind") != "detection" or set(spec) != {"kind", "name"} \
                or spec["name"] not in DETECTION_MODELS:
            raise SaveFormatError(f"Cannot rebuild a detector from {spec!r}: expected "
                                  f"{{'kind': 'detection', 'name': one of {DETECTION_MODELS}}}.")
        return cls(model=spec["name"], **params)

    def _safe_rebuild(self, spec, trusted, n_features):
        return None  # the detector is rebuilt whole, by _safe_skeleton

    def _safe_module(self):
        return self.model_

    def _safe_n_outputs(self):
        return len(self.classes_) + 1  # the background is class 0

    def _safe_skeleton(self, backbone, n_outputs):
        return _build(self.model_name_, n_outputs, self._min_size)

    def _safe_restore(self, backbone, module, device):
        self.model_ = module.to(device).eval()
        self.device_ = device

    # -- inference ------------------------------------------------------------
    def predict(self, images):
        """Detect objects.

        Parameters
        ----------
        images : list of ndarray or torch.Tensor, or an iterator of them
            As in :meth:`fit`; an iterator or generator (or a ``numpy.memmap``)
            is read chunk by chunk, so memory does not grow with its length.

        Returns
        -------
        detections : list of dict
            One per image: ``"boxes"`` float32 (n, 4) ``(x1, y1, x2, y2)`` in
            input pixel coordinates, ``"labels"`` (n,) values of ``classes_``,
            ``"scores"`` float32 (n,), by decreasing score; detections scoring
            below ``score_threshold`` are left out.
        """
        check_is_fitted(self, "model_")
        if is_stream(images):  # an iterator of images: chunk by chunk
            return map_chunks(self.predict, images,
                              chunk_size=default_chunk_size(images, self.batch_size))
        tensors = _validate_images(images)
        model = self.model_.to(self.device_)
        model.eval()
        # The model's own cut-off follows score_threshold.
        if _family(self.model_name_) == "ssd":
            model.score_thresh = self.score_threshold
        else:
            model.roi_heads.score_thresh = self.score_threshold
        out = []
        with worker_threads(), torch.inference_mode():
            for start in range(0, len(tensors), self.batch_size):
                batch = [t.to(self.device_) for t in tensors[start:start + self.batch_size]]
                for det in model(batch):
                    scores = det["scores"].float().cpu().numpy()
                    keep = np.flatnonzero(scores >= self.score_threshold)
                    keep = keep[np.argsort(-scores[keep], kind="stable")]
                    codes = det["labels"].cpu().numpy()[keep]
                    out.append({
                        "boxes": det["boxes"].float().cpu().numpy()[keep].reshape(-1, 4),
                        "labels": self.classes_[codes - 1],
                        "scores": scores[keep].astype(np.float32),
                    })
        return out

    def score(self, images, targets):
        """Mean average precision at IoU 0.5 (mAP@0.5), in [0, 1].

        Computed by ``torchmetrics.detection.MeanAveragePrecision`` with
        COCO's conventions: averaged over the classes that have ground-truth
        boxes in ``targets`` (false positives of other classes do not count),
        at most the 100 best detections per image. Needs the ``detection``
        extra (``pip install "sktl[detection]"``).
        """
        check_is_fitted(self, "model_")
        try:
            from torchmetrics.detection import MeanAveragePrecision
        except ImportError as exc:
            raise ImportError('TransferDetector.score needs torchmetrics: pip install '
                              '"sktl[detection]".') from exc
        checked = _validate_targets(targets, _validate_images(images))
        if not any(len(boxes) for boxes, _ in checked):
            raise ValueError("targets hold no box: mAP is undefined without ground truth.")
        predictions = self.predict(images)
        # One code per label value, shared by predictions and ground truth;
        # labels unseen in fit get codes of their own (they can only be missed).
        index = {v: i for i, v in enumerate(self.classes_.tolist())}
        for _, labels in checked:
            for v in labels.tolist():
                index.setdefault(v, len(index))

        def codes(labels):
            return torch.as_tensor([index[v] for v in np.asarray(labels).tolist()],
                                   dtype=torch.int64)

        metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy",
                                      iou_thresholds=[0.5])
        metric.warn_on_many_detections = False  # COCO's 100 best per image
        metric.update(
            [{"boxes": torch.as_tensor(p["boxes"], dtype=torch.float32).reshape(-1, 4),
              "scores": torch.as_tensor(p["scores"], dtype=torch.float32),
              "labels": codes(p["labels"])} for p in predictions],
            [{"boxes": torch.from_numpy(boxes), "labels": codes(labels)}
             for boxes, labels in checked])
        return float(max(0.0, metric.compute()["map"].item()))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags
