"""The project's one tight box, centroid and Dice (``napari_qlora_minisam.masks``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_qlora_minisam.masks import centroid, dice, tight_box


def test_tight_box_is_inclusive_xy_pixel_indices():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True                      # rows 2..4, columns 3..8
    box = tight_box(m)
    assert box.dtype == np.float32 and box.tolist() == [3, 2, 8, 4]
    assert tight_box(m.astype(np.uint8) * 255).tolist() == [3, 2, 8, 4]  # any dtype: non-zero is inside


def test_centroid_is_rounded_down_and_may_lie_outside_a_ring():
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8] = True
    ring[3:6, 3:6] = False
    c = centroid(ring)
    assert c.dtype == np.float32 and c.tolist() == [4, 4] and not ring[4, 4]
    m = np.zeros((4, 4), bool)
    m[0, 0] = m[0, 1] = True                # mean x 0.5 -> 0
    assert centroid(m).tolist() == [0, 0]


def test_empty_masks_have_no_box_or_centroid():
    for fn in (tight_box, centroid):
        with pytest.raises(ValueError, match="empty mask"):
            fn(np.zeros((3, 3), bool))


def test_dice_conventions():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0 and dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0      # nothing to find, nothing found
    assert dice(np.zeros((2, 2)), np.ones((2, 2))) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        dice(np.zeros((3, 3)), np.zeros((3, 4)))
