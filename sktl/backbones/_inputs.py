"""Raw inputs -> tensors: validation and preprocessing per input kind.

Three kinds of raw input exist: images (numpy arrays NHWC/NCHW/NHW, uint8 or
float, lists of PIL images, file paths), texts (sequences of ``str``) and
plain arrays (numeric, fed to a user's module unchanged apart from dtype).
Validation runs once on the whole input; preprocessing runs per batch so
that memory stays bounded by the batch size.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ArrayPreprocessor",
    "ImagePreprocessor",
    "n_samples",
    "take",
    "validate_images",
    "validate_texts",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def n_samples(X):
    return X.shape[0] if hasattr(X, "shape") else len(X)


def take(X, idx):
    """Rows ``idx`` of X, whether X is an array, a list or a pandas object."""
    if hasattr(X, "iloc"):
        return X.iloc[idx].tolist() if X.ndim == 1 else X.iloc[idx].to_numpy()
    if isinstance(X, np.ndarray):
        return X[idx]
    return [X[i] for i in idx]


def _is_pathlike(x):
    return isinstance(x, (str, os.PathLike))


def validate_images(X):
    """Check a batch of images and return it in an indexable form.

    Returns a numpy array (kept as given, converted lazily per batch) or a
    list of PIL images / paths.
    """
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):
        X = X.to_numpy()
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim == 3 and X.shape[-1] in (3, 4) and X.shape[1] > 4:
            warnings.warn(
                f"Images of shape {X.shape} are read as {X.shape[0]} greyscale "
                f"images of {X.shape[1]}x{X.shape[2]} pixels; for one colour image "
                "pass X[None].", UserWarning, stacklevel=3)
        if X.ndim not in (3, 4):
            raise ValueError(
                f"Expected images as a 3-D (n, height, width) or 4-D (n, h, w, c) / "
                f"(n, c, h, w) array, got an array of shape {X.shape}. A single "
                "image needs a leading batch axis: X[None]."
            )
        if X.shape[0] == 0:
            raise ValueError("Found an array with 0 images; at least 1 is required.")
        if np.iscomplexobj(X):
            raise ValueError("Complex data not supported for images.")
        if X.dtype.kind == "f" and not np.isfinite(X).all():
            raise ValueError("Input images contain NaN or infinity; clean or "
                             "impute them before calling sktl.")
        if X.dtype.kind not in "uif":
            raise ValueError(f"Image arrays must be numeric, got dtype {X.dtype}.")
        return X
    X = list(X)
    if not X:
        raise ValueError("Found 0 images; at least 1 is required.")
    for i, x in enumerate(X):
        if _is_pathlike(x):
            if not Path(x).is_file():
                raise FileNotFoundError(f"Image file not found: {x!s} (sample {i}).")
            # As a Path, the feature cache keys the sample by the file's
            # content (a hash of its bytes), not by its name: a rewritten or
            # replaced file is read again, whatever its size and time.
            X[i] = Path(x)
        elif not hasattr(x, "convert") and not isinstance(x, np.ndarray):
            raise TypeError(
                f"Sample {i} is a {type(x).__name__}; images must be numpy "
                "arrays, PIL images or file paths."
            )
    return X


def validate_texts(X):
    """Check that X is a non-empty 1-D sequence of strings; return a list."""
    if isinstance(X, str):
        raise TypeError("Expected a sequence of strings, got a single string; "
                        "wrap it in a list: [text].")
    if hasattr(X, "ndim") and X.ndim != 1:
        raise ValueError(
            f"Expected a 1-D sequence of texts, got an array of shape {X.shape}. "
            "Pass a list of strings or a single text column (X['column'])."
        )
    X = list(X)
    if not X:
        raise ValueError("Found 0 texts; at least 1 is required.")
    for i, x in enumerate(X):
        if not isinstance(x, str):
            raise TypeError(
                f"Text sample {i} is a {type(x).__name__} ({x!r:.40}); every "
                "sample must be a str (missing values must be filled first)."
            )
        try:
            x.encode("utf-8")
        except UnicodeEncodeError as exc:  # tokenizers fail on it with a bare TypeError
            raise ValueError(
                f"Text {i} holds {exc.object[exc.start:exc.end]!r} at position "
                f"{exc.start}, a lone surrogate: not valid Unicode (often left by "
                "decoding bytes with errors='surrogateescape'). Clean it first, e.g. "
                "text.encode('utf-8', 'replace').decode('utf-8').") from None
    return X


def _load_image(x):
    from PIL import Image

    if _is_pathlike(x):
        with Image.open(x) as im:
            im.load()
            return im
    return x


def _scale(arr):
    """Pixel values -> float32 in [0, 1]: integers by their dtype, floats as given.

    The scale depends on the dtype only, never on the values of a batch, so an
    image maps to the same tensor whichever images share its batch: uint8 by
    255, uint16 (16-bit images) by 65535, and other integer dtypes (arrays
    built from Python ints) as 0-255 values.
    """
    if arr.dtype.kind in "iu":
        if arr.dtype == np.uint16:
            top = 65535.0
        else:
            top = 255.0
            if arr.dtype != np.uint8 and arr.size and (arr.max() > 255 or arr.min() < 0):
                raise ValueError(
                    f"Integer images of dtype {arr.dtype} must hold 0-255 pixel values; "
                    f"got values in [{arr.min()}, {arr.max()}]. Pass 16-bit images as "
                    "uint16, or floats in [0, 1].")
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).div_(top)
    if arr.size and arr.max() > 1.5:
        warnings.warn(
            "Float images are expected in [0, 1] but values reach "
            f"{float(arr.max()):.3g}; divide 0-255 pixel values by 255 first.",
            UserWarning, stacklevel=4)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _pil_to_array(x):
    """PIL image -> array keeping its bit depth (16-bit and float modes too)."""
    if not hasattr(x, "convert"):
        return np.asarray(x)
    if x.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(x).astype(np.uint16)
    if x.mode == "I":  # 32-bit integers: 8-bit content, or 16-bit (older Pillow's PNGs)
        arr = np.asarray(x)
        if arr.size and arr.min() >= 0 and 255 < arr.max() <= 65535:
            return arr.astype(np.uint16)
        return arr
    if x.mode in ("I", "F", "L"):  # "I" beyond the 16-bit range: as stored
        return np.asarray(x)
    return np.asarray(x.convert("RGB"))


def _array_to_nchw(arr):
    arr = np.asarray(arr)
    if arr.ndim == 3:  # (n, h, w) grey
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and (
            arr.shape[1] not in (1, 3, 4) or arr.shape[-1] <= arr.shape[1]):
        # NHWC unless channels-first is the only reading; ties (tiny images
        # such as 3x3x3) follow numpy/PIL's channels-last convention.
        arr = arr.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif arr.ndim != 4 or arr.shape[1] not in (1, 3, 4):
        raise ValueError(f"Cannot tell the channel axis of images of shape "
                         f"{arr.shape}; use (n, h, w), (n, h, w, c) or (n, c, h, w).")
    return _scale(arr)


class ImagePreprocessor:
    """Convert a batch of raw images to a normalised NCHW float tensor.

    Parameters
    ----------
    transform : callable or None
        Applied to the batched tensor after scaling to [0, 1] (e.g. a
        torchvision weights' ``transforms()``: resize, crop, normalise).
        ``None`` only normalises with ``mean``/``std``.
    channels : int
        Channels the network expects; greyscale is repeated, alpha dropped.
    """

    def __init__(self, transform=None, channels=3, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD):
        self.transform = transform
        self.channels = channels
        self.mean = mean
        self.std = std

    def _fix_channels(self, x):
        c = x.shape[-3]
        if c == self.channels:
            return x
        if c == 1:
            return x.expand(*x.shape[:-3], self.channels, *x.shape[-2:])
        if c == 4 and self.channels == 3:
            return x[..., :3, :, :]
        if c == 3 and self.channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            return (x * w).sum(-3, keepdim=True)
        raise ValueError(f"Images have {c} channels; the backbone expects "
                         f"{self.channels}.")

    def _finish(self, x, augment=None):
        x = self._fix_channels(x)
        if augment is not None:  # on [0, 1] pixels, before normalisation
            x = augment(x)
        if self.transform is not None:
            return self.transform(x)
        if self.mean is not None and x.shape[-3] == len(self.mean):
            mean = torch.tensor(self.mean).view(-1, 1, 1)
            std = torch.tensor(self.std).view(-1, 1, 1)
            x = (x - mean) / std
        return x.contiguous()

    def __call__(self, batch, augment=None):
        """A batch of raw images -> a float tensor; ``augment`` (training
        batches only) transforms the images in ``[0, 1]`` before the
        backbone's normalisation."""
        if isinstance(batch, np.ndarray) and batch.dtype != object:
            return self._finish(_array_to_nchw(batch), augment)
        # Lists may mix sizes: finish each image, then stack.
        out = [self._finish(_array_to_nchw(_pil_to_array(_load_image(x))[None]), augment)[0]
               for x in batch]
        sizes = {tuple(t.shape) for t in out}
        if len(sizes) > 1:
            raise ValueError(
                f"Images of different sizes {sorted(sizes)} cannot be batched without "
                "a resizing transform; resize them first, or use pretrained weights "
                "whose preprocessing resizes."
            )
        return torch.stack(out)


class ArrayPreprocessor:
    """Numeric arrays -> float32 tensors, shape unchanged (for user modules)."""

    def __call__(self, batch, augment=None):
        x = torch.as_tensor(np.asarray(batch, dtype=np.float32))
        return x if augment is None else augment(x)
