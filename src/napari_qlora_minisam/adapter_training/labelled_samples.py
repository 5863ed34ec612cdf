"""A user's annotations -> training slices: ``(image, labels)`` pairs, 2D or 3D, and the held-back share.

Labels follow napari's Labels layer: 0 is background and every id > 0 is one object. A 3D pair (volume,
label volume) is used slice by slice, where a slice has labels. Objects, not slices, are held back for the
before/after scores, because a user may annotate a single image with several objects.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..errors import InputError
from ..transforms import validate_image
from .views import AnnotatedSlice


def spatial_shape(image_shape: tuple, labels_ndim: int) -> tuple:
    """The image's shape without its colour axis (RGB / RGBA), i.e. the shape its labels must have."""
    has_channels = len(image_shape) == labels_ndim + 1 and image_shape[-1] in (3, 4)
    return tuple(image_shape[:-1]) if has_channels else tuple(image_shape)


def slices_from_sample(image, labels, source: str, min_object_pixels: int) -> list[AnnotatedSlice]:
    """The labelled slices of one sample; ids with fewer than ``min_object_pixels`` pixels on a slice are skipped.

    Args:
        image: ``(H, W)`` / ``(H, W, 3)`` slice or ``(Z, H, W)`` / ``(Z, H, W, 3)`` volume, any numeric dtype.
        labels: integer ``(H, W)`` or ``(Z, H, W)``, the image's spatial shape.
        source: the sample's name (slices of a volume get ``#z<k>``).

    Raises:
        InputError: labels that are not integers or do not match the image's shape.
    """
    img, lab = np.asarray(image), np.asarray(labels)
    if not (np.issubdtype(lab.dtype, np.integer) and lab.dtype != bool):
        raise InputError(f"Labels of {source} have dtype {lab.dtype}; they must be an integer array "
                         "(0 = background, each id > 0 one object), e.g. a napari Labels layer's data.")
    if lab.ndim not in (2, 3) or spatial_shape(img.shape, lab.ndim) != lab.shape:
        raise InputError(f"Image of {source} has shape {img.shape} but its labels {lab.shape}; give a 2D image "
                         "with (H, W) labels or a 3D volume with (Z, H, W) labels of the same size.")
    if lab.size and lab.min() < 0:
        raise InputError(f"Labels of {source} hold negative ids; use 0 for background and ids > 0 for objects.")
    if lab.ndim == 2:
        planes = [(source, img, lab)]
    else:
        planes = [(f"{source}#z{z}", img[z], lab[z]) for z in range(lab.shape[0]) if lab[z].any()]
    slices = []
    for name, plane, plane_labels in planes:
        ids, counts = np.unique(plane_labels[plane_labels > 0], return_counts=True)
        objects = {int(i): plane_labels == i for i, c in zip(ids, counts) if c >= min_object_pixels}
        if objects:
            try:
                slices.append(AnnotatedSlice(validate_image(plane), objects, name))
            except InputError as exc:
                raise InputError(f"{name}: {exc}") from None
    return slices


def held_back_count(n: int, fraction: float) -> int:
    """How many of ``n`` units to hold back: ``floor(n * fraction)``, at least 1 of 2 or more, never all."""
    held = int(math.floor(n * float(fraction)))
    if float(fraction) > 0 and n >= 2:
        held = max(1, held)
    return max(0, min(held, n - 1))


class ObjectSplit(NamedTuple):
    """Training and held-back slices; ``objects`` counts (sample, label id) pairs, all and held back."""

    train: list
    held_back: list
    objects: int
    held_back_objects: int


def split_held_back(slices_per_sample: list[list[AnnotatedSlice]], val_fraction: float, seed: int) -> ObjectSplit:
    """Split objects into training and held-back slices; a held-back object is never trained on.

    The unit held back is one object of one sample (all its slices of a volume), so neighbouring slices of
    the same object cannot leak into its score. With a single object in all samples its slices are the
    units instead (a volume with one annotated structure can still be scored, if optimistically).
    ``val_fraction`` of the units (at least one when there are two or more, never all) are held back.
    """
    entries = [(i, j, name) for i, sls in enumerate(slices_per_sample) for j, sl in enumerate(sls)
               for name in sl.objects]
    objects = {(i, name) for i, _, name in entries}
    by_object = len(objects) >= 2
    unit = (lambda i, j, name: (i, name)) if by_object else (lambda i, j, name: (i, j, name))
    units = sorted({unit(*e) for e in entries}, key=str)
    n_held = held_back_count(len(units), val_fraction)
    order = np.random.default_rng(seed).permutation(len(units))
    held = {units[k] for k in order[:n_held]}
    train, held_back = [], []
    for i, sls in enumerate(slices_per_sample):
        for j, sl in enumerate(sls):
            keep = {n: m for n, m in sl.objects.items() if unit(i, j, n) not in held}
            score = {n: m for n, m in sl.objects.items() if unit(i, j, n) in held}
            if keep:
                train.append(AnnotatedSlice(sl.image, keep, sl.source))
            if score:
                held_back.append(AnnotatedSlice(sl.image, score, sl.source))
    held_objects = {(i, name) for i, j, name in entries if unit(i, j, name) in held}
    return ObjectSplit(train, held_back, len(objects), len(held_objects))
