"""What prompts and scores are read from a binary mask: its tight box, its centroid, and Dice.

One definition for the whole project (plugin, training, evaluation, benchmarks, tests), so a box prompt,
a centroid click and a Dice figure mean the same thing wherever they are computed. Coordinates are
``(x, y)`` pixel indices of the mask, as model prompts take them (``prompts.py`` maps napari's rows and
columns). The COSMOS 1050K protocol defines the box and the centroid this way
(``shared/design/COSMOS_PROTOCOL.md``); evaluation's NSD, which needs more than a mask, stays in
``minisam_train.evaluation.metrics``.
"""

from __future__ import annotations

import numpy as np


def _pixels(mask) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(np.asarray(mask, dtype=bool))  # row-major, like the protocol's reference code
    if len(xs) == 0:
        raise ValueError("Cannot build a prompt for an empty mask.")
    return xs, ys


def tight_box(mask) -> np.ndarray:
    """``(x0, y0, x1, y1)`` of a 2D mask's extent: inclusive pixel indices, as a float32 box prompt.

    Raises:
        ValueError: the mask is empty.
    """
    xs, ys = _pixels(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


def centroid(mask) -> np.ndarray:
    """``(x, y)`` image-moment centroid of a 2D mask, rounded down, as float32 (the protocol's first click).

    It may fall outside a non-convex object (a ring, a crescent); callers that need an object pixel check.

    Raises:
        ValueError: the mask is empty.
    """
    xs, ys = _pixels(mask)
    return np.floor([xs.mean(), ys.mean()]).astype(np.float32)


def dice(pred, gt) -> float:
    """Dice = 2|P ∩ G| / (|P| + |G|) of two masks of one shape (any dtype: non-zero is inside).

    1.0 when both are empty (nothing to find, nothing found); 0.0 when only one is.

    Raises:
        ValueError: the shapes differ.
    """
    p, g = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"Prediction {p.shape} and ground truth {g.shape} differ in shape.")
    total = int(p.sum()) + int(g.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, g).sum()) / total
