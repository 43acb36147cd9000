"""skorch callbacks that sktl adds to skorch's own.

Every training estimator takes ``callbacks=``: a list of skorch callbacks
(``skorch.callbacks.Checkpoint``, ``LRScheduler``, ``ProgressBar``,
``TensorBoard``, ``WandbLogger``, ``MlflowLogger``, your own ``Callback``
subclass), or ``(name, callback)`` pairs, called with the usual events
(``on_train_begin``, ``on_epoch_end``, ``on_batch_end``...). These two are
sktl's:

* :class:`EarlyStopping`: skorch's, plus the share of the training rows held
  out to validate on; also what ``early_stopping=True`` or ``=patience``
  means.
* :class:`GradientAccumulation`: one optimiser step every ``steps`` batches,
  for an effective batch larger than what fits in memory.
"""

from __future__ import annotations

from numbers import Integral, Real

from skorch.callbacks import Callback
from skorch.callbacks import EarlyStopping as _SkorchEarlyStopping

__all__ = ["EarlyStopping", "GradientAccumulation"]


class EarlyStopping(_SkorchEarlyStopping):
    """Stop when the validation loss stops improving; restore the best weights.

    skorch's ``EarlyStopping`` (``load_best=True`` by default here) with the
    share of the training rows the estimator holds out for it, stratified
    by class for classifiers. Pass it as ``early_stopping=`` (``True`` is
    ``EarlyStopping()``, an int ``k`` is ``EarlyStopping(patience=k)``).

    Parameters
    ----------
    patience : int, default=5
        Epochs without improvement before stopping.
    validation_fraction : float, default=0.1
        Share of the training rows held out, in (0, 1).
    monitor : str, default="valid_loss"
    **kwargs
        Other arguments of :class:`skorch.callbacks.EarlyStopping`.

    Examples
    --------
    >>> from sktl.callbacks import EarlyStopping
    >>> EarlyStopping(patience=3, validation_fraction=0.2).validation_fraction
    0.2
    """

    def __init__(self, patience=5, validation_fraction=0.1, monitor="valid_loss",
                 load_best=True, **kwargs):
        if not (isinstance(validation_fraction, Real) and 0 < validation_fraction < 1):
            raise ValueError(f"validation_fraction must be in (0, 1); got "
                             f"{validation_fraction!r}.")
        if isinstance(patience, bool) or not (isinstance(patience, Integral) and patience >= 1):
            raise ValueError(f"patience must be an int >= 1; got {patience!r}.")
        super().__init__(monitor=monitor, patience=patience, load_best=load_best, **kwargs)
        self.validation_fraction = validation_fraction


class GradientAccumulation(Callback):
    """Step the optimizer once every ``steps`` batches, on their mean gradient.

    The effective batch is ``steps * batch_size`` rows while memory holds
    one batch; what is left at the end of an epoch makes a last step on the
    mean of its gradients. Learning-rate schedules still advance every
    batch. Not combined with ``precision="fp16"`` (whose loss scaling steps
    every batch) or an accelerator (use accelerate's own
    ``gradient_accumulation_steps``).

    Parameters
    ----------
    steps : int, default=2

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sktl import TransferClassifier
    >>> from sktl.callbacks import GradientAccumulation
    >>> X = np.random.RandomState(0).normal(size=(64, 4)).astype("float32")
    >>> clf = TransferClassifier(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), unfreeze="all",
    ...                          batch_size=8, callbacks=[GradientAccumulation(4)],
    ...                          max_epochs=2, random_state=0).fit(X, np.arange(64) % 2)
    """

    def __init__(self, steps=2):
        self.steps = steps

    def initialize(self):
        if isinstance(self.steps, bool) or not (isinstance(self.steps, Integral)
                                                and self.steps >= 1):
            raise ValueError(f"GradientAccumulation(steps={self.steps!r}): steps must be an "
                             "int >= 1.")
        return super().initialize()

    def on_train_begin(self, net, **kwargs):
        if getattr(net, "precision", "32") == "fp16":
            raise ValueError("GradientAccumulation does not combine with precision='fp16'; "
                             "use precision='bf16' or '32'.")
        # The engine's net reads it: losses divided by ``steps``, gradients
        # kept between the steps of a group, one optimiser step per group.
        net.__dict__["_accumulation"] = {"steps": int(self.steps), "pending": 0}

    def on_epoch_end(self, net, **kwargs):
        net.flush_accumulated()

    def on_train_end(self, net, **kwargs):
        net.__dict__.pop("_accumulation", None)
