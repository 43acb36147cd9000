"""TransferClassifier: fine-tune a pretrained backbone with a new head."""

from __future__ import annotations

import time
from numbers import Real

import numpy as np
import torch
from scipy.special import softmax
from sklearn.base import ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d
from skorch.history import History
from torch import nn

from ._atomic import atomic_fit
from ._base import TransferEstimator
from ._cache import resolve_cache
from ._constraints import Count
from ._contrastive import (
    CONTRASTIVE_LOSSES,
    LR_SCHEDULES,
    PAIR_SAMPLINGS,
    TextTopReader,
    check_few_shot_labels,
    contrastive_tune,
    embed,
    logistic_head,
    make_encoder,
    normalized_head,
)
from ._inference import seeded_torch, worker_threads
from ._labels import check_label_types
from ._training import TransferModule, build_net, make_head, optimizer_class
from .domain._convention import is_unlabelled
from .domain._losses import DOMAIN_LOSSES

__all__ = ["TransferClassifier"]


class TransferClassifier(ClassifierMixin, TransferEstimator):
    """Classifier that transfers a pretrained backbone to a new task.

    The backbone is cut below its original head, a new head sized for the
    classes in ``y`` is added, and the top ``unfreeze`` blocks of the
    backbone are fine-tuned with it (built on skorch). With ``unfreeze=0``
    the backbone runs once per fit and only the head trains on its features.

    Parameters
    ----------
    backbone : str, os.PathLike, torch.nn.Module, type or fitted estimator, default="resnet18"
        A torchvision model name (``"resnet18"``, ``"vit_b_16"``, ...), a
        sentence-transformers folder or hub name, a ``torch.nn.Module`` class
        or instance (copied, never modified), or a fitted sktl estimator whose
        trained backbone becomes the starting point (pretrain on a source
        domain, then ``TransferClassifier(backbone=source_clf)`` on the target).
        Stored as given; loaded in :meth:`fit`.
    weights : str, os.PathLike or None, default="DEFAULT"
        torchvision weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"``), a local
        checkpoint (``.pth``/``.safetensors``), or ``None`` for random
        initialisation.
    unfreeze : int or "all", default=0
        Number of backbone blocks, counted from the top, that are trained.
        ``0`` trains the head only; ``"all"`` fine-tunes the whole network.
        Frozen blocks keep their weights and BatchNorm statistics.
    head : {"linear", "mlp"} or callable, default="linear"
        The new head, or ``head(n_features, n_classes) -> nn.Module``.
    lr : float, default=1e-3
        Learning rate of the head.
    backbone_lr : float or None, default=None
        Learning rate of the unfrozen backbone blocks (discriminative
        fine-tuning); ``None`` means ``lr / 10``.
    max_epochs : int, default=10
        Passes over the training data.
    batch_size : int, default=32
        Batch size for training and inference.
    optimizer : {"adamw", "adam", "sgd"} or torch optimizer class, default="adamw"
    early_stopping : bool or int, default=False
        Hold out ``validation_fraction`` of the data and stop when the
        validation loss has not improved for 5 epochs (or this many, if an
        int); the best weights are restored.
    validation_fraction : float, default=0.1
        Fraction held out when ``early_stopping`` is on.
    device : str, default="auto"
        ``"auto"`` uses CUDA when available; or ``"cpu"``, ``"cuda:0"``, ...
    random_state : int, RandomState or None, default=None
        Seeds weight initialisation, shuffling, dropout and the validation
        split: the same value and data give identical predictions.
    cache : bool, str, os.PathLike, joblib.Memory or FeatureCache, default=True
        With ``unfreeze=0``, read the frozen backbone's features from the
        feature cache (shared with :class:`FeatureExtractor`, clones, CV
        folds and grid-search candidates); a folder path or a
        ``joblib.Memory`` also keeps them on disk, across restarts and
        ``n_jobs>1`` workers; see :class:`FeatureExtractor`.
    cache_prefix : bool, default=True
        With ``0 < unfreeze < n_blocks_``, run the frozen blocks once per fit
        (their outputs go through ``cache``, so CV folds and grid points
        share them) and train the unfrozen top on what they output, instead
        of running them every epoch. Frozen blocks are deterministic (eval
        mode), so the model is the same up to float rounding. Used when the
        backbone can be split with ``torch.fx`` (torchvision CNNs, most
        custom modules) and the stored outputs fit in 2 GiB; otherwise
        training runs through the frozen blocks. ``False`` always does.
    domain_loss : {"coral", "mmd", "dann"} or None, default=None
        Deep domain adaptation: rows of ``y`` equal to ``-1`` are unlabelled
        target-domain rows (see :mod:`sktl.domain`); each training batch adds
        to the cross-entropy of its labelled rows a loss that aligns the
        backbone's features of its source and target rows: Deep CORAL
        (covariances), multi-kernel MMD (DAN), or DANN (a domain
        discriminator behind a gradient-reversal layer). Needs
        ``unfreeze >= 1``. ``None``: ``-1`` is an ordinary label.
    domain_weight : float, default=1.0
        Weight of the domain loss.
    strategy : {"finetune", "contrastive"}, default="finetune"
        How the unfrozen blocks learn. ``"finetune"``: end to end with the
        head, by cross-entropy, the backbone at ``backbone_lr`` and the head
        at ``lr`` (discriminative learning rates). ``"contrastive"``: few-shot
        transfer in the manner of SetFit: first the unfrozen blocks alone are
        trained so that embeddings of the same class get close and those of
        different classes apart (``pair_sampling``, ``pair_iterations``,
        ``contrastive_loss``, ``contrastive_epochs``, at ``backbone_lr``),
        then the head is fitted on the tuned, L2-normalised embeddings
        (``head_C``). Usually the better choice with 8 to 64 labels per
        class. Needs ``unfreeze >= 1`` and two examples of every class;
        ``early_stopping``, ``domain_loss``, ``precision`` other than
        ``"32"`` and ``accelerator`` are for ``"finetune"`` only.
        With ``0 < unfreeze < n_blocks_`` the frozen blocks run once per
        sentence (through ``cache``; BERT-like sentence encoders and
        backbones ``torch.fx`` can split) and each step runs the top only.
    pair_sampling : {"batch", "pairs"}, default="batch"
        ``"contrastive"`` only. ``"batch"``: class-balanced batches of
        ``batch_size`` examples in which every pair counts (``batch_size``
        must exceed the number of classes, so that a batch holds positive
        pairs). ``"pairs"``:
        SetFit's list of pairs (per iteration, every example with one random
        positive and one random negative), ``batch_size`` pairs per step.
    pair_iterations : int, default=20
        ``"contrastive"`` only: SetFit's ``num_iterations``. Per epoch, every
        example is drawn this many times on average (``"batch"`` gives every
        class an equal share of each batch, so examples of smaller classes
        are drawn more often); with ``"pairs"`` each draw makes
        one positive and one negative pair, with ``"batch"`` it pairs the
        example with the rest of its batch. One epoch is
        ``ceil(pair_iterations * n_samples / batch_size)`` steps (``"batch"``)
        or ``ceil(2 * pair_iterations * n_samples / batch_size)`` (``"pairs"``).
    contrastive_loss : {"cosine", "supcon"}, default="cosine"
        ``"contrastive"`` only. ``"cosine"``: SetFit's loss, squared error
        between a pair's cosine similarity and 1 (same class) or 0, positive
        and negative pairs weighted equally. ``"supcon"``: supervised
        contrastive loss (Khosla et al. 2020) at ``contrastive_temperature``.
    contrastive_temperature : float, default=0.1
        ``contrastive_loss="supcon"`` only: temperature of the softmax over
        each anchor's pairs. Low values (0.05-0.1) weight the hardest
        negatives most; higher ones (0.3-1) weight all pairs more alike and
        move the encoder more gently. In the few-shot benchmark
        (all-MiniLM-L6-v2, every layer, ``pair_sampling="batch"``) dev sets
        chose 0.5 at 8 labelled sentences per class and 0.1 at 64.
    contrastive_epochs : int, default=1
        ``"contrastive"`` only: passes of the pair sampling.
    contrastive_schedule : {"constant", "linear"}, default="constant"
        ``"contrastive"`` only: learning rate of the tuning steps.
        ``"constant"``: ``backbone_lr`` throughout. ``"linear"``: SetFit's
        schedule, a linear warm-up over the first 10% of the steps to
        ``backbone_lr``, then a linear decay to zero.
    head_C : float or None, default=1.0
        ``"contrastive"`` with ``head="linear"``: inverse L2 regularisation of
        the logistic regression fitted in closed form (L-BFGS) as the head,
        as SetFit does. ``None``, or another ``head``: the head is trained by
        gradient descent on the tuned embeddings (``lr``, ``max_epochs``).
    verbose : int, default=0
        ``1`` prints an epoch log and progress bars for feature extraction,
        contrastive tuning and prediction; ``2`` adds a per-batch training
        progress bar.
    precision : {"32", "bf16", "fp16"}, default="32"
        Mixed precision: training and prediction run under
        ``torch.autocast`` in bfloat16 or float16 (weights stay float32;
        ``"fp16"`` also scales the loss, and needs CUDA; ``"bf16"`` also runs
        on CPUs). With an ``accelerator``, set it there instead.
    accelerator : accelerate.Accelerator or None, default=None
        Train through Hugging Face accelerate (skorch's ``AccelerateMixin``):
        under ``accelerate launch`` or ``torchrun`` every process fits the
        same estimator on the same data, the model is wrapped in
        ``DistributedDataParallel`` on the process's device and each
        process trains on its share of the batches (multi-GPU, multi-node).
        Stored as given, and shared (not copied) by clones.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels seen in :meth:`fit`.
    n_features_in_ : int
        Number of features, for array inputs only.
    backbone_ : sktl.backbones.Backbone
        The fine-tuned backbone, with its blocks and preprocessing.
    module_ : torch.nn.Module
        Backbone plus head.
    history_ : skorch.History
        Per-epoch training log (losses, durations); with
        ``strategy="contrastive"``, the mean contrastive loss of each epoch
        (``"contrastive_loss"``), then the head's epochs if it was trained
        by gradient.
    n_blocks_ : int
        Number of blocks ``unfreeze`` counts from.
    device_ : str
        Device the model lives on.

    See Also
    --------
    TransferRegressor : The same for regression targets.
    FeatureExtractor : Frozen features for any scikit-learn estimator.

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktl import TransferClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(60, 4)).astype("float32")
    >>> y = (X[:, 0] > 0).astype(int)
    >>> body = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
    >>> clf = TransferClassifier(body, unfreeze="all", lr=0.05, max_epochs=20,
    ...                          random_state=0).fit(X, y)
    >>> clf.classes_
    array([0, 1])
    >>> clf.score(X, y) > 0.9
    True

    Few-shot contrastive tuning (SetFit-like), with two classes of eight
    examples:

    >>> X = rng.normal(size=(16, 4)).astype("float32")
    >>> y = np.repeat([0, 1], 8)
    >>> X[y == 1] += 1.0
    >>> body = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
    >>> clf = TransferClassifier(body, unfreeze="all", strategy="contrastive",
    ...                          backbone_lr=1e-2, batch_size=8, contrastive_epochs=5,
    ...                          random_state=0).fit(X, y)
    >>> clf.history_[-1, "contrastive_loss"] < clf.history_[0, "contrastive_loss"]
    True
    >>> clf.score(X, y) > 0.9
    True
    """

    _criterion = nn.CrossEntropyLoss
    _y_validation = {"y_numeric": False}
    _parameter_constraints = {
        **TransferEstimator._parameter_constraints,
        "domain_loss": [StrOptions(set(DOMAIN_LOSSES)), None],
        "domain_weight": [Interval(Real, 0, None, closed="left")],
        "strategy": [StrOptions({"finetune", "contrastive"})],
        "pair_sampling": [StrOptions(set(PAIR_SAMPLINGS))],
        "pair_iterations": [Count(1)],
        "contrastive_loss": [StrOptions(set(CONTRASTIVE_LOSSES))],
        "contrastive_temperature": [Interval(Real, 0, None, closed="neither")],
        "contrastive_epochs": [Count(1)],
        "contrastive_schedule": [StrOptions(set(LR_SCHEDULES))],
        "head_C": [Interval(Real, 0, None, closed="neither"), None],
    }

    def __init__(self, backbone="resnet18", *, weights="DEFAULT", unfreeze=0,
                 head="linear", lr=1e-3, backbone_lr=None, max_epochs=10,
                 batch_size=32, optimizer="adamw", early_stopping=False,
                 validation_fraction=0.1, device="auto", random_state=None,
                 cache=True, cache_prefix=True, domain_loss=None, domain_weight=1.0,
                 strategy="finetune", pair_sampling="batch", pair_iterations=20,
                 contrastive_loss="cosine", contrastive_temperature=0.1,
                 contrastive_epochs=1, contrastive_schedule="constant", head_C=1.0,
                 verbose=0, precision="32", accelerator=None):
        super().__init__(backbone, weights=weights, unfreeze=unfreeze, head=head, lr=lr,
                         backbone_lr=backbone_lr, max_epochs=max_epochs,
                         batch_size=batch_size, optimizer=optimizer,
                         early_stopping=early_stopping,
                         validation_fraction=validation_fraction, device=device,
                         random_state=random_state, cache=cache,
                         cache_prefix=cache_prefix, verbose=verbose,
                         precision=precision, accelerator=accelerator)
        self.domain_loss = domain_loss
        self.domain_weight = domain_weight
        self.strategy = strategy
        self.pair_sampling = pair_sampling
        self.pair_iterations = pair_iterations
        self.contrastive_loss = contrastive_loss
        self.contrastive_temperature = contrastive_temperature
        self.contrastive_epochs = contrastive_epochs
        self.contrastive_schedule = contrastive_schedule
        self.head_C = head_C

    def fit(self, X, y):
        """Fit the head (and the unfrozen blocks) on ``X``, ``y``.

        Parameters
        ----------
        X : array-like, list of str, list of PIL images or paths
            Inputs of the kind the backbone reads.
        y : array-like of shape (n_samples,)
            Class labels of any type.

        Returns
        -------
        self : TransferClassifier
        """
        self._validate_params()
        check_label_types(y)
        if self.strategy == "contrastive":
            return self._fit_contrastive(X, y)
        self._fit(X, y)
        self._text_reader = None  # a contrastive fit's reader, now stale
        return self

    @atomic_fit
    def _fit_contrastive(self, X, y):
        """``strategy="contrastive"``: tune the unfrozen blocks on pairs, then
        fit the head on the tuned embeddings (see :mod:`sktl._contrastive`)."""
        if self.domain_loss is not None:
            raise ValueError("domain_loss is not supported with strategy='contrastive'; "
                             "use strategy='finetune'.")
        if getattr(self, "accelerator", None) is not None or self._precision() != "32":
            raise ValueError(
                "strategy='contrastive' trains in float32 in one process; set "
                "precision='32' and accelerator=None, or use strategy='finetune' for "
                "mixed precision and multi-process training.")
        if self.unfreeze == 0:
            raise ValueError(
                "strategy='contrastive' tunes backbone blocks, but unfreeze=0 freezes "
                "them all; unfreeze some (e.g. unfreeze=2: the top two layers of a "
                "sentence encoder, or 'all'), or use strategy='finetune' for a "
                "frozen backbone.")
        device = self._training_device()
        seed = self._torch_seed()
        with worker_threads(), seeded_torch(seed, device):
            rng = np.random.RandomState(seed)
            backbone, X, targets, n_classes, target_attrs, trainable = self._prepare_fit(
                X, y, device)
            check_few_shot_labels(targets, target_attrs["classes_"], self.pair_sampling,
                                  self.batch_size)
            n_blocks = len(backbone.blocks)
            n_frozen = 0 if trainable is None else n_blocks - self.unfreeze
            encode = make_encoder(backbone, X, n_frozen, cache=resolve_cache(self.cache),
                                  cache_prefix=self.cache_prefix,
                                  batch_size=self.batch_size, device=device,
                                  progress=self.verbose >= 1)
            body = TransferModule(backbone.module, nn.Identity(), trainable)
            start = time.perf_counter()
            losses = contrastive_tune(
                body, encode, targets, pair_sampling=self.pair_sampling,
                loss=self.contrastive_loss, n_iterations=self.pair_iterations,
                epochs=self.contrastive_epochs, batch_size=self.batch_size,
                optimizer=optimizer_class(self.optimizer), lr=self._backbone_lr(), rng=rng,
                device=device, progress=self.verbose >= 1, schedule=self.contrastive_schedule,
                temperature=self.contrastive_temperature)
            history = History()
            for epoch, value in enumerate(losses, start=1):
                history.new_epoch()
                history.record("epoch", epoch)
                history.record("contrastive_loss", value)
            history.record("dur", time.perf_counter() - start)
            features = embed(encode, len(targets), self.batch_size)
            head = self._contrastive_head(features, targets, n_classes, seed, device,
                                          history)
            module = TransferModule(backbone.module, normalized_head(head), trainable)
            module.eval()
        self._set_fitted(target_attrs, backbone, module, history, device, n_blocks,
                         reader=None)
        # Predictions read the frozen token states from the cache, as training did.
        key = getattr(encode, "key", None)
        self._text_reader = (None if key is None else
                             TextTopReader(backbone, n_frozen, key, trainable))
        return self

    def _model_lock(self):
        # A contrastive text reader cuts the model in place while it predicts.
        reader = getattr(self, "_text_reader", None)
        return super()._model_lock() if reader is None else reader.lock

    def _picklable_state(self):
        state = dict(super()._picklable_state())
        state.pop("_text_reader", None)  # tied to this process's tensors
        return state

    def _forward_in_memory(self, X, *, progress):
        reader = getattr(self, "_text_reader", None)
        if reader is None:
            return super()._forward_in_memory(X, progress=progress)
        with reader.lock:  # no full forward pass while another thread cuts the model
            return self._forward_through_reader(reader, X, progress=progress)

    def _forward_through_reader(self, reader, X, *, progress):
        cache = resolve_cache(self.cache)
        if cache is None or not reader.valid(self.backbone_):
            return super()._forward_in_memory(X, progress=progress)
        X, _ = self._validate_X(X, self.backbone_.input_kind, reset=False)
        self.module_.to(self.device_)
        with worker_threads():
            features = reader.features(self.backbone_, X, cache, self.batch_size,
                                       self.device_, progress)
            self.module_.head.eval()
            with torch.inference_mode():
                return self.module_.head(torch.from_numpy(features).to(self.device_)
                                         ).float().cpu().numpy()

    def _contrastive_head(self, features, targets, n_classes, seed, device, history):
        """Closed-form logistic regression, or a head trained by gradient on
        the (normalised) tuned embeddings."""
        if self.head == "linear" and self.head_C is not None:
            return logistic_head(features, targets, n_classes, self.head_C, seed).to(device)
        z = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        head = make_head(self.head, z.shape[1], n_classes).to(device)
        net = build_net(head, self._criterion, lr=self.lr, backbone_lr=self.lr,
                        optimizer=self.optimizer, max_epochs=self.max_epochs,
                        batch_size=self.batch_size, device=device, valid_dataset=None,
                        early_stopping=False, collate=None, verbose=self.verbose)
        data = torch.utils.data.TensorDataset(torch.from_numpy(z.astype(np.float32)),
                                              torch.from_numpy(targets))
        net.fit(data, y=None)
        for row in net.history:
            history.new_epoch()
            history.record("epoch", len(history))
            history.record("head_loss", row["train_loss"])
            history.record("dur", row["dur"])
        return net.module_

    def _encode_targets(self, y):
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if self.domain_loss is not None:
            return self._encode_with_target_rows(y)
        return self._encode_labelled(y)

    def _encode_with_target_rows(self, y):
        """Labels for the labelled rows; -1 marks unlabelled target rows."""
        target = is_unlabelled(y)
        if not target.any():
            raise ValueError(
                f"domain_loss={self.domain_loss!r} needs unlabelled target-domain rows: "
                "stack them with the source rows in X and give them the label -1 "
                "in y (sktl.domain.UNLABELLED).")
        targets, n_classes, attrs = self._encode_labelled(y[~target])
        full = np.full(len(y), -1, dtype=np.int64)
        full[~target] = targets
        return full, n_classes, attrs

    def _encode_labelled(self, y):
        encoder = LabelEncoder().fit(y)
        if len(encoder.classes_) < 2:
            found = (f"only one class ({encoder.classes_[0]!r})" if len(encoder.classes_)
                     else "no labelled row (every label is -1, unlabelled)")
            raise ValueError(f"y contains {found}; a classifier needs samples of at least "
                             "two classes.")
        targets = encoder.transform(y).astype(np.int64)
        return targets, len(encoder.classes_), {"classes_": encoder.classes_}

    def _stratify(self, targets):
        # Soft targets (distillation) carry the hard label in column 0.
        return targets if targets.ndim == 1 else targets[:, 0]

    def decision_function(self, X):
        """Logits; for two classes the logit of ``classes_[1]`` minus ``classes_[0]``.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        logits = self._forward(X).astype(np.float64)
        if logits.shape[1] == 2:
            return logits[:, 1] - logits[:, 0]
        return logits

    def predict_proba(self, X):
        """Class probabilities, columns ordered as ``classes_``.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        return softmax(self._forward(X).astype(np.float64), axis=1)

    def predict(self, X):
        """Most probable class per sample.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        logits = self._forward(X)
        return self.classes_[np.argmax(logits, axis=1)]
