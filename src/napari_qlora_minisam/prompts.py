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

    @property
    def key(self) -> tuple:
        """A hashable identity of these prompts: a mask decoded for them is found again under it."""
        box = None if self.box is None else np.asarray(self.box, np.float32).tobytes()
        return (np.asarray(self.points_xy, np.float32).tobytes(), np.asarray(self.point_labels, np.int64).tobytes(),
                box)

    def predict_kwargs(self) -> dict:
        """Keyword arguments for :meth:`MiniSamPredictor.predict`."""
        kwargs = {"box": self.box}
        if len(self.points_xy):
            kwargs.update(points=self.points_xy, point_labels=self.point_labels)
        return kwargs


def slice_objects(points=None, polarities=None, shapes=(), shape_types=(), z: int | None = None) -> list[SlicePrompts]:
    """The objects prompted on slice ``z``: one per rectangle, with the clicks that belong to it.

    Each rectangle on the slice is one object, in the order the shapes layer holds them (the order they were
    drawn). A click belongs to the smallest box that contains it, and a click outside every box to the
    nearest box (a positive click just past a box's edge asks to grow that object). Without boxes, all the
    clicks on the slice prompt one object.

    Args:
        points: points-layer ``data`` ``(N, D)`` in (…, row, col).
        polarities: per point ``"positive"``/``"negative"`` (or bool); missing means positive.
        shapes: shapes-layer ``data``: a list of ``(V, D)`` vertex arrays; only rectangles are boxes.
        shape_types: shapes-layer ``shape_type``.
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
    boxes = [rectangle_to_box(v) for v, kind in zip(shapes, shape_types)
             if kind == BOX_SHAPE_TYPE and on_slice(np.asarray(v), z).all()]
    if not boxes:
        return [SlicePrompts(pts, labels, None)] if len(pts) else []
    owner = np.array([_owning_box(p, boxes) for p in pts], int)
    return [SlicePrompts(pts[owner == i], labels[owner == i], box) for i, box in enumerate(boxes)]


def _owning_box(point_xy: np.ndarray, boxes: list[np.ndarray]) -> int:
    """Index of the smallest box holding the point, else of the box nearest to it."""
    x, y = point_xy
    corners = np.asarray(boxes, np.float64)
    dx = np.maximum(0, np.maximum(corners[:, 0] - x, x - corners[:, 2]))
    dy = np.maximum(0, np.maximum(corners[:, 1] - y, y - corners[:, 3]))
    area = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])
    return int(np.lexsort((area, np.hypot(dx, dy)))[0])  # nearest first (0 inside), then smallest
