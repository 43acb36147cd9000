"""sktl: transfer learning as scikit-learn estimators.

Pretrained backbones (torchvision CNNs, sentence-transformers encoders, your
own ``torch.nn.Module`` or a fitted sktl model) wrapped as estimators:

* :class:`FeatureExtractor` -- frozen features for any sklearn estimator;
* :class:`TransferClassifier` / :class:`TransferRegressor` -- a new head,
  with the top ``unfreeze`` backbone blocks fine-tuned by a criterion of
  :mod:`sktl.losses` (a deep domain-adaptation loss, for instance);
* :class:`ContrastiveClassifier` -- few-shot text classification: an encoder
  tuned contrastively, then a logistic-regression head (SetFit-style);
* :class:`DomainAdaptTransformer` -- align source features with a target
  domain (CORAL, subspace alignment, TCA, optimal transport, JDA); see
  :mod:`sktl.domain` for how target rows are marked (``y = -1``);
* :class:`DistillationClassifier` -- a small student trained on a teacher's
  soft targets, unlabelled transfer rows included;
* :class:`SubdomainEnsembleClassifier` -- multi-level transfer: one expert per
  source subdomain, combined by similarity (a gate) or stacking;
* :class:`TransferDetector` -- a torchvision object detector (SSD300-VGG16,
  SSDlite, Faster R-CNN) fine-tuned on new classes or a new environment.
"""

__version__ = "0.1.0"  # first: submodules read it

from . import callbacks, exceptions, losses
from ._cache import FeatureCache, default_cache
from ._config import config_context, get_config, set_config
from ._streaming import image_files, iter_chunks, transform_to_memmap
from .classifier import TransferClassifier
from .detection import TransferDetector
from .distillation import DistillationClassifier
from .domain import DomainAdaptTransformer, make_da_pipeline
from .ensemble import SubdomainEnsembleClassifier
from .features import FeatureExtractor
from .fewshot import ContrastiveClassifier
from .persistence import load, save
from .regressor import TransferRegressor

__all__ = [
    "ContrastiveClassifier",
    "DistillationClassifier",
    "DomainAdaptTransformer",
    "FeatureCache",
    "FeatureExtractor",
    "SubdomainEnsembleClassifier",
    "TransferClassifier",
    "TransferDetector",
    "TransferRegressor",
    "__version__",
    "callbacks",
    "config_context",
    "default_cache",
    "exceptions",
    "get_config",
    "image_files",
    "iter_chunks",
    "load",
    "losses",
    "make_da_pipeline",
    "save",
    "set_config",
    "transform_to_memmap",
]
