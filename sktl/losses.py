"""Training criteria: what sktl's training estimators minimise.

Every estimator that trains (:class:`~sktl.TransferClassifier`,
:class:`~sktl.TransferRegressor`, :class:`~sktl.ContrastiveClassifier`,
:class:`~sktl.DistillationClassifier`, :class:`~sktl.TransferDetector`)
trains through one engine; what
differs between its modes is the criterion, one of these objects, passed as
``criterion=``. A criterion is a ``torch.nn.Module`` called as
``criterion(output, target)``:

* ``output`` is an :class:`Output`: the head's ``logits`` and the backbone's
  pooled ``features`` for the rows of the batch (``logits`` is ``None`` when
  no head trains, as in contrastive tuning);
* ``target`` is a dict of per-row tensors: ``"y"`` (class codes ``0..k-1``,
  ``-1`` for an unlabelled row; or float regression targets of shape
  ``(n, n_targets)``), and, when the fit has them, ``"sample_weight"`` (the
  product of ``sample_weight`` and ``class_weight``) and ``"soft"`` (a
  teacher's class probabilities, for distillation).

Sample weights enter every task loss per row (:func:`weighted_mean`), scaled
by the estimators to a mean of 1 over the rows of a fit: with the whole
training set in one batch, integer weights weigh a row as that many copies
of it would, and a zero weight as if the row were not there.

Your own loss plugs in two ways: a subclass of :class:`Loss` reads the
whole ``output`` and ``target``; a plain torch loss (``nn.CrossEntropyLoss()``,
``nn.HuberLoss``, a class or an instance) is called as
``loss(logits, y)`` on the labelled rows of each batch.

Examples
--------
>>> import numpy as np
>>> from torch import nn
>>> from sktl import TransferClassifier
>>> from sktl.losses import CrossEntropyLoss, DomainAwareLoss
>>> X = np.random.RandomState(0).normal(size=(60, 4)).astype("float32")
>>> y = np.r_[np.arange(40) % 2, [-1] * 20]   # 20 unlabelled target rows
>>> clf = TransferClassifier(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), unfreeze="all",
...                          criterion=DomainAwareLoss("coral"), max_epochs=2,
...                          random_state=0).fit(X, y)
>>> clf.classes_
array([0, 1])
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "CoralLoss",
    "CosinePairLoss",
    "CrossEntropyLoss",
    "DANNLoss",
    "DetectionLoss",
    "DistillationLoss",
    "DomainAwareLoss",
    "Loss",
    "MMDLoss",
    "MSELoss",
    "Output",
    "SupConLoss",
    "as_loss",
    "weighted_mean",
]


class Output(NamedTuple):
    """What the network gives a criterion for one batch.

    Attributes
    ----------
    logits : torch.Tensor or None
        The head's outputs, shape ``(n, n_outputs)``; ``None`` when only the
        backbone trains (contrastive tuning).
    features : torch.Tensor or None
        The backbone's pooled features, shape ``(n, n_features)`` (what the
        head reads); ``None`` for a module that does not expose them.
    losses : dict of str to torch.Tensor or None
        Losses the model computed itself in its forward pass (torchvision's
        detection models: ``loss_classifier``, ``loss_box_reg``, ...), for
        :class:`DetectionLoss`; ``None`` otherwise.
    """

    logits: torch.Tensor | None
    features: torch.Tensor | None
    losses: dict | None = None


class Loss(nn.Module):
    """Base class of sktl's criteria: ``forward(output, target) -> scalar``.

    Subclasses set three class attributes the estimators read:

    * ``uses_unlabelled``: rows labelled ``-1`` take part in the fit (domain
      losses align them, distillation learns their soft targets); otherwise
      ``-1`` is an ordinary label;
    * ``trains_head``: the loss reads ``output.logits``; ``False`` for losses
      on the features alone (the contrastive losses), with which the head is
      fitted afterwards;
    * ``uses_soft_targets``: the loss reads ``target["soft"]``, class
      probabilities passed to ``fit`` as ``soft_targets``.

    ``prepare(n_features, n_outputs)`` is called once before training, with
    the widths of the features and of the head (``None`` without a head), for
    losses that own parameters of a size that depends on them.
    """

    uses_unlabelled = False
    trains_head = True
    uses_soft_targets = False

    def prepare(self, n_features, n_outputs):
        """Called once before training; a no-op unless overridden."""

    def forward(self, output, target):  # pragma: no cover - abstract
        raise NotImplementedError


def _labelled(target):
    y = target["y"]
    return y >= 0 if y.ndim == 1 and not y.is_floating_point() else None


def weighted_mean(values, target, rows=None):
    """Mean of per-row ``values`` over ``rows`` (a boolean mask, or every
    row), each weighted by ``target["sample_weight"]`` when present; 0 (with
    gradients) when no row counts.

    The estimators scale the weights to a mean of 1 over the rows of a fit,
    so that a batch weighs what its rows weigh: a batch of light rows moves
    the model less, as in scikit-learn's SGD estimators, and with the whole
    training set in one batch the loss is exactly the weighted mean
    ``sum(w * l) / sum(w)`` (integer weights act as repeated rows, zero
    weights as absent rows).
    """
    weights = target.get("sample_weight")
    if rows is not None:
        values = values[rows]
        weights = None if weights is None else weights[rows]
    if not len(values):
        return values.sum() * 0.0
    if weights is None:
        return values.mean()
    return (values * weights.to(values.dtype)).sum() / len(values)


class CrossEntropyLoss(Loss):
    """Cross-entropy on the labelled rows (``y >= 0``), weighted per row.

    Parameters
    ----------
    label_smoothing : float, default=0.0
        As in :class:`torch.nn.CrossEntropyLoss`.
    """

    def __init__(self, label_smoothing=0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, output, target):
        y = target["y"]
        rows = y >= 0
        per_row = F.cross_entropy(output.logits, y.clamp(min=0), reduction="none",
                                  label_smoothing=self.label_smoothing)
        return weighted_mean(per_row, target, rows)


class MSELoss(Loss):
    """Mean squared error over the targets of each row, weighted per row
    (the regressor standardises its targets before training)."""

    def forward(self, output, target):
        # In float32 whatever the autocast precision (targets are not rounded).
        per_row = (output.logits.float() - target["y"].float()).pow(2).mean(dim=1)
        return weighted_mean(per_row, target)


# -- domain adaptation --------------------------------------------------------
def _covariance(f):
    centred = f - f.mean(0, keepdim=True)
    return centred.T @ centred / (len(f) - 1)


class CoralLoss(nn.Module):
    """Deep CORAL (Sun and Saenko, ECCV-W 2016): the squared Frobenius
    distance between the source and target feature covariances,
    ``||Cs - Ct||^2 / (4 d^2)``; 0 when a side has fewer than 2 rows."""

    def forward(self, fs, ft):
        if len(fs) < 2 or len(ft) < 2:
            return fs.sum() * 0.0
        d = fs.shape[1]
        return (_covariance(fs) - _covariance(ft)).pow(2).sum() / (4 * d * d)


class MMDLoss(nn.Module):
    """Multi-kernel maximum mean discrepancy (DAN, Long et al. ICML 2015):
    Gaussian kernels at several bandwidths around the batch's median
    squared distance (taken without gradient).

    Parameters
    ----------
    scales : tuple of float, default=(0.25, 0.5, 1.0, 2.0, 4.0)
        Bandwidths, as multiples of the median squared distance.
    """

    def __init__(self, scales=(0.25, 0.5, 1.0, 2.0, 4.0)):
        super().__init__()
        self.scales = scales

    def forward(self, fs, ft):
        if len(fs) < 1 or len(ft) < 1:
            return fs.sum() * 0.0
        both = torch.cat([fs, ft])
        d2 = torch.cdist(both, both).pow(2)
        positive = d2.detach() > 0
        base = d2.detach()[positive].median() if positive.any() else \
            torch.ones((), device=d2.device)
        kernel = sum(torch.exp(-d2 / (base * s)) for s in self.scales)
        n = len(fs)
        k_ss, k_tt, k_st = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
        return k_ss.mean() + k_tt.mean() - 2 * k_st.mean()


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


class DANNLoss(nn.Module):
    """Domain-adversarial training (DANN, Ganin et al. JMLR 2016).

    A small discriminator learns to tell source from target features, and a
    gradient-reversal layer makes the features learn to fool it; its
    parameters train with the head's learning rate. The reversed gradient
    ramps up from 0 to 1 over training (``2 / (1 + exp(-10 p)) - 1`` at
    progress ``p``, set each epoch by the engine through :attr:`progress`),
    so that the features are not pushed around by a discriminator that has
    learnt nothing yet.

    Parameters
    ----------
    hidden : int, default=256
        Width of the discriminator's hidden layer.
    """

    def __init__(self, hidden=256):
        super().__init__()
        self.hidden = hidden
        self.progress = 0.0
        self.discriminator = None

    def prepare(self, n_features):
        self.discriminator = nn.Sequential(nn.Linear(n_features, self.hidden), nn.ReLU(),
                                           nn.Linear(self.hidden, 1))

    def forward(self, fs, ft):
        if self.discriminator is None:
            raise RuntimeError("DANNLoss.prepare(n_features) must be called before training.")
        if len(fs) < 1 or len(ft) < 1:
            return fs.sum() * 0.0 + sum(p.sum() * 0.0 for p in self.parameters())
        ramp = 2.0 / (1.0 + math.exp(-10.0 * self.progress)) - 1.0
        features = _ReverseGradient.apply(torch.cat([fs, ft]), ramp)
        logits = self.discriminator(features).squeeze(1)
        domain = torch.cat([torch.ones(len(fs)), torch.zeros(len(ft))]).to(logits)
        return F.binary_cross_entropy_with_logits(logits, domain)


#: ``DomainAwareLoss(domain=name)``: the domain losses by name.
DOMAIN_LOSSES = {"coral": CoralLoss, "mmd": MMDLoss, "dann": DANNLoss}


class DomainAwareLoss(Loss):
    """A task loss on the labelled (source) rows plus a domain loss that
    aligns the features of the labelled and unlabelled (target, ``y = -1``)
    rows of each batch, as skada's ``DomainAwareCriterion`` composes them.

    Parameters
    ----------
    domain : {"coral", "mmd", "dann"} or torch.nn.Module, default="coral"
        :class:`CoralLoss`, :class:`MMDLoss`, :class:`DANNLoss`, or a module
        ``loss(source_features, target_features) -> scalar``.
    weight : float, default=1.0
        Weight of the domain loss.
    task : Loss or None, default=None
        The task loss; ``None`` means :class:`CrossEntropyLoss`.

    Notes
    -----
    Sample weights and class weights apply to the task loss; every row
    counts alike in the domain loss. A batch with fewer than two rows of a
    domain adds nothing to the domain term (never NaN).
    """

    uses_unlabelled = True

    def __init__(self, domain="coral", weight=1.0, task=None):
        super().__init__()
        self.domain = domain
        self.weight = weight
        self.task = task

    def prepare(self, n_features, n_outputs):
        if isinstance(self.domain, str):
            if self.domain not in DOMAIN_LOSSES:
                raise ValueError(f"domain={self.domain!r}; use one of {sorted(DOMAIN_LOSSES)} "
                                 "or a module loss(source_features, target_features).")
            self.domain_ = DOMAIN_LOSSES[self.domain]()
        else:
            self.domain_ = self.domain
        if hasattr(self.domain_, "prepare"):
            self.domain_.prepare(n_features)
        self.task_ = CrossEntropyLoss() if self.task is None else as_loss(self.task)
        self.task_.prepare(n_features, n_outputs)

    @property
    def progress(self):
        return getattr(getattr(self, "domain_", None), "progress", None)

    @progress.setter
    def progress(self, value):
        if hasattr(getattr(self, "domain_", None), "progress"):
            self.domain_.progress = value

    def forward(self, output, target):
        labelled = target["y"] >= 0
        loss = self.task_(output, target)
        if output.features is None:
            raise ValueError("DomainAwareLoss needs the backbone's features; the module "
                             "does not expose them.")
        features = output.features
        return loss + self.weight * self.domain_(features[labelled], features[~labelled])


# -- distillation -------------------------------------------------------------
class DistillationLoss(Loss):
    """``alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)`` per
    row, weighted mean (Hinton et al. 2015).

    ``target["soft"]`` holds the teacher's probabilities at temperature
    ``T``; rows labelled ``-1`` have no cross-entropy term and learn from
    the teacher alone. The ``T^2`` factor keeps the soft term's gradients on
    the scale of the hard term's whatever ``T``.

    Parameters
    ----------
    temperature : float, default=2.0
    alpha : float, default=0.5
        Weight of the hard-label term, in ``[0, 1]``.
    """

    uses_unlabelled = True
    uses_soft_targets = True

    def __init__(self, temperature=2.0, alpha=0.5):
        super().__init__()
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def forward(self, output, target):
        logits = output.logits
        soft = target["soft"].to(logits.dtype)
        hard = target["y"]
        t = self.temperature
        log_student = F.log_softmax(logits / t, dim=1)
        # KL(teacher || student) = sum p log p - sum p log q; 0 log 0 = 0.
        per_row = (1.0 - self.alpha) * t * t * (torch.xlogy(soft, soft)
                                               - soft * log_student).sum(dim=1)
        labelled = hard >= 0
        if self.alpha > 0 and labelled.any():
            ce = F.cross_entropy(logits, hard.clamp(min=0), reduction="none")
            per_row = per_row + self.alpha * ce * labelled
        return weighted_mean(per_row, target)


# -- contrastive ----------------------------------------------------------------
def _pairs(target, features):
    z = F.normalize(features, dim=1)
    y = target["y"]
    same = y[:, None] == y[None, :]
    others = ~torch.eye(len(y), dtype=torch.bool, device=y.device)
    return z @ z.T, same & others, ~same


class SupConLoss(Loss):
    """Supervised contrastive loss (Khosla et al. 2020) over every pair of a
    batch: for each anchor with a positive, the log-probability of its
    positives among all its pairs, at ``temperature``.

    Parameters
    ----------
    temperature : float, default=0.1
        Low: the hardest negatives dominate the gradient; high: every pair
        counts alike.

    Notes
    -----
    Works on ``output.features`` (unit-normalised): the head is not trained
    by it. Sample weights weigh the anchors. A batch without a positive
    pair has no loss (``None``) and its step is skipped (a zero loss would
    still move the weights through weight decay and momentum).
    """

    trains_head = False

    def __init__(self, temperature=0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, output, target):
        sim, pos, neg = _pairs(target, output.features)
        anchors = pos.any(dim=1)
        if not anchors.any():
            return None
        mask = pos | neg
        logits = (sim / self.temperature).masked_fill(~mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        per_anchor = (log_prob.masked_fill(~pos, 0.0).sum(dim=1)[anchors]
                      / pos.sum(dim=1)[anchors])
        weights = target.get("sample_weight")
        if weights is not None and not (weights[anchors] > 0).any():
            return None  # every anchor weighs 0: nothing to learn from
        return -weighted_mean(per_anchor, target, None) if weights is None else \
            -(per_anchor * weights[anchors].to(per_anchor.dtype)).mean()


class CosinePairLoss(Loss):
    """SetFit's cosine-similarity loss over every pair of a batch: the
    squared error between a pair's cosine similarity and 1 (same class) or
    0 (different classes), positive and negative pairs weighted equally
    (and each pair by the product of its rows' sample weights)."""

    trains_head = False

    def forward(self, output, target):
        sim, pos, neg = _pairs(target, output.features)
        weights = target.get("sample_weight")
        pair_weight = None if weights is None else weights[:, None] * weights[None, :]
        terms = []
        for pairs, error in ((pos, (sim - 1.0) ** 2), (neg, sim ** 2)):
            if pairs.any():
                if pair_weight is None:
                    terms.append(error[pairs].mean())
                else:
                    terms.append((error[pairs] * pair_weight[pairs].to(error.dtype)).mean())
        return sum(terms) / len(terms) if terms else None


# -- detection ----------------------------------------------------------------------
class DetectionLoss(Loss):
    """The loss of :class:`~sktl.TransferDetector`: a weighted sum of the
    losses a torchvision detection model computes itself.

    torchvision's detectors take the target boxes as an input in training
    mode and return their losses (SSD: ``bbox_regression``,
    ``classification``; Faster R-CNN: ``loss_classifier``, ``loss_box_reg``,
    ``loss_objectness``, ``loss_rpn_box_reg``) in ``output.losses``; the
    criterion decides how they add up.

    Parameters
    ----------
    weights : dict of str to float or None, default=None
        Factor of each named loss (missing names: 1). ``None``: the plain
        sum, torchvision's reference recipe.

    Examples
    --------
    >>> import torch
    >>> from sktl.losses import DetectionLoss, Output
    >>> losses = {"bbox_regression": torch.tensor(2.0), "classification": torch.tensor(1.0)}
    >>> float(DetectionLoss()(Output(None, None, losses), {}))
    3.0
    >>> float(DetectionLoss({"bbox_regression": 0.5})(Output(None, None, losses), {}))
    2.0
    """

    def __init__(self, weights=None):
        super().__init__()
        self.weights = weights

    def forward(self, output, target):
        if output.losses is None:
            raise TypeError("DetectionLoss needs a model that computes its own losses "
                            "(a torchvision detection model in training mode).")
        weights = self.weights or {}
        unknown = set(weights) - set(output.losses)
        if unknown:
            raise ValueError(f"DetectionLoss weights name {sorted(unknown)}, which this "
                             f"model does not compute; its losses: {sorted(output.losses)}.")
        return sum(weights.get(name, 1.0) * value for name, value in output.losses.items())


# -- plain torch losses -----------------------------------------------------------
class _TorchLoss(Loss):
    """A plain torch loss called as ``loss(logits, y)`` on the labelled rows."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, output, target):
        if target.get("sample_weight") is not None:
            raise ValueError(
                f"sample_weight and class_weight need an sktl.losses criterion; "
                f"{type(self.loss).__name__} gets (logits, y) only. Use e.g. "
                "sktl.losses.CrossEntropyLoss, or subclass sktl.losses.Loss.")
        y = target["y"]
        rows = _labelled(target)
        if rows is None:
            return self.loss(output.logits, y.to(output.logits.dtype))
        return self.loss(output.logits[rows], y[rows])


def as_loss(criterion):
    """``criterion`` as an sktl :class:`Loss`: itself, or a plain torch loss
    (class or instance) wrapped to receive ``(logits, y)``.

    Raises
    ------
    TypeError
        If ``criterion`` is neither.
    """
    if isinstance(criterion, Loss):
        return criterion
    if isinstance(criterion, type) and issubclass(criterion, nn.Module):
        criterion = criterion()
    if isinstance(criterion, nn.Module):
        return criterion if isinstance(criterion, Loss) else _TorchLoss(criterion)
    raise TypeError(f"criterion must be an sktl.losses.Loss or a torch loss module (class "
                    f"or instance); got {type(criterion).__name__}.")
