"""Committing masks into a label image as new objects, with undo and redo.

Qt-free: the widget hands it the labels layer's array and refreshes the layer afterwards. Every edit
remembers the exact pixels it changed and their old values, so undo restores other objects untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError


def next_free_id(labels: np.ndarray) -> int:
    """One above the largest id in use (ids are never reused while their object exists)."""
    return int(labels.max()) + 1 if labels.size else 1


@dataclass
class _Chunk:
    index: tuple  # fancy index into the label array
    old: np.ndarray
    new: np.ndarray


@dataclass
class LabelEdit:
    """One undoable step (a commit, or a whole propagation)."""

    label_id: int
    description: str
    chunks: list[_Chunk] = field(default_factory=list)

    @property
    def pixels(self) -> int:
        return sum(len(c.old) for c in self.chunks)


class LabelEditor:
    """Writes masks into a label array as objects; keeps the undo/redo stacks of those writes."""

    def __init__(self):
        self.undo_stack: list[LabelEdit] = []
        self.redo_stack: list[LabelEdit] = []

    @property
    def can_undo(self) -> bool:
        return bool(self.undo_stack)

    @property
    def can_redo(self) -> bool:
        return bool(self.redo_stack)

    def clear(self) -> None:
        self.undo_stack.clear()
        self.redo_stack.clear()

    def commit(self, labels: np.ndarray, mask: np.ndarray, z: int | None = None, label_id: int | None = None,
               overwrite: bool = False, description: str = "commit", extend: bool = False) -> LabelEdit:
        """Write ``mask`` into ``labels`` (slice ``z`` of a stack) as object ``label_id``.

        Args:
            labels: the label image, modified in place.
            mask: ``(H, W)`` bool.
            z: slice index when ``labels`` is a stack.
            label_id: the object id; default: the next free id.
            overwrite: replace pixels of other objects too (otherwise only background pixels are written).
            extend: add the pixels to the last edit instead of making a new undo step (propagation).

        Returns:
            The edit (its ``pixels`` may be 0 when every masked pixel belonged to another object).
        """
        mask = np.asarray(mask, bool)
        plane = labels if z is None else labels[int(z)]
        if mask.shape != plane.shape:
            raise InputError(f"Mask of shape {mask.shape} does not fit the labels slice {plane.shape}.")
        if extend and not self.undo_stack:
            raise InputError("Nothing to extend: commit an object first.")
        if label_id is None:
            label_id = self.undo_stack[-1].label_id if extend else next_free_id(labels)
        writable = mask if overwrite else mask & (plane == 0)
        writable &= plane != label_id  # pixels already holding the id need no undo record
        rows, cols = np.nonzero(writable)
        index = (rows, cols) if z is None else (np.full(len(rows), int(z)), rows, cols)
        chunk = _Chunk(index, labels[index].copy(), np.full(len(rows), label_id, labels.dtype))
        labels[index] = label_id
        if extend:
            edit = self.undo_stack[-1]
        else:
            edit = LabelEdit(int(label_id), description)
            self.undo_stack.append(edit)
        edit.chunks.append(chunk)
        self.redo_stack.clear()
        return edit

    def undo(self, labels: np.ndarray) -> LabelEdit | None:
        if not self.undo_stack:
            return None
        edit = self.undo_stack.pop()
        for chunk in reversed(edit.chunks):
            labels[chunk.index] = chunk.old
        self.redo_stack.append(edit)
        return edit

    def redo(self, labels: np.ndarray) -> LabelEdit | None:
        if not self.redo_stack:
            return None
        edit = self.redo_stack.pop()
        for chunk in edit.chunks:
            labels[chunk.index] = chunk.new
        self.undo_stack.append(edit)
        return edit
