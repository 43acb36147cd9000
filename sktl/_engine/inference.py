"""Batched, gradient-free forward passes shared by every estimator."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from torch import nn

from ..backbones import call_module, n_samples, pool_features, take, to_device

__all__ = [
    "LayerOutput",
    "batch_order",
    "call_module",
    "check_finite",
    "check_finite_rows",
    "forward_batches",
    "in_batches",
    "probe_width",
    "resolve_device",
    "seeded_torch",
    "to_device",
]


@contextlib.contextmanager
def worker_threads():
    """Cap torch's CPU threads at ``OMP_NUM_THREADS`` while sktl computes.

    joblib's process workers (``GridSearchCV(n_jobs=k)``) set
    ``OMP_NUM_THREADS`` to cores // k so that workers share the cores, but a
    torch already configured otherwise (an import calling
    ``torch.set_num_threads``) would ignore it and oversubscribe the machine.
    """
    limit = os.environ.get("OMP_NUM_THREADS", "")
    before = torch.get_num_threads()
    if not limit.isdigit() or int(limit) < 1 or before <= int(limit):
        yield
        return
    torch.set_num_threads(int(limit))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def seeded_torch(seed, device):
    """Seed torch for one fit and restore its random state afterwards.

    Only the generators the fit uses are seeded: the CPU's, and on a CUDA
    device that device's (forked too; seeding every GPU would reseed the
    user's streams on the others, and forking them all would open a
    context on each). Other accelerators with a torch module holding one
    generator (``torch.mps``, ...) have it saved, seeded and restored too.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        with _cuda_seeded(seed, dev):
            yield
        return
    accelerator = getattr(torch, dev.type, None) if dev.type != "cpu" else None
    if not all(hasattr(accelerator, f) for f in ("get_rng_state", "set_rng_state",
                                                  "manual_seed")):
        accelerator = None
    state = None if accelerator is None else accelerator.get_rng_state(dev)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            if accelerator is not None:
                # manual_seed seeds the current device: make it the fit's.
                on_device = (accelerator.device(dev.index)
                             if dev.index is not None and hasattr(accelerator, "device")
                             else contextlib.nullcontext())
                with on_device:
                    accelerator.manual_seed(seed)
            yield
    finally:
        if state is not None:
            accelerator.set_rng_state(state, dev)


@contextlib.contextmanager
def _cuda_seeded(seed, dev):
    index = torch.cuda.current_device() if dev.index is None else dev.index
    with torch.random.fork_rng(devices=[index], device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        with torch.cuda.device(index):
            torch.cuda.manual_seed(seed)
        yield


def resolve_device(device):
    """``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``; validate others."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not "
                         "available on this machine; use device='auto' or 'cpu'.")
    return str(dev)


def batch_order(preprocess, X):
    """Process texts longest first, like ``SentenceTransformer.encode``:
    similar lengths share a batch, so padding (wasted compute) is minimal."""
    lengths = getattr(preprocess, "lengths", None)
    if lengths is None:
        return None
    return np.argsort([-n for n in lengths(X)], kind="stable")


def forward_batches(module, preprocess, X, *, batch_size, device, progress=False,
                    desc="batches", cache=None, key=None, pool=True, like=None):
    """Run ``module`` over X in batches under ``torch.inference_mode``.

    A batch that runs the device out of memory is tried again at half the
    size (down to one sample), with a warning: inference backs off instead
    of failing. Returns a float32 numpy array with one row per sample, in
    input order:
    the module's output pooled to a vector (``pool=True``) or as it is
    (feature maps of a frozen prefix, ``pool=False``).
    With a ``cache`` (and the ``key`` of what ``module`` computes), rows
    seen before are read from it and only new samples run through the model;
    ``like`` (a :class:`~sktl._cache.RowSpec`) is the form of one row, and
    cached rows of another form are computed again.
    """
    if cache is not None:
        return _cached_forward(module, preprocess, X, cache, key, like, batch_size=batch_size,
                               device=device, progress=progress, desc=desc, pool=pool)
    n = n_samples(X)
    order = batch_order(preprocess, X)
    index = np.arange(n) if order is None else order
    out = None

    def step(idx):
        nonlocal out
        batch = to_device(preprocess(take(X, idx)), device)
        result = call_module(module, batch)
        if pool:
            result = pool_features(result, attention_mask=_mask(batch))
        result = result.float().cpu().numpy()
        if out is None:
            out = np.empty((n, *result.shape[1:]), dtype=np.float32)
        out[idx] = result

    module.eval()
    with torch.inference_mode():
        in_batches(index, batch_size, device, step, progress=progress, desc=desc)
    return out


def in_batches(indices, batch_size, device, step, *, progress=False, desc="batches"):
    """Call ``step(idx)`` on consecutive slices of ``indices`` of ``batch_size``.

    A slice that runs the device out of memory is tried again at half the
    size (down to one sample), with a warning: inference backs off instead
    of failing. ``step`` returning ``False`` stops early; the result is
    whether every slice ran.
    """
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), desc=desc, unit="sample")
    start, size = 0, batch_size
    try:
        while start < len(indices):
            idx = indices[start:start + size]
            try:
                going_on = step(idx)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                if size == 1 or not _out_of_memory(exc):
                    raise
                size = _back_off(size, device)
                continue
            start += len(idx)
            if bar is not None:
                bar.update(len(idx))
            if going_on is False:
                return False
        return True
    finally:
        if bar is not None:
            bar.close()


def _out_of_memory(exc):
    """A device out of memory (CUDA's error type; MPS and others raise a
    RuntimeError saying so)."""
    return (isinstance(exc, torch.cuda.OutOfMemoryError)
            or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()))


def _back_off(size, device):
    """Half the batch size after running out of memory, with a warning."""
    import warnings

    smaller = max(1, size // 2)
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    warnings.warn(f"{device} ran out of memory at batch_size={size}: predicting with batches "
                  f"of {smaller} instead (set batch_size lower to avoid the retry).",
                  RuntimeWarning, stacklevel=4)
    return smaller


def _cached_forward(module, preprocess, X, cache, key, like, **kwargs):
    from .._cache import sample_hashes

    hashes = sample_hashes(X)
    rows = cache.lookup(key, hashes, like=like)
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
        computed = forward_batches(module, preprocess, take(X, np.asarray(missing)), **kwargs)
        cache.store(key, [hashes[i] for i in missing], computed)
        for i, row in zip(missing, computed):
            rows[i] = row
    return np.stack(rows).astype(np.float32, copy=False)


def check_finite(out, what, hint):
    """``out`` (one row per sample), or a ValueError naming the rows that hold
    NaN or infinity: no estimator returns them, or trains on them, silently."""
    bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise ValueError(f"{what} are not finite (NaN or infinity) for {len(rows)} of "
                         f"{len(out)} samples (rows {shown}); {hint}.")
    return out


def check_finite_rows(rows, what, hint):
    """:func:`check_finite` for a list of per-sample arrays (of any shapes)."""
    bad = np.flatnonzero([not np.isfinite(r).all() for r in rows])
    if len(bad):
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise ValueError(f"{what} are not finite (NaN or infinity) for {len(bad)} of "
                         f"{len(rows)} samples (rows {shown}); {hint}.")
    return rows


#: ``check_finite``'s hint for predictions and features of a fitted model.
EXTREME_INPUTS = ("these inputs hold values too extreme for the network (check them for "
                  "outliers or a wrong scale), or the model's weights are not finite")


def probe_width(module, preprocess, X, device):
    """Output width of ``module``, from one sample.

    Uses ``no_grad`` rather than ``inference_mode``: lazy modules materialise
    their parameters here, and inference tensors could never be trained.
    """
    module.eval()
    with torch.no_grad():
        batch = to_device(preprocess(take(X, np.arange(1))), device)
        out = pool_features(call_module(module, batch), attention_mask=_mask(batch))
    return int(out.shape[1])


def _mask(batch):
    return batch.get("attention_mask") if isinstance(batch, dict) else None


class _Stop(BaseException):
    """Raised by a forward hook to skip the layers above the one we read
    (a BaseException, so that a model's own ``except Exception`` lets it pass)."""


class LayerOutput(nn.Module):
    """Features read at the output of one block of a backbone.

    The forward pass stops at that block (a forward hook raises), so reading
    a low layer costs only the layers below it. ``pooling=None`` returns the
    block's output unpooled.
    """

    def __init__(self, module, block_modules, pooling="mean"):
        super().__init__()
        self.module = module
        self.target = block_modules[-1]
        self.pooling = pooling

    def forward(self, *args, **kwargs):
        captured = {}

        def hook(_, __, output):
            captured["out"] = output
            raise _Stop

        handle = self.target.register_forward_hook(hook)
        try:
            call_module(self.module, kwargs if kwargs else args[0])
        except _Stop:
            pass
        finally:
            handle.remove()
        if self.pooling is None:
            return captured["out"]
        return pool_features(captured["out"], self.pooling,
                             attention_mask=kwargs.get("attention_mask"))
