"""Writing objects into a label image through its owner's edit history.

Qt-free. The target is a napari ``Labels`` layer (or anything with its ``data``, ``data_setitem`` and
``block_history``): every write goes through ``data_setitem`` inside one ``block_history``, so napari's own
undo (Ctrl+Z, ``labels.undo()``) takes back a whole commit, propagation or deletion in one step, in the
same history as the user's brush strokes. No second undo stack exists to disagree with it.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def next_free_id(labels: np.ndarray, at_least: int = 1) -> int:
    """One above the largest id in use, and never below ``at_least`` (ids are never reused)."""
    top = int(np.max(labels)) if np.size(labels) else 0
    return max(top + 1, int(at_least))


def _plane_index(z: int | None, rows: np.ndarray, cols: np.ndarray) -> tuple:
    return (rows, cols) if z is None else (np.full(rows.size, int(z), np.intp), rows, cols)


def _write(target, parts: list[tuple]) -> None:
    """One history step: ``parts`` are ``(index, id)``; an index is a tuple of coordinate arrays."""
    if not parts:
        return
    index = tuple(np.concatenate(axis) for axis in zip(*(p[0] for p in parts)))
    values = np.concatenate([np.full(p[0][0].size, p[1], np.asarray(target.data).dtype) for p in parts])
    with target.block_history():
        target.data_setitem(index, values)


def writable_pixels(plane: np.ndarray, mask: np.ndarray, overwrite: bool, claimed: np.ndarray | None = None):
    """The pixels of ``mask`` a new object may take: background only unless ``overwrite``, never ``claimed``."""
    mask = np.asarray(mask, bool)
    if mask.shape != plane.shape:
        raise InputError(f"Mask of shape {mask.shape} does not fit the labels slice {plane.shape}.")
    free = mask if overwrite else mask & (plane == 0)
    return free if claimed is None else free & ~claimed


def write_objects(target, masks: list[np.ndarray], z: int | None, first_id: int,
                  overwrite: bool = False) -> list[tuple[int, int] | None]:
    """Write each mask as a new object (ids ``first_id``, ``first_id + 1``, ...) in one undo step.

    A mask takes background pixels only unless ``overwrite``; where masks of one call overlap, the earlier
    keeps the pixels. A mask left with no pixel is skipped and uses no id.

    Returns:
        Per mask, ``(id, pixels written)``, or ``None`` when it was skipped.
    """
    plane = np.asarray(target.data if z is None else target.data[int(z)])
    claimed = np.zeros(plane.shape, bool)
    parts, out, label_id = [], [], int(first_id)
    for mask in masks:
        free = writable_pixels(plane, mask, overwrite, claimed)
        rows, cols = np.nonzero(free)
        if not rows.size:
            out.append(None)
            continue
        claimed |= free
        parts.append((_plane_index(z, rows, cols), label_id))
        out.append((label_id, int(rows.size)))
        label_id += 1
    _write(target, parts)
    return out


def write_slices(target, label_id: int, masks: dict[int, np.ndarray], overwrite: bool = False) -> int:
    """Write one object's mask on several slices of a stack (a propagation) in one undo step; pixels written."""
    parts = []
    for z, mask in sorted(masks.items()):
        plane = np.asarray(target.data[int(z)])
        rows, cols = np.nonzero(writable_pixels(plane, mask, overwrite) & (plane != label_id))
        if rows.size:
            parts.append((_plane_index(z, rows, cols), int(label_id)))
    _write(target, parts)
    return sum(p[0][0].size for p in parts)


def _replace_planes(target, label_id: int, planes: dict, overwrite: bool) -> int:
    """Object ``label_id`` on each plane key (a slice index, or ``None`` for a 2D image) becomes that key's mask
    (``None``: no pixel there); its old pixels are cleared first. One undo step; returns the pixels changed."""
    label_id = int(label_id)
    index, values = [], []
    for z, mask in planes.items():
        old = np.asarray(target.data if z is None else target.data[z])
        new = np.where(old == label_id, 0, old)
        if mask is not None:
            new[writable_pixels(new, mask, overwrite)] = label_id
        rows, cols = np.nonzero(new != old)
        if rows.size:
            index.append(_plane_index(z, rows, cols))
            values.append(new[rows, cols])
    if not index:
        return 0
    with target.block_history():
        target.data_setitem(tuple(np.concatenate(axis) for axis in zip(*index)), np.concatenate(values))
    return int(sum(v.size for v in values))


def replace_slices(target, label_id: int, slices, masks: dict[int, np.ndarray], overwrite: bool = False) -> int:
    """Object ``label_id`` on ``slices`` of a stack becomes ``masks`` (a slice without one loses it), one undo step.

    Its old pixels there are cleared first, so the new masks may take them back; other objects keep theirs
    unless ``overwrite``. Slices not listed are left alone. Returns the pixels changed.
    """
    zs = sorted({int(z) for z in slices} | {int(z) for z in masks})
    return _replace_planes(target, label_id, {z: masks.get(z) for z in zs}, overwrite)


def replace_object(target, label_id: int, z: int | None, mask: np.ndarray, overwrite: bool = False) -> int:
    """Object ``label_id`` on plane ``z`` (``None``: a 2D label image) becomes ``mask``, one undo step; its other
    slices and other objects (unless ``overwrite``) are left alone. Returns the pixels changed."""
    return _replace_planes(target, label_id, {None if z is None else int(z): mask}, overwrite)


def erase_object(target, label_id: int) -> int:
    """Set every pixel of object ``label_id`` to background in one undo step; pixels erased."""
    index = np.nonzero(np.asarray(target.data) == int(label_id))
    if index[0].size:
        with target.block_history():
            target.data_setitem(index, 0)
    return int(index[0].size)
