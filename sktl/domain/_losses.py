"""Deep domain-adaptation losses: align source and target features while
the network trains on source labels (``TransferClassifier(domain_loss=...)``).

Each loss is a module ``loss(source_features, target_features) -> scalar``
already multiplied by its weight; batches with too few rows of a domain
contribute zero (nothing to compare), never NaN.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DOMAIN_LOSSES", "CoralLoss", "DannLoss", "MmdLoss", "make_domain_loss"]


def _covariance(f):
    centred = f - f.mean(0, keepdim=True)
    return centred.T @ centred / (len(f) - 1)


class CoralLoss(nn.Module):
    """Deep CORAL (Sun and Saenko, ECCV-W 2016): squared Frobenius distance
    between the feature covariances, ``||Cs - Ct||^2 / (4 d^2)``."""

    def __init__(self, weight=1.0):
        super().__init__()
        self.weight = weight

    def forward(self, fs, ft):
        if len(fs) < 2 or len(ft) < 2:
            return fs.sum() * 0.0
        d = fs.shape[1]
        return self.weight * (_covariance(fs) - _covariance(ft)).pow(2).sum() / (4 * d * d)


class MmdLoss(nn.Module):
    """Multi-kernel maximum mean discrepancy (DAN, Long et al. ICML 2015):
    Gaussian kernels at 5 bandwidths around the batch's median distance."""

    def __init__(self, weight=1.0, scales=(0.25, 0.5, 1.0, 2.0, 4.0)):
        super().__init__()
        self.weight = weight
        self.scales = scales

    def forward(self, fs, ft):
        if len(fs) < 1 or len(ft) < 1:
            return fs.sum() * 0.0
        both = torch.cat([fs, ft])
        d2 = torch.cdist(both, both).pow(2)
        # Bandwidth from the data, without gradient (a moving target otherwise).
        base = d2.detach()[d2.detach() > 0].median() if (d2.detach() > 0).any() else \
            torch.ones((), device=d2.device)
        kernel = sum(torch.exp(-d2 / (base * s)) for s in self.scales)
        n = len(fs)
        k_ss, k_tt, k_st = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
        return self.weight * (k_ss.mean() + k_tt.mean() - 2 * k_st.mean())


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.scale * grad, None


class DannLoss(nn.Module):
    """Domain-adversarial training (DANN, Ganin et al. JMLR 2016).

    A small discriminator learns to tell source from target features; a
    gradient-reversal layer makes the features learn to fool it. Its
    parameters train with the head's learning rate. As in the paper, the
    reversed gradient ramps up from 0 to 1 over training
    (``2 / (1 + exp(-10 p)) - 1`` at progress ``p``), so that the
    features are not pushed around by a discriminator that has not learnt
    anything yet; the training loop sets :attr:`progress` each epoch.
    """

    def __init__(self, n_features, weight=1.0, hidden=256):
        super().__init__()
        self.weight = weight
        self.progress = 0.0
        self.discriminator = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(),
                                           nn.Linear(hidden, 1))

    def forward(self, fs, ft):
        if len(fs) < 1 or len(ft) < 1:
            return fs.sum() * 0.0 + sum(p.sum() * 0.0 for p in self.parameters())
        ramp = 2.0 / (1.0 + math.exp(-10.0 * self.progress)) - 1.0
        features = _ReverseGradient.apply(torch.cat([fs, ft]), ramp)
        logits = self.discriminator(features).squeeze(1)
        domain = torch.cat([torch.ones(len(fs)), torch.zeros(len(ft))]).to(logits)
        return self.weight * F.binary_cross_entropy_with_logits(logits, domain)


DOMAIN_LOSSES = ("coral", "mmd", "dann")


def make_domain_loss(name, n_features, weight):
    """The loss module for ``domain_loss=name``."""
    if name == "coral":
        return CoralLoss(weight)
    if name == "mmd":
        return MmdLoss(weight)
    if name == "dann":
        return DannLoss(n_features, weight)
    raise ValueError(f"domain_loss={name!r}; valid values are {DOMAIN_LOSSES} or None.")
