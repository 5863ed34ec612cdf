"""napari layer data <-> model prompts.

napari stores coordinates as (row, col) — (..., y, x) — with optional leading slice axes; the model takes
(x, y) like segment-anything. This module is the one place where that flip happens, so the widget, the
benchmarks and the tests cannot disagree about where a click landed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROMPT_FEATURE = "prompt"  # the points-layer feature holding each click's polarity
POSITIVE, NEGATIVE = "positive", "negative"
# Green/magenta stay distinguishable for the common colour-vision deficiencies (not green/red).
PROMPT_COLORS = {POSITIVE: "#00e676", NEGATIVE: "#ff2bd6"}
BOX_SHAPE_TYPE = "rectangle"


def rc_to_xy(rc) -> np.ndarray:
    """napari ``(..., row, col)`` -> model ``(x, y)`` (leading slice axes dropped)."""
    rc = np.asarray(rc, dtype=np.float32).reshape(-1, np.shape(rc)[-1] if np.ndim(rc) else 2)
    return rc[:, [-1, -2]].copy()


def xy_to_rc(xy, z: int | None = None) -> np.ndarray:
    """Model ``(x, y)`` -> napari ``(row, col)``, or ``(z, row, col)`` when ``z`` is given."""
    xy = np.asarray(xy, dtype=np.float32).reshape(-1, 2)
    rc = xy[:, ::-1]
    if z is None:
        return rc.copy()
    return np.column_stack([np.full(len(rc), z, np.float32), rc])


def box_to_rectangle(box_xy, z: int | None = None) -> np.ndarray:
    """Box ``(x0, y0, x1, y1)`` -> the 4 corners of a napari rectangle shape."""
    x0, y0, x1, y1 = (float(v) for v in box_xy)
    return xy_to_rc([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], z)


def rectangle_to_box(vertices) -> np.ndarray:
    """Vertices of a napari rectangle (possibly rotated or dragged "backwards") -> (x0, y0, x1, y1)."""
    xy = rc_to_xy(vertices)
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)]).astype(np.float32)


def on_slice(coords: np.ndarray, z: int | None) -> np.ndarray:
    """Boolean row mask: which napari coordinates lie on slice ``z`` (all of them for 2D data)."""
    coords = np.asarray(coords)
    if z is None or coords.ndim != 2 or coords.shape[1] < 3 or len(coords) == 0:
        return np.ones(len(coords), bool)
    return np.round(coords[:, -3]).astype(int) == int(z)


def polarity_to_label(kind) -> int:
    """A points-layer polarity value -> SAM point label (1 positive, 0 negative)."""
    if isinstance(kind, (bool, np.bool_)):
        return int(kind)
    return 0 if str(kind).lower() in (NEGATIVE, "0", "false", "neg") else 1


@dataclass(frozen=True)
class SlicePrompts:
    """The prompts of one object on one slice, in the model's (x, y) frame."""

    points_xy: np.ndarray  # (N, 2) float32
    point_labels: np.ndarray  # (N,) int64, 1 positive / 0 negative
    box: np.ndarray | None  # (4,) x0, y0, x1, y1

    @property
    def is_empty(self) -> bool:
        return self.box is None and len(self.points_xy) == 0

    def predict_kwargs(self) -> dict:
        """Keyword arguments for :meth:`MiniSamPredictor.predict`."""
        kwargs = {"box": self.box}
        if len(self.points_xy):
            kwargs.update(points=self.points_xy, point_labels=self.point_labels)
        return kwargs


def slice_prompts(points=None, polarities=None, shapes=(), shape_types=(), z: int | None = None) -> SlicePrompts:
    """Collect the prompts lying on slice ``z`` from napari points/shapes layer data.

    Args:
        points: points-layer ``data`` ``(N, D)`` in (…, row, col).
        polarities: per point ``"positive"``/``"negative"`` (or bool); missing means positive.
        shapes: shapes-layer ``data``: a list of ``(V, D)`` vertex arrays.
        shape_types: shapes-layer ``shape_type``; only rectangles are boxes. The last rectangle on the
            slice wins: it is the one the user drew most recently.
        z: slice index for 3D layers, ``None`` for 2D.
    """
    pts = np.zeros((0, 2), np.float32)
    labels = np.zeros((0,), np.int64)
    if points is not None and len(points):
        points = np.asarray(points)
        keep = on_slice(points, z)
        pts = rc_to_xy(points[keep])
        kinds = list(polarities) if polarities is not None else [POSITIVE] * len(points)
        labels = np.array([polarity_to_label(k) for k, kept in zip(kinds, keep) if kept], np.int64)
    box = None
    for vertices, kind in zip(shapes, shape_types):
        vertices = np.asarray(vertices)
        if kind == BOX_SHAPE_TYPE and on_slice(vertices, z).all():
            box = rectangle_to_box(vertices)
    return SlicePrompts(pts, labels, box)
