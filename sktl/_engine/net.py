"""The one training engine: a skorch net that every sktl training mode uses.

Fine-tuning, deep domain adaptation, distillation and contrastive tuning
differ by their criterion (:mod:`sktl.losses`) and by the order in which
batches visit the rows (shuffled, or class-balanced for contrastive losses),
not by their loop. Everything else is the same for every mode, here:

* only parameters that require gradients are optimised, the backbone's at
  ``backbone_lr`` and the head's (and the criterion's, e.g. DANN's
  discriminator) at ``lr``;
* learning-rate schedules (:data:`LR_SCHEDULES`), early stopping, the
  user's skorch callbacks;
* mixed precision (``torch.autocast``, fp16 loss scaling) and multi-process
  training through ``accelerate`` (:mod:`sktl._engine.distributed`);
* a loss that stops being finite stops training with
  :class:`~sktl.exceptions.DivergenceError`; a real Ctrl-C reaches the
  caller (skorch alone swallows it).
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading

import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, LRScheduler, ProgressBar
from skorch.dataset import unpack_data
from skorch.helper import predefined_split

from ..exceptions import DivergenceError
from ..losses import Output
from .distributed import autocast, device_type

__all__ = ["LR_SCHEDULES", "EngineNet", "diverged", "train"]

#: Accepted values of ``lr_schedule``: the factor of the learning rate per
#: optimiser step. Warm-up: the first 10% of the steps (SetFit's and
#: Hugging Face's Trainer's ``warmup_ratio``); one-cycle: torch's defaults.
LR_SCHEDULES = ("constant", "linear", "cosine", "onecycle")
WARMUP_FRACTION = 0.1


def schedule_factor(name, total_steps):
    """``step -> factor`` of the base learning rate for ``lr_schedule=name``.

    ``"linear"``: linear warm-up, then linear decay to 0; ``"cosine"``: the
    same warm-up, then half a cosine to 0; ``"onecycle"``: from 1/25 up to 1
    over 30% of the steps, then down to 1/25e4 along a cosine (Smith 2018, as
    ``torch.optim.lr_scheduler.OneCycleLR``).
    """
    total = max(1, int(total_steps))
    warmup = math.ceil(WARMUP_FRACTION * total)

    def warm(step):
        return step / warmup if step < warmup else None

    def linear(step):
        rise = warm(step)
        return rise if rise is not None else max(0.0, (total - step) / max(1, total - warmup))

    def cosine(step):
        rise = warm(step)
        if rise is not None:
            return rise
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def onecycle(step):
        peak = max(1, round(0.3 * total))
        low, end = 1 / 25, 1 / 25e4
        if step < peak:
            return low + (1 - low) * 0.5 * (1 - math.cos(math.pi * step / peak))
        progress = min(1.0, (step - peak) / max(1, total - peak))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))

    return {"constant": lambda step: 1.0, "linear": linear, "cosine": cosine,
            "onecycle": onecycle}[name]


def diverged(value, where, hint):
    """The error for a loss that stopped being finite: where, and what to lower."""
    return DivergenceError(
        f"Training diverged: the loss became {value} at {where}. {hint}, e.g. "
        "ten times lower, or check the inputs for extreme values (unscaled features, "
        "outliers); the previous fitted model, if any, is unchanged.")


@contextlib.contextmanager
def _watch_sigint():
    """Record whether a real SIGINT (Ctrl-C) arrives meanwhile.

    skorch's ``partial_fit`` catches every ``KeyboardInterrupt``, because
    skorch's own ``EarlyStopping`` (and any callback that stops training)
    raises one to end the epoch loop. Only a signal tells a user's Ctrl-C
    apart. The previous handler still runs (it raises the
    KeyboardInterrupt). Signals reach only the main thread, where alone a
    handler can be set: elsewhere nothing is watched.
    """
    seen = {"sigint": False}
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):  # ignored, or set outside Python: leave it
        yield seen
        return

    def handler(signum, frame):
        seen["sigint"] = True
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL would end the process: stop the fit as Python's default does
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


class _FiniteLoss(Callback):
    """Stop with a :class:`~sktl.exceptions.DivergenceError` as soon as a
    batch's loss is NaN or infinite: the weights are lost by then, and the
    model would predict NaN (or one class) without a word."""

    def __init__(self, hint):
        self.hint = hint

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if loss is not None and not torch.isfinite(loss.detach()).all():
            epoch = len(net.history)
            n_batch = len(net.history[-1, "batches"])
            phase = "" if training else " (validation)"
            raise diverged(loss.item(), f"epoch {epoch}, batch {n_batch}{phase}", self.hint)


def _unwrapped(module):
    """``module`` out of a ``DistributedDataParallel`` wrapper (accelerate)."""
    ddp = torch.nn.parallel.DistributedDataParallel
    return module.module if isinstance(module, ddp) else module


class _Progress(Callback):
    """Tell the criterion how far training is (DANN's gradient ramp)."""

    def on_epoch_begin(self, net, **kwargs):
        criterion = _unwrapped(net.criterion_)
        if hasattr(criterion, "progress"):
            criterion.progress = (len(net.history) - 1) / max(net.max_epochs, 1)


class EngineNet(NeuralNet):
    """The skorch net of every sktl training mode.

    The module's ``outputs(batch)`` (an :class:`~sktl.losses.Output`:
    logits and features) is what the criterion sees; a module without it
    gives its output as the logits. Targets are dicts of per-row tensors.
    ``batch_sampler`` orders the training batches (``None``: shuffled
    batches of ``batch_size``). ``precision`` runs the steps under
    ``torch.autocast`` (and scales an fp16 loss).
    """

    def __init__(self, module, *args, batch_sampler=None, precision="32", **kwargs):
        super().__init__(module, *args, **kwargs)
        self.batch_sampler = batch_sampler
        self.precision = precision

    def initialize(self):
        super().initialize()
        self.grad_scaler_ = torch.amp.GradScaler(device_type(self.device),
                                                 enabled=self.precision == "fp16")
        return self

    def get_all_learnable_params(self):
        for name, param in super().get_all_learnable_params():
            if param.requires_grad:
                yield name, param

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        # skorch catches KeyboardInterrupt (its callbacks stop training with
        # one) and returns a half-trained net; a real Ctrl-C is raised again,
        # once skorch's on_train_end callbacks have run, so that fit (and a
        # GridSearchCV around it) stops and the estimator's previous fitted
        # state is restored.
        with _watch_sigint() as seen:
            super().partial_fit(X, y, classes, **fit_params)
        if seen["sigint"]:
            raise KeyboardInterrupt
        return self

    def infer(self, x, **fit_params):
        from .inference import call_module, to_device
        from .modules import DetectorModule, TransferModule

        x = to_device(x, self.device)
        if not isinstance(_unwrapped(self.module_), (TransferModule, DetectorModule)):
            return Output(call_module(self.module_, x), None)  # its output is the logits
        # Through the module's forward (and so through a DDP wrapper, whose
        # gradient synchronisation hooks on it), asking for the Output.
        if isinstance(x, dict):
            return self.module_(**x, outputs=True)
        return self.module_(x, outputs=True)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        y_true = {k: v.to(self._device_of(y_pred), non_blocking=True)
                  for k, v in y_true.items()}
        loss = self.criterion_(y_pred, y_true)
        if loss is None:  # nothing to learn from in this batch (no positive pair)
            self.__dict__["_skip_step"] = True
            anchor = y_pred.features if y_pred.logits is None else y_pred.logits
            return anchor.sum() * 0.0
        return loss

    @staticmethod
    def _device_of(output):
        if output.logits is not None:
            return output.logits.device
        if output.features is not None:
            return output.features.device
        return next(iter(output.losses.values())).device

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        with autocast(self.precision, self.device):
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        if not self.__dict__.get("_skip_step"):
            accumulation = self.__dict__.get("_accumulation")
            scaled = loss if accumulation is None else loss / accumulation["steps"]
            self.grad_scaler_.scale(scaled).backward()
        return {"loss": loss, "y_pred": y_pred}

    def validation_step(self, batch, **fit_params):
        with autocast(self.precision, self.device):  # scored as it trains and predicts
            return super().validation_step(batch, **fit_params)

    def _zero_grad_optimizer(self, set_to_none=None):
        accumulation = self.__dict__.get("_accumulation")
        if accumulation is None or accumulation["pending"] == 0:
            super()._zero_grad_optimizer(set_to_none)

    def _step_optimizer(self, step_fn):
        # GradScaler cannot step with a closure: compute, then step; a batch
        # with nothing to learn from makes no step (a zero loss would still
        # move the weights through weight decay and momentum).
        self.__dict__["_skip_step"] = False
        step_fn()
        if self.__dict__.pop("_skip_step", False):
            return
        accumulation = self.__dict__.get("_accumulation")
        if accumulation is not None:
            accumulation["pending"] += 1
            if accumulation["pending"] < accumulation["steps"]:
                return  # gradients add up until the group is complete
        self._optimizer_step()

    def _optimizer_step(self):
        for name in self._optimizers:
            self.grad_scaler_.step(getattr(self, name + "_"))
        self.grad_scaler_.update()
        accumulation = self.__dict__.get("_accumulation")
        if accumulation is not None:
            accumulation["pending"] = 0

    def flush_accumulated(self):
        """Step on gradients accumulated over an incomplete group (the end of
        an epoch), rescaled to their mean (see GradientAccumulation)."""
        accumulation = self.__dict__.get("_accumulation")
        if accumulation is None or not accumulation["pending"]:
            return
        factor = accumulation["steps"] / accumulation["pending"]
        for _, param in self.get_all_learnable_params():
            if param.grad is not None:
                param.grad.mul_(factor)
        self._optimizer_step()
        super()._zero_grad_optimizer()

    def get_iterator(self, dataset, training=False):
        if not (training and self.batch_sampler is not None):
            return super().get_iterator(dataset, training=training)
        kwargs = self.get_params_for("iterator_train")
        for name in ("batch_size", "shuffle", "sampler", "drop_last"):
            kwargs.pop(name, None)
        return self.iterator_train(dataset, batch_sampler=self.batch_sampler, **kwargs)


def _check_callbacks(callbacks, early_stopping, valid_rows, accelerator):
    """Refuse what the engine cannot do, rather than fail deep inside skorch."""
    from skorch.callbacks import BatchScoring, EpochScoring

    from ..callbacks import GradientAccumulation

    for _, cb in _callback_list(callbacks):
        if isinstance(cb, (EpochScoring, BatchScoring)):
            raise ValueError(
                f"{type(cb).__name__} scores the net's own predict on skorch datasets, "
                "which sktl's engine does not feed it; the validation loss is logged "
                "(early_stopping=...), and a callback can read net.history, or score "
                "the estimator after fit.")
        if isinstance(cb, GradientAccumulation) and accelerator is not None:
            raise ValueError("GradientAccumulation does not combine with an accelerator; "
                             "use Accelerator(gradient_accumulation_steps=...).")
    processes = getattr(accelerator, "num_processes", 1)
    if early_stopping is not None and valid_rows is not None and processes > 1:
        raise ValueError(
            f"early_stopping with {processes} processes would stop each process on its own "
            "share of the validation rows, at different epochs; train without it (or in "
            "one process).")


def _callback_list(callbacks):
    """User callbacks as ``(name, callback)`` pairs with unique names."""
    named = []
    for i, cb in enumerate(callbacks or ()):
        name, cb = cb if isinstance(cb, tuple) else (f"user_{i}_{type(cb).__name__}", cb)
        named.append((name, cb))
    return named


def train(module, criterion, train_rows, valid_rows=None, *, lr, backbone_lr, optimizer,
          max_epochs, batch_size, device, lr_schedule="constant", batch_sampler=None,
          early_stopping=None, callbacks=(), precision="32", accelerator=None,
          num_workers=0, verbose=0, hint=None):
    """Train ``module`` on ``train_rows`` (an engine ``Rows`` dataset) with
    ``criterion``; return the fitted skorch net (``net.module_`` is the
    trained module, unwrapped from any accelerator; ``net.history``).

    Parameters not described here are the estimators' own (``lr``,
    ``backbone_lr`` for parameters under ``backbone.``, ``optimizer``
    class, ``max_epochs``, ``batch_size``, ``lr_schedule``, ``precision``).
    ``early_stopping`` is an :class:`sktl.callbacks.EarlyStopping` or None;
    ``callbacks`` the user's skorch callbacks; ``hint`` what a divergence
    message tells the user to lower.
    """
    from .distributed import distributed_net

    _check_callbacks(callbacks, early_stopping, valid_rows, accelerator)
    n_steps = len(batch_sampler) if batch_sampler is not None else \
        math.ceil(len(train_rows) / batch_size)
    hint = hint or (f"Lower lr (now {lr:g})" if backbone_lr == lr else
                    f"Lower lr (now {lr:g}) and backbone_lr (now {backbone_lr:g})")
    engine_callbacks = [("finite_loss", _FiniteLoss(hint)), ("progress", _Progress())]
    if lr_schedule != "constant":
        factor = schedule_factor(lr_schedule, n_steps * max_epochs)
        engine_callbacks.insert(0, ("lr_schedule", LRScheduler(
            policy=torch.optim.lr_scheduler.LambdaLR, lr_lambda=factor, step_every="batch")))
    # Early stopping ends an epoch by raising: it goes after the user's
    # callbacks, so that loggers and checkpoints see every epoch's end.
    closing = []
    if early_stopping is not None and valid_rows is not None:
        closing.append(("early_stopping", early_stopping))
    if verbose >= 2:
        closing.append(("progress_bar", ProgressBar()))
    loaders = {"num_workers": num_workers}
    if num_workers:
        loaders["persistent_workers"] = False
    if device_type(device) == "cuda":
        loaders["pin_memory"] = True
    iterators = {f"iterator_{part}__{k}": v for part in ("train", "valid")
                 for k, v in loaders.items()}
    net = EngineNet(
        module,
        criterion=criterion,
        optimizer=optimizer,
        lr=lr,
        optimizer__param_groups=[("backbone.*", {"lr": backbone_lr})],
        max_epochs=max_epochs,
        batch_size=batch_size,
        iterator_train__shuffle=batch_sampler is None,
        iterator_train__collate_fn=train_rows.collate,
        iterator_valid__collate_fn=(valid_rows or train_rows).collate,
        train_split=predefined_split(valid_rows) if valid_rows is not None else None,
        callbacks=engine_callbacks + _callback_list(callbacks) + closing,
        device=device,
        verbose=int(verbose >= 1),
        batch_sampler=batch_sampler,
        precision=precision if accelerator is None else "32",
        **iterators,
    )
    net = distributed_net(net, accelerator=accelerator)
    net.fit(train_rows, y=None)
    return net
