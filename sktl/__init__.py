"""sktl: transfer learning as scikit-learn estimators.

Pretrained backbones (torchvision CNNs, sentence-transformers encoders, your
own ``torch.nn.Module`` or a fitted sktl model) wrapped as estimators:

* :class:`FeatureExtractor` -- frozen features for any sklearn estimator;
* :class:`TransferClassifier` / :class:`TransferRegressor` -- a new head,
  with the top ``unfreeze`` backbone blocks fine-tuned.
"""

from .classifier import TransferClassifier
from .features import FeatureExtractor
from .regressor import TransferRegressor

__version__ = "0.1.0"

__all__ = ["FeatureExtractor", "TransferClassifier", "TransferRegressor", "__version__"]
