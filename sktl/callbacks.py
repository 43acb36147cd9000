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


class _Accumulating:
    """An optimizer that steps once every ``steps`` calls, on the mean of the
    gradients accumulated since its last step."""

    def __init__(self, optimizer, steps):
        self.optimizer, self.steps, self.calls = optimizer, steps, 0

    def __getattr__(self, name):  # param_groups, state, state_dict, ...
        return getattr(self.optimizer, name)

    def zero_grad(self, set_to_none=True):
        if self.calls % self.steps == 0:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.calls += 1
        if self.calls % self.steps == 0:
            self.flush(self.steps)
        return loss

    def flush(self, count=None):
        """Step on what is pending (``count`` batches' gradients)."""
        count = count or self.calls % self.steps
        if not count:
            return
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(count)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.calls = 0


class GradientAccumulation(Callback):
    """Step the optimizer once every ``steps`` batches, on their mean gradient.

    The effective batch is ``steps * batch_size`` rows while memory holds
    one batch; what is left at the end of an epoch makes a last, smaller
    step. Learning-rate schedules still advance every batch. Not combined
    with ``precision="fp16"`` (whose loss scaling steps every batch).

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
        for name in net._optimizers:
            setattr(net, name + "_", _Accumulating(getattr(net, name + "_"), self.steps))

    def on_epoch_end(self, net, **kwargs):
        for name in net._optimizers:
            optimizer = getattr(net, name + "_")
            if isinstance(optimizer, _Accumulating):
                optimizer.flush()

    def on_train_end(self, net, **kwargs):
        for name in net._optimizers:
            optimizer = getattr(net, name + "_")
            if isinstance(optimizer, _Accumulating):
                setattr(net, name + "_", optimizer.optimizer)

