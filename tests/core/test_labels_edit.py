"""Commits as new objects, never over other objects unless asked; undo/redo restore exactly."""

import numpy as np
import pytest

from napari_qlora_minisam.errors import InputError
from napari_qlora_minisam.labels_edit import LabelEditor, next_free_id


def square(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_commit_uses_next_free_id_and_keeps_other_objects():
    labels = np.zeros((20, 20), np.int32)
    labels[0:5, 0:5] = 7
    editor = LabelEditor()
    edit = editor.commit(labels, square((20, 20), 3, 10, 3, 10))
    assert edit.label_id == 8 == next_free_id(labels) - 1
    assert (labels[0:5, 0:5] == 7).all()  # the overlap stayed with object 7
    assert edit.pixels == 49 - 4


def test_overwrite_when_asked_and_undo_redo_restore_exactly():
    labels = np.zeros((20, 20), np.int32)
    labels[0:5, 0:5] = 7
    before = labels.copy()
    editor = LabelEditor()
    editor.commit(labels, square((20, 20), 3, 10, 3, 10), overwrite=True)
    assert labels[4, 4] == 8
    after = labels.copy()
    assert editor.undo(labels).label_id == 8
    np.testing.assert_array_equal(labels, before)
    editor.redo(labels)
    np.testing.assert_array_equal(labels, after)
    assert editor.undo(labels) and editor.undo(labels) is None  # nothing more to undo
    assert not editor.can_undo and editor.can_redo


def test_new_commit_clears_redo_and_extend_makes_one_undo_step():
    labels = np.zeros((3, 8, 8), np.uint16)
    editor = LabelEditor()
    editor.commit(labels, square((8, 8), 0, 2, 0, 2), z=1)
    editor.undo(labels)
    edit = editor.commit(labels, square((8, 8), 2, 4, 2, 4), z=1, description="propagation")
    editor.commit(labels, square((8, 8), 2, 5, 2, 5), z=0, extend=True)
    editor.commit(labels, square((8, 8), 2, 3, 2, 3), z=2, extend=True)
    assert not editor.can_redo and len(editor.undo_stack) == 1
    assert edit.pixels == 4 + 9 + 1 and set(np.unique(labels)) == {0, 1}
    editor.undo(labels)
    assert not labels.any()


def test_mask_of_wrong_shape_is_refused():
    with pytest.raises(InputError, match="does not fit"):
        LabelEditor().commit(np.zeros((4, 4), np.int32), np.ones((5, 5), bool))
    with pytest.raises(InputError, match="Nothing to extend"):
        LabelEditor().commit(np.zeros((4, 4), np.int32), np.ones((4, 4), bool), extend=True)
