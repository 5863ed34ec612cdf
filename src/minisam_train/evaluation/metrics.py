"""Per-object segmentation metrics: Dice and normalised surface Dice (NSD), both in [0, 1].

Conventions (documented in docs/evaluation.md):
- an empty prediction of a non-empty object scores 0 on both; two empty masks score 1 (nothing to find,
  nothing found), which never happens under the COSMOS rule (objects have >= 50 pixels);
- the surface of a mask is its pixels that touch the outside through a 4-neighbour (the mask minus its
  erosion by a cross), with the image border counting as outside;
- NSD (Nikolov et al. 2021, as in the MedSAM / CVPR24 challenge evaluation) is the fraction of both
  surfaces lying within ``tolerance`` of the other surface, with distances from scipy's Euclidean
  distance transform, in pixels unless ``spacing`` gives the pixel size (then ``tolerance`` is in mm).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Dice is the project's one definition (napari_qlora_minisam.masks), re-exported under the name reports use.
from napari_qlora_minisam.masks import dice as dice_score  # noqa: F401

_CROSS = ndimage.generate_binary_structure(2, 1)


def _as_masks(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"Prediction {p.shape} and ground truth {g.shape} differ in shape.")
    return p, g


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D mask: those with a 4-neighbour outside the mask or the image."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 2:
        eroded = ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)
    else:
        eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                        border_value=0)
    return mask & ~eroded


def distance_to(surface_mask: np.ndarray, spacing=None) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest pixel of ``surface_mask``."""
    return ndimage.distance_transform_edt(~surface_mask, sampling=spacing)


def normalized_surface_dice(pred, gt, tolerance: float = 2.0, spacing=None) -> float:
    """NSD at ``tolerance``: (|S_P within τ of S_G| + |S_G within τ of S_P|) / (|S_P| + |S_G|).

    Args:
        pred, gt: boolean masks of the same shape.
        tolerance: τ, in pixels (or in the units of ``spacing``).
        spacing: pixel size per axis, e.g. ``(0.7, 0.7)`` mm; ``None`` = 1 pixel.

    Returns:
        A value in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    p, g = _as_masks(pred, gt)
    if not p.any() and not g.any():
        return 1.0
    if not p.any() or not g.any():
        return 0.0
    sp, sg = surface(p), surface(g)
    near_p = (distance_to(sg, spacing)[sp] <= tolerance).sum()
    near_g = (distance_to(sp, spacing)[sg] <= tolerance).sum()
    return float(near_p + near_g) / float(sp.sum() + sg.sum())
