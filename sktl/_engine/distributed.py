"""Mixed precision and multi-process (multi-GPU, multi-node) training.

``precision="bf16"``/``"fp16"`` runs the forward passes under
``torch.autocast`` (training and prediction); ``"fp16"`` also scales the
loss (``torch.amp.GradScaler``, in :class:`~sktl._engine.net.EngineNet`) so
that small gradients do not underflow, and needs CUDA.
``device=accelerate.Accelerator(...)`` trains through
skorch's :class:`~skorch.hf.AccelerateMixin` instead: the accelerator places
the model, wraps it in ``DistributedDataParallel`` when the script runs
under ``accelerate launch`` or ``torchrun`` (one process per GPU, or
several CPU processes with the gloo backend), shards the training batches
between the processes and applies its own mixed precision.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast", "check_precision", "device_type", "distributed_net"]

#: Accepted values of ``precision``.
PRECISIONS = ("32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_ACCELERATE_NAMES = {"32": "no", "bf16": "bf16", "fp16": "fp16"}


def device_type(device):
    return torch.device(device).type if device is not None else "cpu"


def check_precision(precision, device, accelerator=None):
    """Raise if ``precision`` cannot run on ``device`` or disagrees with ``accelerator``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if accelerator is not None:
        theirs = str(getattr(accelerator, "mixed_precision", "no"))
        if precision != "32" and theirs != _ACCELERATE_NAMES[precision]:
            raise ValueError(
                f"precision={precision!r} but the accelerator was created with "
                f"mixed_precision={theirs!r}; with an accelerator, set mixed precision on "
                f"it (Accelerator(mixed_precision={_ACCELERATE_NAMES[precision]!r})) and "
                "leave precision='32'.")
        device = accelerator.device  # where the accelerator puts the model
    if precision == "fp16" and device_type(device) != "cuda":
        raise ValueError(
            f"precision='fp16' needs a CUDA device, but the model runs on {device!r}: "
            "float16 autocast with loss scaling is a GPU feature. Use precision='bf16' "
            "(supported on CPUs and recent GPUs) or '32'.")


def autocast(precision, device):
    """``torch.autocast`` for ``precision`` on ``device``; a no-op for ``"32"``."""
    if precision in (None, "32"):
        return contextlib.nullcontext()
    return torch.autocast(device_type(device), dtype=_DTYPES[precision])


def _has_trainable(module):
    return any(p.requires_grad for p in module.parameters())


def _accelerate_mixin():
    from skorch.callbacks import LRScheduler
    from skorch.hf import AccelerateMixin

    class _AccelerateMixin(AccelerateMixin):
        """skorch's mixin, except that parameter-free modules (the loss:
        ``CrossEntropyLoss``, ``MSELoss``) are only moved to the device:
        ``DistributedDataParallel`` refuses modules with nothing to train."""

        def _prepare(self, names, context, kind):
            with self._current_init_context(context):
                for name in names:
                    obj = getattr(self, name + "_")
                    if isinstance(obj, torch.nn.Module) and not _has_trainable(obj):
                        setattr(self, name + "_", obj.to(self.accelerator.device))
                    elif isinstance(obj, kind):
                        setattr(self, name + "_", self.accelerator.prepare(obj))

        def _step_optimizer(self, step_fn):
            # As the engine's: a batch with nothing to learn from makes no
            # step (the accelerator scales and unscales the loss itself).
            self.__dict__["_skip_step"] = False
            step_fn()
            if self.__dict__.pop("_skip_step", False):
                return
            for name in self._optimizers:
                getattr(self, name + "_").step()

        def _initialize_accelerator(self):
            if self._wrapped_with_accelerator:
                return self
            self._prepare(self._criteria, "criterion", torch.nn.Module)
            self._prepare(self._modules, "module", torch.nn.Module)
            self._prepare(self._optimizers, "optimizer", torch.optim.Optimizer)
            for _, callback in self.callbacks_:
                if isinstance(callback, LRScheduler):
                    callback.policy_ = self.accelerator.prepare(callback.policy_)
            self._wrapped_with_accelerator = True
            return self

    return _AccelerateMixin


def distributed_net(net, *, accelerator=None):
    """``net`` rebuilt to train through ``accelerator`` (its class gains
    :class:`skorch.hf.AccelerateMixin`; device placement and mixed precision
    are then the accelerator's), or ``net`` itself without one."""
    if accelerator is None:
        return net
    params = {k: v for k, v in net.get_params(deep=False).items() if not k.startswith("_")}
    base = type(net)
    cls = type(f"Accelerated{base.__name__}", (_accelerate_mixin(), base), {})
    from skorch.utils import noop

    params["device"] = None
    # The epoch log goes to the accelerator's print (main process only),
    # and nowhere with verbose=0: skorch's PrintLog calls a sink other
    # than print whatever the verbosity.
    sink = getattr(accelerator, "print", print) if net.verbose else noop
    return cls(accelerator=accelerator, callbacks__print_log__sink=sink, **params)
