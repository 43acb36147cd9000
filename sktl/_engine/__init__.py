"""sktl's torch internals: the one training engine and what it needs.

Private to the package: estimators call :func:`train` with a module, a
criterion (:mod:`sktl.losses`) and :class:`Rows` datasets, and run fitted
models through :func:`forward_batches`; nothing in here knows which
estimator called it.
"""

from .data import BalancedBatches, Rows, ShuffledBatches, TargetedImages
from .distributed import PRECISIONS, autocast, check_precision, device_type
from .frozen import PREFIX_MAX_BYTES, FrozenReader, frozen_rows, precompute, split_at
from .inference import (
    EXTREME_INPUTS,
    LayerOutput,
    call_module,
    check_finite,
    check_finite_rows,
    forward_batches,
    probe_width,
    resolve_device,
    seeded_torch,
    to_device,
    worker_threads,
)
from .modules import (
    OPTIMIZERS,
    DetectorModule,
    L2Normalize,
    TransferModule,
    freeze,
    logistic_head,
    make_head,
    normalized_head,
    optimizer_class,
)
from .net import LR_SCHEDULES, EngineNet, diverged, train

__all__ = [
    "EXTREME_INPUTS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "PRECISIONS",
    "PREFIX_MAX_BYTES",
    "BalancedBatches",
    "DetectorModule",
    "EngineNet",
    "FrozenReader",
    "L2Normalize",
    "LayerOutput",
    "Rows",
    "ShuffledBatches",
    "TargetedImages",
    "TransferModule",
    "autocast",
    "call_module",
    "check_finite",
    "check_finite_rows",
    "check_precision",
    "device_type",
    "diverged",
    "forward_batches",
    "freeze",
    "frozen_rows",
    "logistic_head",
    "make_head",
    "normalized_head",
    "optimizer_class",
    "precompute",
    "probe_width",
    "resolve_device",
    "seeded_torch",
    "split_at",
    "to_device",
    "train",
    "worker_threads",
]
