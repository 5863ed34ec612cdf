"""The objects of a label image: ids, names, slices and sizes, as the objects panel lists them.

Qt-free. The label image is the truth: every figure here is read from it, so brush strokes, undo and redo
are counted as they are. Names live in the labels layer's ``features`` table (``index``, ``name``), so
they travel with the layer and with the files it is saved to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Length units napari layers may carry (pint names), in millimetres.
_MM_PER_UNIT = {"nanometer": 1e-6, "micrometer": 1e-3, "millimeter": 1.0, "centimeter": 10.0, "meter": 1000.0}


@dataclass(frozen=True)
class ObjectRecord:
    """One object of a label image."""

    id: int
    name: str
    pixels: int  # pixels (2D) or voxels (3D)
    slices: tuple[int, int] | None  # first and last slice holding it (3D), None for 2D
    size: float | None  # mm² (2D) or mL (3D) when the pixel spacing is known, else None

    def size_text(self, depth: int) -> str:
        if self.size is None:
            return f"{self.pixels} {'voxels' if depth else 'px'}"
        return f"{self.size:.2f} mL" if depth else f"{self.size:.1f} mm²"

    def slices_text(self) -> str:
        if self.slices is None:
            return "–"
        first, last = self.slices
        return str(first) if first == last else f"{first}–{last}"


def spacing_mm(scale, units=None) -> tuple | None:
    """Physical size of a pixel along each axis in mm, or ``None`` when it is not known.

    ``scale`` and ``units`` as napari layers hold them (units as pint names, e.g. ``"millimeter"``).
    Radiology spacings are millimetres: a scale other than 1 without a length unit is read as mm; a scale
    of 1 without a unit is no spacing at all (plain pixels).
    """
    scale = tuple(float(s) for s in scale)
    names = [str(u) for u in units] if units is not None else ["pixel"] * len(scale)
    if all(n in _MM_PER_UNIT for n in names):
        return tuple(s * _MM_PER_UNIT[n] for s, n in zip(scale, names))
    if any(n in _MM_PER_UNIT for n in names):
        return None  # mixed units (e.g. time and space): no area or volume to give
    return scale if any(abs(s - 1.0) > 1e-9 for s in scale) else None


def measure_objects(labels: np.ndarray, depth: int, spacing: tuple | None = None,
                    names: dict | None = None) -> list[ObjectRecord]:
    """Every object (id > 0) of ``labels`` with its size and, for a stack, its first and last slice.

    Args:
        labels: ``(H, W)`` or ``(Z, H, W)`` integer label image.
        depth: 0 for 2D, 1 for a stack.
        spacing: mm per pixel along each axis (see :func:`spacing_mm`); ``None``: sizes in pixels.
        names: id -> name; unnamed objects are called ``object <id>``.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    names = names or {}
    if labels.size == 0 or labels.max() <= 0:
        return []
    flat = labels.ravel()
    counts = np.bincount(flat[flat > 0]) if labels.min() < 0 else np.bincount(flat)
    boxes = ndimage.find_objects(np.where(labels < 0, 0, labels)) if depth else None
    per_pixel = None
    if spacing is not None:
        per_pixel = float(np.prod(spacing[-(depth + 2):]))
        per_pixel = per_pixel / 1000.0 if depth else per_pixel  # mm³ -> mL
    out = []
    for label_id in np.nonzero(counts)[0]:
        if label_id == 0:
            continue
        slices = None
        if depth:
            z = boxes[label_id - 1][0]
            slices = (int(z.start), int(z.stop) - 1)
        pixels = int(counts[label_id])
        out.append(ObjectRecord(int(label_id), names.get(int(label_id), f"object {label_id}"), pixels, slices,
                                None if per_pixel is None else pixels * per_pixel))
    return out


def names_from_features(features) -> dict[int, str]:
    """id -> name from a labels layer's ``features`` table (columns ``index`` and ``name``)."""
    try:
        ids, names = features["index"], features["name"]
    except (KeyError, TypeError, IndexError):
        return {}
    return {int(i): str(n) for i, n in zip(ids, names) if isinstance(n, str) and n}


def features_with_names(names: dict[int, str]) -> dict:
    """A ``features`` table for napari holding ``names`` (row per id, background first)."""
    ids = sorted(i for i in names if i > 0)
    return {"index": [0, *ids], "name": ["background", *(names[i] for i in ids)]}


def default_name(label_id: int, taken: set, class_names=()) -> str:
    """The first of the image's class names not used yet (e.g. a dataset's structures), else ``object <id>``."""
    for name in class_names:
        if name not in taken:
            return name
    return f"object {label_id}"
