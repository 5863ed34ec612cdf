"""Prompts from a ground-truth mask: the COSMOS 1050K official rule and seeded random variants.

All coordinates are (x, y) pixel indices of the original image, as the predictor expects.

Official (deterministic) rule, as ``shared/design/COSMOS_PROTOCOL.md`` describes it:

- **centroid**: the mean of the object's pixel coordinates, rounded down; it may lie outside a non-convex
  object (the official code does not move it, and neither do we);
- **5 positives**: the object's pixels in row-major order (``np.nonzero``), every ``floor(N/5)``-th of them
  (indices 0, s, 2s, 3s, 4s); the centroid replaces the first, so 5 positives = centroid + 4 strided pixels;
- **5 negatives**: the tight box grown about its centre to twice its width and height (each side moves out
  by ``floor(width/2)`` / ``floor(height/2)`` pixels, clipped to the image); its pixels that are not part of
  the object, in row-major order, every ``floor(M/5)``-th, first 5. Pixels of *other* classes count as
  negatives: for this object they are background;
- **box**: the tight box ``(x0, y0, x1, y1)`` of the object's pixels, inclusive pixel indices.

Random variant (users never click on centroids): positives drawn uniformly without replacement from the
object, negatives from the non-object pixels of the doubled box, and each box side moved by an integer
drawn from ``[-box_jitter, box_jitter]`` (clipped to the image, never inverted). The generator is seeded per
(seed, dataset, image, object), so every model sees the same prompts and a resumed run draws the same ones.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from napari_qlora_minisam.masks import centroid, tight_box  # the protocol's box and centroid, shared

PROMPT_MODES = ("point1", "point5", "point5neg5", "box", "box_point1")
SAMPLING_MODES = ("official", "random")


@dataclass(frozen=True)
class Prompt:
    """One object's prompt: ``points (N, 2)`` xy + ``labels (N,)`` and/or ``box (4,)``; ``None`` when absent."""

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None


def object_pixels(mask: np.ndarray) -> np.ndarray:
    """``(N, 2)`` (x, y) of the mask's pixels in row-major order; error if the mask is empty."""
    ys, xs = np.nonzero(np.asarray(mask, dtype=bool))  # np.nonzero walks rows first: row-major
    if len(xs) == 0:
        raise ValueError("Cannot build a prompt for an empty mask.")
    return np.stack([xs, ys], axis=1)


def strided(pixels: np.ndarray, count: int = 5) -> np.ndarray:
    """Every ``floor(len/count)``-th row of ``pixels`` (at least every 1st), the first ``count`` of them."""
    step = max(1, len(pixels) // count)
    return pixels[::step][:count]


def official_positive_points(mask: np.ndarray, count: int = 5) -> np.ndarray:
    """Centroid + ``count - 1`` strided object pixels, ``(count, 2)`` xy (fewer if the object is tiny)."""
    picks = strided(object_pixels(mask), count).copy()
    picks[0] = centroid(mask)
    return picks


def doubled_box(mask: np.ndarray) -> np.ndarray:
    """The tight box grown about its centre to twice its size, clipped to the image (inclusive indices)."""
    x0, y0, x1, y1 = tight_box(mask).astype(np.int64)
    h, w = mask.shape[:2]
    half_w, half_h = (x1 - x0 + 1) // 2, (y1 - y0 + 1) // 2
    return np.array([max(0, x0 - half_w), max(0, y0 - half_h), min(w - 1, x1 + half_w), min(h - 1, y1 + half_h)],
                    dtype=np.int64)


def negative_candidates(mask: np.ndarray) -> np.ndarray:
    """Non-object pixels inside the doubled box, ``(M, 2)`` xy in row-major order."""
    x0, y0, x1, y1 = doubled_box(mask)
    region = np.zeros(mask.shape[:2], dtype=bool)
    region[y0:y1 + 1, x0:x1 + 1] = True
    region &= ~np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(region)
    return np.stack([xs, ys], axis=1)


def official_negative_points(mask: np.ndarray, count: int = 5) -> np.ndarray:
    """Every ``floor(M/count)``-th non-object pixel of the doubled box, first ``count``; may be fewer."""
    cands = negative_candidates(mask)
    return strided(cands, count) if len(cands) else np.zeros((0, 2), dtype=np.int64)


def jitter_box(box: np.ndarray, jitter: int, rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Move each side of ``box`` by an integer in ``[-jitter, jitter]``; clipped to the image, never inverted."""
    out = np.asarray(box, dtype=np.int64).copy()
    if jitter > 0:
        out += rng.integers(-jitter, jitter + 1, size=4)
    h, w = shape[:2]
    out[[0, 2]] = np.clip(out[[0, 2]], 0, w - 1)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, h - 1)
    if out[2] < out[0]:
        out[[0, 2]] = out[[2, 0]]
    if out[3] < out[1]:
        out[[1, 3]] = out[[3, 1]]
    return out


def prompt_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator that depends only on ``seed`` and the keys (dataset, image, object), not on run order."""
    return np.random.default_rng([int(seed), *(zlib.crc32(str(k).encode()) for k in keys)])


def _random_pick(pixels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.choice(len(pixels), size=min(count, len(pixels)), replace=False)
    return pixels[idx]


def make_prompt(mask: np.ndarray, mode: str, sampling: str = "official", rng: np.random.Generator | None = None,
                box_jitter: int = 0) -> Prompt:
    """Build the prompt of ``mode`` (see :data:`PROMPT_MODES`) for one object mask.

    Args:
        mask: ``(H, W)`` bool mask of the object.
        mode: ``point1``, ``point5``, ``point5neg5``, ``box`` or ``box_point1``.
        sampling: ``official`` (deterministic) or ``random`` (needs ``rng``).
        rng: generator for ``random`` (see :func:`prompt_rng`).
        box_jitter: pixels, ``random`` only.
    """
    if mode not in PROMPT_MODES:
        raise ValueError(f"Unknown prompt mode {mode!r}; choose from {', '.join(PROMPT_MODES)}.")
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"Unknown point sampling {sampling!r}; choose 'official' or 'random'.")
    if sampling == "random" and rng is None:
        raise ValueError("Random sampling needs a seeded generator (see prompt_rng).")
    mask = np.asarray(mask, dtype=bool)
    n_pos = {"point1": 1, "point5": 5, "point5neg5": 5, "box": 0, "box_point1": 1}[mode]
    n_neg = 5 if mode == "point5neg5" else 0
    if sampling == "official":
        pos = official_positive_points(mask, n_pos) if n_pos > 1 else centroid(mask)[None]
        neg = official_negative_points(mask, n_neg) if n_neg else np.zeros((0, 2), dtype=np.int64)
        box = tight_box(mask)
    else:
        pos = _random_pick(object_pixels(mask), n_pos, rng)
        cands = negative_candidates(mask) if n_neg else np.zeros((0, 2), dtype=np.int64)
        neg = _random_pick(cands, n_neg, rng) if len(cands) else cands
        box = jitter_box(tight_box(mask), int(box_jitter), rng, mask.shape)
    use_box = mode.startswith("box")
    if mode == "box":
        return Prompt(box=box.astype(np.float32))
    points = np.concatenate([pos, neg]).astype(np.float32)
    labels = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
    return Prompt(points=points, labels=labels, box=box.astype(np.float32) if use_box else None)
