"""Writes into a label image go through napari's Labels history: one undo step per commit, propagation or
deletion; background only unless asked; ids never reused."""

import numpy as np
import pytest
from napari.layers import Labels

from napari_qlora_minisam.errors import InputError
from napari_qlora_minisam.labels_edit import erase_object, next_free_id, write_objects, write_slices


def square(shape, r0, r1, c0, c1):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def test_objects_take_background_only_and_undo_in_one_step():
    layer = Labels(np.zeros((20, 20), np.int32))
    layer.data[0:5, 0:5] = 7
    written = write_objects(layer, [square((20, 20), 3, 10, 3, 10), square((20, 20), 8, 12, 8, 12)], None, 8)
    assert written == [(8, 49 - 4), (9, 16 - 4)]  # the corner of 7 kept; 9 leaves 8's pixels alone
    assert (layer.data == 7).sum() == 25 and layer.data[9, 9] == 8 and layer.data[11, 11] == 9
    layer.undo()
    assert set(np.unique(layer.data)) == {0, 7}
    layer.redo()
    assert set(np.unique(layer.data)) == {0, 7, 8, 9}


def test_overwrite_and_skipped_masks():
    layer = Labels(np.zeros((10, 10), np.int32))
    layer.data[:, :5] = 1
    written = write_objects(layer, [square((10, 10), 0, 10, 0, 5), square((10, 10), 0, 10, 0, 10)], None, 2)
    assert written == [None, (2, 50)]  # the first had no free pixel: skipped, no id used
    write_objects(layer, [square((10, 10), 0, 2, 0, 2)], None, 3, overwrite=True)
    assert layer.data[0, 0] == 3
    with pytest.raises(InputError, match="does not fit"):
        write_objects(layer, [np.ones((3, 3), bool)], None, 4)


def test_stack_slices_and_erase():
    layer = Labels(np.zeros((4, 8, 8), np.int32))
    write_objects(layer, [square((8, 8), 1, 4, 1, 4)], 2, 1)
    assert layer.data[2].sum() == 9 and not layer.data[1].any()
    assert write_slices(layer, 1, {1: square((8, 8), 1, 4, 1, 4), 2: square((8, 8), 1, 5, 1, 5),
                                   3: square((8, 8), 0, 2, 0, 2)}) == 9 + 7 + 4
    layer.undo()  # the propagation, in one step
    assert layer.data[2].sum() == 9 and not layer.data[[1, 3]].any()
    assert erase_object(layer, 1) == 9 and not layer.data.any()
    layer.undo()
    assert layer.data[2].sum() == 9


def test_next_free_id():
    labels = np.zeros((5, 5), np.int32)
    assert next_free_id(labels) == 1
    labels[0, 0] = 4
    assert next_free_id(labels) == 5 and next_free_id(labels, at_least=9) == 9
