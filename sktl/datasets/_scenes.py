"""Detection scenes composed from real Fashion-MNIST items, in two lighting
environments ("day" and "night")."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.utils import check_random_state

from ._base import _check_choice
from ._fashion_mnist import load_fashion_mnist

__all__ = ["make_fashion_scenes"]

#: A resized item pixel belongs to the item (and to its box) when its
#: Fashion-MNIST intensity is at least this fraction of 255.
INK_THRESHOLD = 0.15
#: Placement attempts per item before it is left out of the scene.
_MAX_TRIES = 50


def _check_int(value, name, low):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
    return int(value)


def _resize(item, size):
    """A 28x28 uint8 item resized to size x size, as intensities in [0, 1]."""
    from PIL import Image

    img = Image.fromarray(item).resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float64) / 255.0


def _day_background(rng, size):
    # Light level per scene, a gentle linear gradient and fine grain.
    level = rng.uniform(215, 245)
    gy, gx = rng.uniform(-8, 8, size=2)
    ramp = np.linspace(-1, 1, size)
    bg = level + gy * ramp[:, None] + gx * ramp[None, :]
    bg = bg + rng.uniform(-5, 5, size=(size, size))
    return np.clip(bg, 200, 255)


def _night_background(rng, size):
    level = rng.uniform(10, 40)
    return np.full((size, size), level)


def _paint(canvas, alpha, mask, top, left, environment):
    size = alpha.shape[0]
    region = canvas[top:top + size, left:left + size]
    if environment == "day":
        # Dark item on a light background: 160 - 150 * intensity, i.e.
        # at most 137 where the mask is on (background >= 200).
        value = 160.0 - 150.0 * alpha
    else:
        # Faint item, a little brighter than the dark background:
        # background level + 20 + 40 * intensity (before noise).
        value = region + 20.0 + 40.0 * alpha
    region[mask] = value[mask]


def make_fashion_scenes(n_scenes, *, environment="day", canvas_size=128, max_items=3,
                        item_size=(28, 56), classes=None, split="train", random_state=None):
    """Object-detection scenes built from real Fashion-MNIST items.

    Each scene is a ``canvas_size x canvas_size`` canvas holding between 1
    and ``max_items`` Fashion-MNIST items (drawn at random from
    :func:`load_fashion_mnist`), each resized to a random square size in
    ``item_size`` and pasted at a random position so that items never
    overlap. An item's box is the tight bounding box of its pixels whose
    Fashion-MNIST intensity is at least 15% of 255 (fainter pixels are not
    painted, so the box is tight around what is visible).

    The two environments:

    ``"day"``
        Light background: a per-scene level uniform in [215, 245], a linear
        gradient of up to +-8 along each axis and uniform grain in [-5, 5],
        clipped to [200, 255]. Items are inverted (dark on light): a pixel
        of intensity ``a`` in [0, 1] is painted ``160 - 150 * a`` (10..137),
        so every item pixel is darker than every background pixel.
    ``"night"``
        Dark, low-contrast and noisy: a flat per-scene level uniform in
        [10, 40]; items are painted ``level + 20 + 40 * a`` (faint, 26..60
        above the level); then Gaussian noise (sigma 12) is added to the
        whole canvas, which is clipped to [0, 255].

    Scenes are grey (the three channels are equal).

    Parameters
    ----------
    n_scenes : int
        Number of scenes.
    environment : {"day", "night"}, default="day"
        Lighting of the scenes (see above).
    canvas_size : int, default=128
        Height and width of the scenes, in pixels.
    max_items : int, default=3
        Most items per scene; each scene has a number drawn uniformly in
        ``1 .. max_items`` (fewer when the canvas is too crowded to place
        one more item without overlap; never fewer than 1).
    item_size : (int, int), default=(28, 56)
        Smallest and largest side of a pasted item, in pixels.
    classes : sequence of int or None, default=None
        Fashion-MNIST classes (0 .. 9) to draw items from; all when None.
    split : {"train", "test"}, default="train"
        Fashion-MNIST split that the items come from.
    random_state : int, RandomState or None, default=None
        Seeds everything: the same value gives the same scenes.

    Returns
    -------
    images : list of ndarray of shape (canvas_size, canvas_size, 3), dtype uint8
        The scenes.
    targets : list of dict
        One per scene: ``"boxes"``, float32 array of shape (n_items, 4) in
        ``(x1, y1, x2, y2)`` pixel coordinates (``x2``, ``y2`` exclusive),
        and ``"labels"``, int64 array of shape (n_items,) of Fashion-MNIST
        class indices.

    See Also
    --------
    load_fashion_mnist : The items.
    sktl.TransferDetector : Detector trained on such scenes.

    Examples
    --------
    >>> from sktl.datasets import make_fashion_scenes
    >>> images, targets = make_fashion_scenes(2, canvas_size=64, random_state=0)
    >>> images[0].shape, images[0].dtype
    ((64, 64, 3), dtype('uint8'))
    >>> sorted(targets[0])
    ['boxes', 'labels']
    >>> targets[0]["boxes"].shape[1]
    4
    """
    n_scenes = _check_int(n_scenes, "n_scenes", 1)
    _check_choice(environment, ("day", "night"), "environment")
    canvas_size = _check_int(canvas_size, "canvas_size", 1)
    max_items = _check_int(max_items, "max_items", 1)
    if not isinstance(item_size, (tuple, list)) or len(item_size) != 2:
        raise ValueError(f"item_size must be a pair (min, max), got {item_size!r}.")
    low = _check_int(item_size[0], "item_size[0]", 1)
    high = _check_int(item_size[1], "item_size[1]", low)
    if high > canvas_size:
        raise ValueError(f"item_size={tuple(item_size)} does not fit in "
                         f"canvas_size={canvas_size}.")
    _check_choice(split, ("train", "test"), "Fashion-MNIST split")
    if classes is not None:
        classes = np.unique(np.asarray(classes).ravel())
        if classes.size == 0 or not np.issubdtype(classes.dtype, np.integer) or \
                classes.min() < 0 or classes.max() > 9:
            raise ValueError("classes must be a non-empty sequence of Fashion-MNIST "
                             f"classes in 0 .. 9, got {classes!r}.")
    rng = check_random_state(random_state)
    X, y = load_fashion_mnist(split)
    pool = np.arange(len(y)) if classes is None else np.flatnonzero(np.isin(y, classes))

    images, targets = [], []
    for _ in range(n_scenes):
        background = (_day_background if environment == "day" else _night_background)
        canvas = background(rng, canvas_size)
        placed, boxes, labels = [], [], []
        n_items, attempts = rng.randint(1, max_items + 1), 0
        while attempts < n_items or not boxes:  # at least one item per scene
            attempts += 1
            index = pool[rng.randint(len(pool))]
            size = rng.randint(low, high + 1)
            alpha = _resize(X[index], size)
            mask = alpha >= INK_THRESHOLD
            if not mask.any():
                continue
            for _ in range(_MAX_TRIES):
                top, left = rng.randint(0, canvas_size - size + 1, size=2)
                if all(top >= b or top + size <= t or left >= r or left + size <= lft
                       for t, lft, b, r in placed):
                    break
            else:
                continue  # crowded canvas: leave this item out
            placed.append((top, left, top + size, left + size))
            _paint(canvas, alpha, mask, top, left, environment)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            boxes.append([left + cols[0], top + rows[0], left + cols[-1] + 1,
                          top + rows[-1] + 1])
            labels.append(y[index])
        if environment == "night":
            canvas = canvas + rng.normal(0, 12, size=canvas.shape)
        canvas = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        images.append(np.repeat(canvas[:, :, None], 3, axis=2))
        targets.append({"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                        "labels": np.asarray(labels, dtype=np.int64)})
    return images, targets
